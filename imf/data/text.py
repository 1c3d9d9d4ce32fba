"""Text and phones of the embedded corpus.

* A deterministic English sentence generator: combinatorial templates over small word lists,
  4-12 words per sentence (about 1-4 s of speech), drawn from a seeded ``numpy`` generator.
  Only plain lower-case words and spelled-out numbers are used, so both engines normalise the
  text identically.
* The shared phone inventory: ARPAbet-like symbols (the flite/CMU set, lower case) plus one
  silence phone ``sil``; id 0 is ``<pad>``. espeak-ng phonemes are mapped onto it in
  :mod:`imf.data.engines`.
* Frame alignment: phone end times (seconds) -> integer frame durations that sum exactly to
  the number of mel frames.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------

NAMES = ["anna", "peter", "maria", "john", "lucy", "david", "emma", "tom", "sarah", "paul",
         "kate", "james", "helen", "mark", "alice", "robert"]
ADJECTIVES = ["old", "young", "small", "large", "quiet", "busy", "green", "red", "dark", "bright",
              "cold", "warm", "heavy", "empty", "clean", "strange", "happy", "tired", "little",
              "wooden", "narrow", "famous", "gentle", "simple", "yellow", "broken", "golden",
              "silver", "careful", "lucky", "sudden", "lonely"]
NOUNS = ["dog", "cat", "house", "garden", "river", "teacher", "doctor", "letter", "window",
         "table", "bridge", "market", "village", "farmer", "bottle", "basket", "horse", "city",
         "station", "kitchen", "mountain", "forest", "student", "painter", "boat", "road",
         "island", "picture", "shop", "clock", "bird", "stone", "lamp", "flower", "child",
         "soldier", "captain", "neighbour", "machine", "book"]
PLURALS = ["dogs", "cats", "houses", "letters", "windows", "tables", "bottles", "horses",
           "children", "students", "boats", "pictures", "birds", "stones", "flowers", "books",
           "apples", "friends", "trees", "chairs"]
VERBS_T_PAST = ["found", "painted", "opened", "carried", "washed", "moved", "sold", "bought",
                "watched", "followed", "cleaned", "visited", "noticed", "repaired", "closed",
                "pushed", "lifted", "described", "remembered", "forgot"]
VERBS_T_PRES = ["find", "paint", "open", "carry", "wash", "move", "sell", "buy", "watch",
                "follow", "clean", "visit", "notice", "repair", "close", "lift"]
VERBS_I_PAST = ["walked", "waited", "slept", "laughed", "worked", "stayed", "danced", "arrived",
                "rested", "listened", "travelled", "smiled", "shouted", "returned"]
VERBS_I_PRES = ["wait", "sleep", "work", "stay", "rest", "listen", "return"]
ADVERBS = ["slowly", "quickly", "quietly", "early", "late", "again", "together", "alone",
           "carefully", "happily", "suddenly", "often"]
PREPOSITIONS = ["near", "behind", "under", "beside", "across", "inside", "over", "past",
                "around", "below"]
TIMES = ["today", "yesterday", "tonight", "this morning", "last week", "every day",
         "on monday", "in the evening", "after lunch", "before dawn", "in winter", "at noon"]
HABITUAL_TIMES = ["every day", "on monday", "in the evening", "after lunch", "in winter", "at noon"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve",
           "twenty"]
QUESTION_WORDS = ["why", "when", "where", "how"]


def _maybe(rng: np.random.Generator, words: Sequence[str], p: float = 0.5) -> list[str]:
    return [str(rng.choice(words))] if rng.random() < p else []


def _np(rng: np.random.Generator, p_adj: float = 0.5) -> list[str]:
    """A noun phrase: 'the [adj] noun'."""
    return ["the", *_maybe(rng, ADJECTIVES, p_adj), str(rng.choice(NOUNS))]


def _template(rng: np.random.Generator, k: int) -> tuple[list[str], str]:
    c = lambda words: str(rng.choice(words))  # noqa: E731 - a one-letter alias keeps templates readable
    if k == 0:
        tail = [c(PREPOSITIONS), *_np(rng)] if rng.random() < 0.6 else []
        return [*_np(rng), c(VERBS_T_PAST), *_np(rng), *tail], "."
    if k == 1:
        return [c(NAMES), c(VERBS_I_PAST), *_maybe(rng, ADVERBS), c(PREPOSITIONS), *_np(rng)], "."
    if k == 2:
        return ["did", "you", "see", *_np(rng), c(PREPOSITIONS), *_np(rng, 0.3)], "?"
    if k == 3:
        return ["we", c(VERBS_T_PRES), c(NUMBERS), *_maybe(rng, ADJECTIVES), c(PLURALS),
                *c(HABITUAL_TIMES).split()], "."
    if k == 4:
        return [c(NAMES), "and", c(NAMES), c(VERBS_T_PAST), *_np(rng), *c(TIMES).split()], "."
    if k == 5:
        return [c(QUESTION_WORDS), "did", *_np(rng), c(VERBS_I_PRES), *_maybe(rng, TIMES[:6])], "?"
    if k == 6:
        return ["there", "were", c(NUMBERS), *_maybe(rng, ADJECTIVES), c(PLURALS), c(PREPOSITIONS),
                *_np(rng)], "."
    if k == 7:
        return ["please", c(VERBS_T_PRES), *_np(rng), *_maybe(rng, ADVERBS, 0.4)], "."
    # k == 8
    return [*c(TIMES).split(), c(NAMES), c(VERBS_T_PAST), c(NUMBERS), c(PLURALS)], "."


N_TEMPLATES = 9
MIN_WORDS, MAX_WORDS = 4, 12


def make_sentence(rng: np.random.Generator) -> str:
    """One sentence of 4-12 words (lower case, final '.' or '?'), drawn with ``rng``."""
    for _ in range(100):
        words, end = _template(rng, int(rng.integers(N_TEMPLATES)))
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " ".join(words) + end
    raise RuntimeError("sentence templates never produced 4-12 words")  # unreachable by design


def sentence_for(seed: int, index: int) -> str:
    """The sentence of utterance ``index`` under corpus ``seed`` (independent of other indices)."""
    return make_sentence(np.random.default_rng([seed, index, 0x7E47]))


def vocabulary() -> list[str]:
    """Every word the generator can emit (sorted): used to check phone-mapping coverage."""
    words: set[str] = {"the", "did", "you", "see", "we", "and", "there", "were", "please"}
    for group in (NAMES, ADJECTIVES, NOUNS, PLURALS, VERBS_T_PAST, VERBS_T_PRES, VERBS_I_PAST,
                  VERBS_I_PRES, ADVERBS, PREPOSITIONS, NUMBERS, QUESTION_WORDS):
        words.update(group)
    for t in TIMES:
        words.update(t.split())
    return sorted(words)


# ---------------------------------------------------------------------------------------------
# Phones
# ---------------------------------------------------------------------------------------------

PAD = "<pad>"
SIL = "sil"
#: The shared inventory (flite's CMU/ARPAbet phones in lower case, ``pau`` renamed ``sil``).
#: Fixed, not derived from data, so every corpus built by this code has the same ids.
ARPABET = ["aa", "ae", "ah", "ao", "aw", "ax", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f",
           "g", "hh", "ih", "iy", "jh", "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh",
           "t", "th", "uh", "uw", "v", "w", "y", "z", "zh"]
PHONES: list[str] = [PAD, SIL, *ARPABET]
PHONE_ID = {p: i for i, p in enumerate(PHONES)}


def frame_durations(ends: Sequence[float], n_frames: int, frame_rate: float) -> list[int]:
    """Phone end times (seconds, ascending) -> integer frame durations summing to ``n_frames``.

    Boundaries are the rounded cumulative end times ``round(end * frame_rate)``; the last
    boundary is pinned to ``n_frames`` and every phone gets at least one frame (a boundary is
    pushed right of its predecessor, but never so far that later phones lose their frame).
    Requires ``len(ends) <= n_frames``.
    """
    n = len(ends)
    if n == 0 or n > n_frames:
        raise ValueError(f"cannot align {n} phones to {n_frames} frames")
    b = [0] * (n + 1)
    b[n] = n_frames
    for i in range(1, n):
        b[i] = min(max(int(np.floor(ends[i - 1] * frame_rate + 0.5)), i), n_frames - (n - i))
        b[i] = max(b[i], b[i - 1] + 1)
    durations = [b[i + 1] - b[i] for i in range(n)]
    assert sum(durations) == n_frames and min(durations) >= 1, (durations, n_frames)
    return durations


def expand(phone_ids: Sequence[int] | Tensor, durations: Sequence[int] | Tensor) -> Tensor:
    """Frame-level ids: phone ids [P] repeated by durations [P] -> LongTensor [sum(durations)]."""
    ids = torch.as_tensor(phone_ids, dtype=torch.long)
    d = torch.as_tensor(durations, dtype=torch.long)
    if ids.shape != d.shape:
        raise ValueError(f"{ids.numel()} phones but {d.numel()} durations")
    return torch.repeat_interleave(ids, d)
