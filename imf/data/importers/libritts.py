"""The LibriTTS / LibriTTS-R layout: ``[<subset>/]<speaker>/<chapter>/<id>.wav`` + ``<id>.normalized.txt``.

Speakers are the folder names two levels above each file. When the corpus has subset folders
(``train-clean-100``, ``dev-clean``, ``test-clean``, ...), the speakers found only under ``dev-*`` /
``test-*`` folders are the layout's held-out speakers (LibriTTS's dev and test speakers are disjoint
from its training speakers): they become the ``unseen`` split unless ``unseen_speakers`` names others.
"""
from __future__ import annotations

from pathlib import Path

from imf.data.corpus import CorpusError
from imf.data.importers.core import Utterance

TEXT_SUFFIX = ".normalized.txt"
HELD_OUT_SUBSETS = ("dev", "test")


def is_libritts(root: Path) -> bool:
    return root.is_dir() and next(root.rglob(f"*{TEXT_SUFFIX}"), None) is not None


def read_libritts(root: Path) -> tuple[list[Utterance], list[str]]:
    """The utterances of a LibriTTS folder and its held-out speakers (see the module docstring).

    A wav without its ``.normalized.txt`` (or the reverse), an empty text or a file outside the
    ``<speaker>/<chapter>/`` nesting is a :class:`CorpusError` naming the file.
    """
    texts = sorted(root.rglob(f"*{TEXT_SUFFIX}"))
    if not texts:
        raise CorpusError(f"{root}: no *{TEXT_SUFFIX} files (LibriTTS layout: [<subset>/]<speaker>/<chapter>/<id>.wav "
                          f"+ <id>{TEXT_SUFFIX})")
    have = {t.parent / t.name[: -len(TEXT_SUFFIX)] for t in texts}
    for wav in sorted(root.rglob("*.wav")):
        if wav.with_suffix("") not in have:
            raise CorpusError(f"{wav.with_name(wav.stem + TEXT_SUFFIX)}: text missing for the audio {wav}")
    utts, subsets = [], {}
    for t in texts:
        ident = t.name[: -len(TEXT_SUFFIX)]
        rel = t.relative_to(root).parts
        if len(rel) < 3:
            raise CorpusError(f"{t}: expected [<subset>/]<speaker>/<chapter>/{t.name} under {root}")
        speaker = rel[-3]
        subsets.setdefault(speaker, set()).add(rel[-4] if len(rel) >= 4 else "")
        text = t.read_text(encoding="utf-8").strip()
        if not text:
            raise CorpusError(f"{t}: empty text")
        utts.append(Utterance(ident, speaker, t.with_name(ident + ".wav"), text, str(t)))
    held = [s for s, subs in subsets.items() if all(x.startswith(HELD_OUT_SUBSETS) for x in subs)]
    return utts, sorted(held)
