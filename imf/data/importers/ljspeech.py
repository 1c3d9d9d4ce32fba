"""The LJSpeech layout: ``metadata.csv`` (``id|text|normalized text``, no header) and ``wavs/<id>.wav``.

One speaker, named after the corpus folder (so it has no held-out speaker: ``n_unseen`` is capped at
``n_speakers - 1``). The normalized text (third field) is used when present, else the second.
"""
from __future__ import annotations

from pathlib import Path

from imf.data.corpus import CorpusError
from imf.data.importers.core import Utterance


def is_ljspeech(root: Path) -> bool:
    return root.is_dir() and (root / "metadata.csv").is_file() and (root / "wavs").is_dir()


def read_ljspeech(root: Path) -> tuple[list[Utterance], list[str]]:
    """The utterances of an LJSpeech folder (and no held-out speakers). A malformed line is a
    :class:`CorpusError` naming ``metadata.csv`` and the line."""
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise CorpusError(f"{meta}: missing (an LJSpeech folder holds metadata.csv and wavs/)")
    speaker = root.resolve().name
    utts = []
    for i, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        where = f"{meta} line {i}"
        if len(parts) not in (2, 3):
            raise CorpusError(f"{where}: expected 'id|text|normalized text', got {len(parts)} field(s): {line[:80]!r}")
        ident = parts[0].strip()
        text = (parts[2] if len(parts) == 3 and parts[2].strip() else parts[1]).strip()
        if not ident or not text:
            raise CorpusError(f"{where}: empty {'id' if not ident else 'text'}: {line[:80]!r}")
        utts.append(Utterance(ident, speaker, root / "wavs" / f"{ident}.wav", text, where))
    if not utts:
        raise CorpusError(f"{meta}: no utterances")
    return utts, []
