"""Text2mel data from a workbench corpus: whole utterances (normalised mels) and their text, no durations.

The F5-TTS task (:mod:`imf.models.backbones.f5`): the network sees the mel with a span blanked
(``cond_mel``), the whole transcript as a token sequence padded with F5's filler (no alignment,
no durations) and learns to infill the span. Text comes in two kinds (``T2MDataConfig.text``):

* ``"phone"``: the corpus's phone ids of the utterance (ARPAbet + ``sil``; inventory ``corpus.phones``,
  id 0 = pad never used), one id per phone, NOT expanded to frames;
* ``"char"``: the lower-cased sentence, one id per character of :data:`CHARS` (others dropped).

Items: ``{"id", "z_1": (n_mels, N) normalised mel, "text": (Nt,) long, "sentence": str, "speaker": int}``;
:func:`t2m_collate` makes the batch :func:`imf.train.f5.f5_objective` reads (``z_1`` (B, C, N) zero-padded,
``mask`` / ``lengths``, ``text`` (B, Nt) padded with -1 as F5's ``list_str_to_idx`` pads), so
:func:`imf.train.f5.distill_f5` distils on it unchanged. Utterances longer than ``max_frames`` are left
out, not cropped: a crop would cut the audio but not its transcript.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor

from imf.core.config import Config, require
from imf.data.corpus import Corpus
from imf.data.f5_text import pad_mels

CHARS = " abcdefghijklmnopqrstuvwxyz'.,?!-"  # the character vocabulary ("char" text): id = index
TEXT_KINDS = ("phone", "char")


@dataclasses.dataclass(frozen=True)
class T2MDataConfig(Config):
    text: str = "phone"  # "phone": the corpus's phone ids (no durations) | "char": the sentence's characters
    max_frames: int = 192  # longest utterance kept, in mel frames (longer ones are left out, not cropped)
    frac_min: float = 0.7  # smallest fraction of an utterance the infilling span covers (F5: 0.7)
    frac_max: float = 1.0  # largest fraction (F5: 1.0)

    def validate(self) -> None:
        require(self.text in TEXT_KINDS, "text", f"must be one of {TEXT_KINDS}")
        require(self.max_frames >= 8, "max_frames", "must be >= 8")
        require(0.0 < self.frac_min <= self.frac_max <= 1.0, "frac_min", "need 0 < frac_min <= frac_max <= 1")


def vocab_size(corpus: Corpus, kind: str) -> int:
    """F5's ``text_num_embeds`` for text ``kind``: the phone inventory size or ``len(CHARS)``."""
    if kind not in TEXT_KINDS:
        raise ValueError(f"text kind {kind!r}: choose one of {TEXT_KINDS}")
    return corpus.n_tokens if kind == "phone" else len(CHARS)


def char_ids(sentence: str) -> Tensor:
    """(Nt,) long: the ids in :data:`CHARS` of the lower-cased ``sentence`` (characters not in it dropped)."""
    return torch.tensor([CHARS.index(c) for c in sentence.lower() if c in CHARS], dtype=torch.long)


def text_ids(corpus: Corpus, ident: str, kind: str) -> Tensor:
    """(Nt,) long: the text of utterance ``ident`` as ``kind`` ids (phones unexpanded, or characters)."""
    if kind == "phone":
        return corpus.phone_ids(ident)[0]
    if kind == "char":
        return char_ids(str(corpus.row(ident)["text"]))
    raise ValueError(f"text kind {kind!r}: choose one of {TEXT_KINDS}")


class Text2MelDataset(torch.utils.data.Dataset):
    """Whole utterances of one split of ``corpus`` with at most ``cfg.max_frames`` frames (module doc)."""

    def __init__(self, corpus: Corpus, split: str, cfg: T2MDataConfig = T2MDataConfig()):
        rows = corpus.split(split)
        rows = rows[rows.n_frames <= cfg.max_frames]
        if rows.empty:
            raise ValueError(f"split {split!r} of corpus {corpus.root} has no utterance of at most "
                             f"max_frames={cfg.max_frames} frames (text2mel keeps whole utterances)")
        self.corpus, self.split, self.cfg = corpus, split, cfg
        self.ids: list[str] = list(rows.id)
        self.items = [(i, None, str(t)) for i, t in zip(rows.id, rows.text)]  # (id, -, sentence) as F5Dataset's
        self._cache: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, ident: str) -> dict[str, Any]:
        """The item of utterance ``ident`` (cached)."""
        if ident not in self._cache:
            c = self.corpus
            self._cache[ident] = {"id": ident, "z_1": c.normalize(c.load_mel(ident)),
                                  "text": text_ids(c, ident, self.cfg.text), "sentence": str(c.row(ident)["text"]),
                                  "speaker": c.speaker_id(str(c.row(ident)["speaker"]))}
        return self._cache[ident]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item(self.ids[i])


def pad_text(texts: Sequence[Tensor]) -> Tensor:
    """(B, Nt) long: the id sequences padded with -1 (F5's batch padding)."""
    out = torch.full((len(texts), max(1, max(int(t.numel()) for t in texts))), -1, dtype=torch.long)
    for j, t in enumerate(texts):
        out[j, : t.numel()] = t
    return out


def t2m_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items -> ``{"ids", "z_1" (B, C, N), "mask" (B, N), "lengths" (B,), "text" (B, Nt), "texts", "speaker" (B,)}``."""
    return {**pad_mels(items), "text": pad_text([it["text"] for it in items]),
            "texts": [it["sentence"] for it in items], "speaker": torch.tensor([it["speaker"] for it in items])}


__all__ = ["CHARS", "T2MDataConfig", "vocab_size", "char_ids", "text_ids", "Text2MelDataset", "pad_text",
           "t2m_collate"]
