"""Corpus importers: LJSpeech, LibriTTS / LibriTTS-R and a generic CSV/JSONL manifest -> a corpus folder
that :func:`imf.data.corpus.load_corpus` opens like the embedded one (same files, same checks).

``import_corpus("/data/LibriTTS", ImportConfig())`` detects the layout (or take it from the config or
a ``"<layout>:"`` prefix of the source), imports into ``<data dir>/<name>`` and returns that folder;
a finished import of the same config returns at once, an interrupted one continues
(:mod:`imf.data.importers.core`). Frame-level phones come from MFA TextGrids
(:mod:`imf.data.importers.alignments`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from imf.core.runtime import data_dir
from imf.data.corpus import CorpusError
from imf.data.importers.alignments import normalize_phone, read_phones
from imf.data.importers.core import LAYOUTS, ImportConfig, Utterance, finished_import, write_corpus
from imf.data.importers.libritts import is_libritts, read_libritts
from imf.data.importers.ljspeech import is_ljspeech, read_ljspeech
from imf.data.importers.manifest import is_manifest, read_manifest

READERS = {"ljspeech": read_ljspeech, "libritts": read_libritts, "manifest": read_manifest}

__all__ = ["ImportConfig", "Utterance", "import_corpus", "resolve_source", "detect_layout", "is_built_corpus",
           "read_phones", "normalize_phone", "LAYOUTS", "READERS"]


def is_built_corpus(path: str | os.PathLike) -> bool:
    """True if ``path`` is a corpus folder (built or imported: it has ``corpus.json``) or that file."""
    p = Path(path)
    return p.name == "corpus.json" and p.is_file() or (p / "corpus.json").is_file()


def detect_layout(path: Path) -> str:
    """``"manifest"`` (a .csv/.jsonl file), ``"ljspeech"`` (metadata.csv + wavs/) or ``"libritts"``
    (``*.normalized.txt`` files); else a :class:`CorpusError` saying how to name the layout."""
    for name, test in (("manifest", is_manifest), ("ljspeech", is_ljspeech), ("libritts", is_libritts)):
        if test(path):
            return name
    raise CorpusError(f"{path}: cannot tell the corpus layout (LJSpeech: metadata.csv + wavs/; LibriTTS: "
                      "<speaker>/<chapter>/<id>.wav + <id>.normalized.txt; manifest: a .csv or .jsonl file); "
                      "name it with a prefix, e.g. 'libritts:/data/LibriTTS', or the import config's layout")


def resolve_source(source: str | os.PathLike, layout: str = "auto") -> tuple[str, Path]:
    """(layout, path) of ``source``: a ``"<layout>:"`` prefix wins over ``layout``; ``"auto"`` is detected."""
    text = str(source)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in LAYOUTS[1:]:
        layout, text = prefix, rest
    path = Path(text).expanduser()
    if not path.exists():
        raise CorpusError(f"{path}: corpus source missing")
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in READERS:
        raise CorpusError(f"{source}: unknown layout {layout!r}; known: {list(READERS)}")
    return layout, path.resolve()


def source_stamp(layout: str, path: Path) -> list[int]:
    """(size, mtime in ns) of the file that lists the utterances (the manifest, LJSpeech's metadata.csv; for
    LibriTTS the corpus folder itself): an edited list is imported again, not taken as finished."""
    listing = path / "metadata.csv" if layout == "ljspeech" else path
    st = listing.stat()
    return [st.st_size if listing.is_file() else 0, st.st_mtime_ns]


def import_corpus(source: str | os.PathLike, cfg: ImportConfig | None = None, root: str | os.PathLike | None = None,
                  progress: bool = True) -> Path:
    """Import ``source`` (see the module docstring) into ``<root or data_dir()>/<name>``; returns that folder.

    ``name``: ``cfg.name`` or the source folder's name, prefixed ``"<layout>-"`` unless it starts with the layout. A finished import is recognised by its
    config and :func:`source_stamp` (files added deep inside a LibriTTS folder are not: delete the imported
    ``corpus.json`` to rescan; every utterance already imported is reused). Every error (a bad row, a missing
    audio or text file, a missing or misaligned TextGrid) is a :class:`CorpusError` naming the file.
    """
    cfg = cfg or ImportConfig()
    layout, path = resolve_source(source, cfg.layout)
    folder = (path.parent if path.is_file() else path).name
    name = cfg.name or (folder if folder.lower().startswith(layout) else f"{layout}-{folder}")
    out = Path(root or data_dir()) / name
    # what corpus.json records and a re-run compares (JSON types; the worker count changes no file)
    resolved = json.loads(json.dumps(dict(cfg.to_dict(), layout=layout, name=name, source=str(path), workers=0,
                                          source_stamp=source_stamp(layout, path))))
    if finished_import(out, resolved):
        return out
    utts, held = READERS[layout](path)
    return write_corpus(utts, out, cfg, layout, path, resolved, held, progress)
