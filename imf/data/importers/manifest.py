"""A generic manifest: a CSV (header row) or JSONL file, one utterance per row.

Columns: ``audio`` (path, relative to the manifest's folder or absolute; ``path`` / ``wav`` also
accepted), ``text``, ``speaker``, optional ``id`` (default: the audio file's stem) and optional
``split`` (``train`` / ``dev`` / ``test`` / ``unseen``; given on every row or on none: when given, the
splits are used as they are). A bad row is a :class:`CorpusError` naming the file and the line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from imf.data.corpus import SPLITS, CorpusError
from imf.data.importers.core import Utterance

AUDIO_COLUMNS = ("audio", "path", "wav", "audio_path")
SUFFIXES = (".csv", ".jsonl")


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV or JSONL manifest."""
    if path.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise CorpusError(f"{path}: malformed CSV: {e}") from None
        return [(i + 2, r) for i, r in enumerate(df.to_dict("records"))]
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            raise CorpusError(f"{path} line {i}: not a JSON object: {e}") from None
        if not isinstance(r, dict):
            raise CorpusError(f"{path} line {i}: expected a JSON object, got {type(r).__name__}")
        rows.append((i, r))
    return rows


def read_manifest(path: Path) -> tuple[list[Utterance], list[str]]:
    """The utterances of a manifest file (and no layout held-out speakers: a ``split`` column says it)."""
    if not path.is_file():
        raise CorpusError(f"{path}: manifest file missing")
    rows = _rows(path)
    if not rows:
        raise CorpusError(f"{path}: no rows")
    keys = set().union(*(r.keys() for _, r in rows))
    audio_col = next((c for c in AUDIO_COLUMNS if c in keys), None)
    missing = ([] if audio_col else ["audio"]) + [c for c in ("text", "speaker") if c not in keys]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {missing} (have {sorted(keys)})")
    utts = []
    for line, r in rows:
        where = f"{path} line {line}"
        values = {c: str(r.get(c) if r.get(c) is not None else "").strip() for c in (audio_col, "text", "speaker")}
        empty = [c for c, v in values.items() if not v]
        if empty:
            raise CorpusError(f"{where}: empty field(s) {empty}")
        split = str(r.get("split") or "").strip()
        if split and split not in SPLITS:
            raise CorpusError(f"{where}: unknown split {split!r}; known: {list(SPLITS)}")
        audio = Path(values[audio_col])
        audio = audio if audio.is_absolute() else path.parent / audio
        ident = str(r.get("id") or "").strip() or audio.stem
        utts.append(Utterance(ident, values["speaker"], audio, values["text"], where, split))
    given = [u for u in utts if u.split]
    if given and len(given) != len(utts):
        u = next(u for u in utts if not u.split)
        raise CorpusError(f"{u.where}: empty split (give a split on every row or on none)")
    return utts, []
