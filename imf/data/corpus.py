"""A built corpus on disk: its layout, :func:`load_corpus`, and checks that name the utterance.

A corpus folder (written by :func:`imf.data.build.build_corpus`)::

    wav/<id>.wav       16 kHz mono PCM16
    mel/<id>.npy       float32 [80, n_frames] raw natural-log mel (imf.models.features.LogMel)
    meta/<id>.json     the utterance's manifest row (lets a re-run skip finished utterances)
    manifest.csv       one row per utterance (columns: MANIFEST_COLUMNS)
    corpus.json        config, builder version, mel config, phone inventory, speakers,
                       per-bin mel mean/std over the train split, n_utts

What is checked, and when (every error is a :class:`CorpusError` naming the file and the
utterance):

* :func:`load_corpus`: ``corpus.json`` keys; the manifest's columns, splits, speakers, ids;
  its row count against ``n_utts`` (a truncated manifest); every row's fields (none empty,
  integer ``n_samples`` / ``n_frames``, numeric ``pitch`` / ``rate``, as many durations as
  phones, durations >= 1 summing to ``n_frames``, ``n_frames = 1 + n_samples // hop``);
* :meth:`Corpus.load_wav` / :meth:`Corpus.load_mel`: the file against its row (sample count,
  shape, finite values), so a truncated wav or an empty mel never loads silently;
* :func:`check_files`: one ``stat`` per file (sizes against the manifest), what
  ``build_corpus`` runs before returning a finished corpus.

``load_corpus(path)`` returns a :class:`Corpus`; :mod:`imf.data.dataset` turns it into
training items.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch import Tensor

from imf.core.runtime import data_dir
from imf.models.features import MelConfig
from imf.data.text import expand

SPLITS = ("train", "dev", "test", "unseen")
MANIFEST_COLUMNS = ["id", "speaker", "engine", "voice", "split", "text", "phones", "durations",
                    "n_samples", "n_frames", "pitch", "rate", "wav", "mel", "pitch_range", "f0"]
_REQUIRED_COLUMNS = MANIFEST_COLUMNS[:14]
#: bytes a PCM16 WAV / an .npy file holds beyond its samples: at least the header soundfile /
#: numpy write (44 / 64), at most this much more (extra chunks, longer headers)
_WAV_HEADER, _NPY_HEADER, _HEADER_SLACK = 44, 64, 4096


class CorpusError(RuntimeError):
    """A corpus file is missing, malformed or inconsistent (the message names the file)."""


_REQUIRED_INFO = ("config", "builder_version", "sample_rate", "mel", "phones", "speakers", "mel_mean", "mel_std")


class Corpus:
    """A built corpus on disk (see :func:`load_corpus`).

    Attributes: ``root`` (folder), ``info`` (corpus.json), ``mel_config`` (:class:`MelConfig`),
    ``phones`` (inventory, id 0 = ``<pad>``), ``n_tokens``, ``speakers`` (names; the index is
    the speaker id, unseen speakers included), ``manifest`` (DataFrame, one row per utterance),
    ``mel_mean`` / ``mel_std`` (float32 [80], over the train split).
    """

    def __init__(self, root: Path, info: dict[str, Any], manifest: pd.DataFrame):
        self.root = root
        self.info = info
        self.mel_config = MelConfig.from_dict(info["mel"])
        self.sample_rate = int(info["sample_rate"])
        self.phones: list[str] = list(info["phones"])
        self.n_tokens = len(self.phones)
        self.phone_id = {p: i for i, p in enumerate(self.phones)}
        self.speakers: list[str] = [s["name"] for s in info["speakers"]]
        self._speaker_id = {s: i for i, s in enumerate(self.speakers)}
        self.speaker_info: dict[str, dict[str, Any]] = {s["name"]: s for s in info["speakers"]}
        self.manifest = manifest
        self.mel_mean = torch.tensor(info["mel_mean"], dtype=torch.float32)
        self.mel_std = torch.tensor(info["mel_std"], dtype=torch.float32)
        self._row = {ident: i for i, ident in enumerate(manifest["id"])}
        self.aligned = bool(info.get("aligned", True))  # False: imported without alignments (no phone tokens)
        self._tokens: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {int((self.manifest.split == s).sum())}" for s in SPLITS)
        return f"Corpus({str(self.root)!r}: {len(self.manifest)} utts, {len(self.speakers)} speakers; {counts})"

    def __len__(self) -> int:
        return len(self.manifest)

    # -- metadata -------------------------------------------------------------------------------
    def speaker_id(self, name: str) -> int:
        """The integer id of speaker ``name`` (its index in ``speakers``)."""
        try:
            return self._speaker_id[name]
        except KeyError:
            raise CorpusError(f"{self.root}: unknown speaker {name!r}; known: {self.speakers}") from None

    @property
    def seen_speakers(self) -> list[str]:
        return [s for s in self.speakers if self.speaker_info[s].get("role") != "unseen"]

    @property
    def unseen_speakers(self) -> list[str]:
        return [s for s in self.speakers if self.speaker_info[s].get("role") == "unseen"]

    def split(self, name: str) -> pd.DataFrame:
        """Manifest rows of split ``name`` ("train" | "dev" | "test" | "unseen")."""
        if name not in SPLITS:
            raise CorpusError(f"{self.root}: unknown split {name!r}; known: {list(SPLITS)}")
        return self.manifest[self.manifest.split == name]

    def row(self, ident: str) -> pd.Series:
        """The manifest row of utterance ``ident``."""
        try:
            return self.manifest.iloc[self._row[ident]]
        except KeyError:
            raise CorpusError(f"{self.root / 'manifest.csv'}: no utterance {ident!r}") from None

    # -- features -------------------------------------------------------------------------------
    def normalize(self, mel: Tensor) -> Tensor:
        """Raw log-mel [..., 80, T] -> per-bin standardised ``(mel - mean) / std``."""
        self._check_bins(mel)
        return (mel - self.mel_mean.to(mel)[:, None]) / self.mel_std.to(mel)[:, None]

    def denormalize(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: [..., 80, T] -> raw log-mel."""
        self._check_bins(x)
        return x * self.mel_std.to(x)[:, None] + self.mel_mean.to(x)[:, None]

    def _check_bins(self, mel: Tensor) -> None:
        if mel.dim() < 2 or mel.shape[-2] != self.mel_config.n_mels:
            raise ValueError(f"expected a mel [..., {self.mel_config.n_mels}, T], got shape {tuple(mel.shape)}")

    def load_mel(self, ident: str) -> Tensor:
        """Raw log-mel of ``ident``: float32 [80, n_frames].

        Raises :class:`CorpusError` naming the file and the utterance if it is missing,
        empty, unreadable, not float, of another shape than its manifest row or not finite.
        """
        row = self.row(ident)
        path = self.root / row["mel"]
        what = f"(utterance {ident!r})"
        try:
            mel = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise CorpusError(f"{path}: mel file missing {what}") from None
        except EOFError:
            raise CorpusError(f"{path}: empty mel file ({path.stat().st_size} bytes) {what}") from None
        except (OSError, ValueError) as e:
            raise CorpusError(f"{path}: unreadable mel file {what}: {e}") from None
        if not isinstance(mel, np.ndarray) or mel.dtype.kind != "f":
            raise CorpusError(f"{path}: expected a float array, got {getattr(mel, 'dtype', type(mel))} {what}")
        if mel.shape != (self.mel_config.n_mels, int(row["n_frames"])):
            raise CorpusError(f"{path}: mel shape {mel.shape}, manifest says ({self.mel_config.n_mels}, "
                              f"{row['n_frames']}) {what}")
        bad = int((~np.isfinite(mel)).sum())
        if bad:
            raise CorpusError(f"{path}: {bad} non-finite values in the mel {what}")
        return torch.from_numpy(mel.astype(np.float32, copy=False))

    def load_wav(self, ident: str) -> Tensor:
        """Audio of ``ident``: float32 [N] in [-1, 1) at 16 kHz.

        Raises :class:`CorpusError` naming the file and the utterance if it is missing,
        unreadable, empty, not mono, not at the corpus sample rate or shorter / longer than
        its manifest row says (a truncated file).
        """
        row = self.row(ident)
        path = self.root / row["wav"]
        what = f"(utterance {ident!r})"
        if not path.exists():
            raise CorpusError(f"{path}: audio file missing {what}")
        try:
            wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
            raise CorpusError(f"{path}: corrupt or unreadable audio {what}: {e}") from None
        if sr != self.sample_rate:
            raise CorpusError(f"{path}: sample rate {sr} Hz, expected {self.sample_rate} Hz {what}")
        if wav.shape[0] == 0:
            raise CorpusError(f"{path}: empty audio (0 samples) {what}")
        if wav.shape[1] != 1:
            raise CorpusError(f"{path}: {wav.shape[1]} channels, expected mono {what}")
        if wav.shape[0] != int(row["n_samples"]):
            raise CorpusError(f"{path}: {wav.shape[0]} samples, the manifest says {row['n_samples']} {what}"
                              + ("; truncated file?" if wav.shape[0] < int(row["n_samples"]) else ""))
        return torch.from_numpy(np.ascontiguousarray(wav[:, 0]))

    def phone_ids(self, ident: str) -> tuple[Tensor, Tensor]:
        """(phone ids LongTensor [P], durations in frames LongTensor [P]) of ``ident``.

        A corpus imported without alignments (``corpus.json`` ``aligned: false``) has none: :class:`CorpusError`.
        """
        row = self.row(ident)
        if not self.aligned:
            raise CorpusError(f"{self.root / 'corpus.json'}: imported without alignments, so utterance {ident!r} has no "
                              "phone tokens (token2mel needs them): import the corpus again with MFA TextGrids "
                              "(imf.data.importers.ImportConfig textgrid_dir / alignments='textgrid')")
        try:
            ids = [self.phone_id[p] for p in row["phones"].split()]
        except KeyError as e:
            raise CorpusError(f"{self.root / 'manifest.csv'}: utterance {ident!r} has phone {e} not in the inventory") from None
        durations = [int(d) for d in row["durations"].split()]  # validated by load_corpus
        if len(durations) != len(ids):
            raise CorpusError(f"{self.root / 'manifest.csv'}: utterance {ident!r} has {len(ids)} phones but "
                              f"{len(durations)} durations")
        return torch.tensor(ids, dtype=torch.long), torch.tensor(durations, dtype=torch.long)

    def tokens(self, ident: str) -> Tensor:
        """Frame-level phone ids of ``ident``: LongTensor [n_frames] (phones x durations)."""
        if ident not in self._tokens:
            ids, durations = self.phone_ids(ident)
            tokens = expand(ids, durations)
            n_frames = int(self.row(ident)["n_frames"])
            if tokens.numel() != n_frames:
                raise CorpusError(f"{self.root / 'manifest.csv'}: utterance {ident!r} durations sum to "
                                  f"{tokens.numel()}, n_frames is {n_frames}")
            self._tokens[ident] = tokens
        return self._tokens[ident]


def validate_manifest(manifest: pd.DataFrame, path: Path, hop_length: int = 256, aligned: bool = True) -> None:
    """Raise :class:`CorpusError` naming the line of ``path`` and the utterance of the first bad row.

    Per row: no empty field among the required columns, integer ``n_samples`` / ``n_frames``
    (> 0), numeric ``pitch`` / ``rate``, as many integer durations (>= 1) as phones, summing to
    ``n_frames``, and ``n_frames = 1 + n_samples // hop_length``. ``aligned=False`` (a corpus imported
    without alignments): ``phones`` and ``durations`` must be empty and are not checked.
    """
    cols = {c: manifest[c].tolist() for c in _REQUIRED_COLUMNS}
    for i in range(len(manifest)):
        row = {c: cols[c][i] for c in _REQUIRED_COLUMNS}
        where = f"{path} line {i + 2} (utterance {row['id']!r})"
        if not aligned:
            if not _missing(row["phones"]) or not _missing(row["durations"]):
                raise CorpusError(f"{where}: phones/durations given, but corpus.json says the corpus has no alignments")
            row = {c: v for c, v in row.items() if c not in ("phones", "durations")}
        empty = [c for c, v in row.items() if _missing(v)]
        if empty:
            raise CorpusError(f"{where}: empty field(s) {empty} (a truncated manifest?)")
        ints = {}
        for c in ("n_samples", "n_frames"):
            ints[c] = _as_int(row[c])
            if ints[c] is None or ints[c] <= 0:
                raise CorpusError(f"{where}: {c} {row[c]!r} is not a positive integer")
        for c in ("pitch", "rate"):
            try:
                ok = math.isfinite(float(row[c]))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise CorpusError(f"{where}: {c} {row[c]!r} is not a number")
        if not aligned:
            continue
        phones, durations = str(row["phones"]).split(), str(row["durations"]).split()
        if len(phones) != len(durations):
            raise CorpusError(f"{where}: {len(phones)} phones but {len(durations)} durations")
        d = [_as_int(x) for x in durations]
        if any(x is None or x < 1 for x in d):
            bad = next(x for x, y in zip(durations, d) if y is None or y < 1)
            raise CorpusError(f"{where}: duration {bad!r} is not a positive integer")
        if sum(d) != ints["n_frames"]:
            raise CorpusError(f"{where}: durations sum to {sum(d)} frames, n_frames is {ints['n_frames']}")
        if ints["n_frames"] != 1 + ints["n_samples"] // hop_length:
            raise CorpusError(f"{where}: n_frames {ints['n_frames']} does not fit n_samples {ints['n_samples']} "
                              f"(expected 1 + n_samples // {hop_length} = {1 + ints['n_samples'] // hop_length})")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _as_int(v: Any) -> int | None:
    """``v`` as an int if it is one (an int, an integral float or such a string), else None."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f == int(f) else None


def check_files(root: str | os.PathLike, info: dict[str, Any] | None = None) -> list[str]:
    """Cheap check of a built corpus: problems found (empty if none), one ``stat`` per file.

    The manifest must be readable with ``info["n_utts"]`` rows (if given); each row's wav
    and mel must exist with the size its ``n_samples`` / ``n_frames`` imply (PCM16 mono,
    float32 [n_mels, n_frames], headers of at most a few KiB). Catches deleted, truncated
    and emptied files; not a bit flip inside a file (:meth:`Corpus.load_wav` / ``load_mel``
    check the contents when they read).
    """
    root = Path(root)
    path = root / "manifest.csv"
    try:
        m = pd.read_csv(path, usecols=["id", "wav", "mel", "n_samples", "n_frames"], dtype=str,
                        keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        return [f"{path}: unreadable ({e})"]
    info = info or {}
    n_mels = (info.get("mel") or {}).get("n_mels", 80)
    problems = []
    if isinstance(info.get("n_utts"), int) and len(m) != info["n_utts"]:
        problems.append(f"{path}: {len(m)} rows, corpus.json records {info['n_utts']}")
    for ident, wav, mel, n_samples, n_frames in zip(m.id, m.wav, m.mel, m.n_samples, m.n_frames):
        n_samples, n_frames = _as_int(n_samples), _as_int(n_frames)
        if not wav or not mel or n_samples is None or n_frames is None:
            problems.append(f"{path}: malformed row of utterance {ident!r}")
            continue
        for rel, payload, header in ((wav, 2 * n_samples, _WAV_HEADER), (mel, 4 * n_mels * n_frames, _NPY_HEADER)):
            try:
                extra = (root / rel).stat().st_size - payload - header
            except OSError:
                problems.append(f"{root / rel}: missing (utterance {ident!r})")
                continue
            if not 0 <= extra <= _HEADER_SLACK:
                problems.append(f"{root / rel}: {extra + payload + header} bytes, expected "
                                f"{payload + header} (utterance {ident!r})")
    return problems


def load_corpus(path: str | os.PathLike) -> Corpus:
    """Open a built corpus: its folder, its ``corpus.json``, or a folder name under ``data_dir()``.

    Raises :class:`CorpusError` naming the file (and the utterance of a bad row) if
    ``corpus.json`` or ``manifest.csv`` is missing or malformed (see :func:`validate_manifest`).
    """
    root = Path(path)
    if root.name == "corpus.json":
        root = root.parent
    if not root.exists() and not root.is_absolute() and (data_dir() / root).exists():
        root = data_dir() / root
    info_path, manifest_path = root / "corpus.json", root / "manifest.csv"
    if not info_path.exists():
        raise CorpusError(f"{info_path}: missing (not a built corpus; build it with imf.data.build_corpus)")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as e:
        raise CorpusError(f"{info_path}: malformed JSON: {e}") from None
    missing = [k for k in _REQUIRED_INFO if not isinstance(info, dict) or k not in info]
    if missing:
        raise CorpusError(f"{info_path}: missing key(s) {missing}")
    if not manifest_path.exists():
        raise CorpusError(f"{manifest_path}: missing")
    try:
        manifest = pd.read_csv(manifest_path, dtype={"id": str, "speaker": str, "phones": str, "durations": str, "text": str},
                               keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise CorpusError(f"{manifest_path}: malformed CSV: {e}") from None
    need = [c for c in MANIFEST_COLUMNS[:14] if c not in manifest.columns]
    if need:
        raise CorpusError(f"{manifest_path}: missing column(s) {need}")
    n_utts = info.get("n_utts")
    if isinstance(n_utts, int) and len(manifest) != n_utts:
        raise CorpusError(f"{manifest_path}: {len(manifest)} rows, {info_path} records {n_utts} utterances "
                          "(a truncated or edited manifest? rebuild with imf.data.build_corpus)")
    validate_manifest(manifest, manifest_path, hop_length=info["mel"].get("hop_length", 256),
                      aligned=info.get("aligned", True))
    names = {s.get("name") for s in info["speakers"]}
    for col, known, what in (("split", set(SPLITS), "split"), ("speaker", names, f"speaker (not in {info_path})")):
        bad = ~manifest[col].isin(known)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise CorpusError(f"{manifest_path} line {i + 2} (utterance {manifest.id.iloc[i]!r}): unknown {what} "
                              f"{manifest[col].iloc[i]!r} ({int(bad.sum())} such rows)")
    if manifest.id.duplicated().any():
        raise CorpusError(f"{manifest_path}: duplicate ids {manifest.id[manifest.id.duplicated()].tolist()[:5]}")
    n_mels = info["mel"].get("n_mels", 80)
    if len(info["mel_mean"]) != n_mels or len(info["mel_std"]) != n_mels:
        raise CorpusError(f"{info_path}: mel_mean/mel_std must have {n_mels} values")
    try:
        return Corpus(root, info, manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise CorpusError(f"{info_path}: malformed: {e}") from None


# ---------------------------------------------------------------------------------------------
# Summaries (for the corpus notebook)
# ---------------------------------------------------------------------------------------------

def speaker_table(corpus: Corpus) -> pd.DataFrame:
    """One row per speaker: engine, voice, role, split(s), #utts, minutes, mean measured F0
    (Hz), mean pitch and rate factors, mean utterance seconds."""
    m = corpus.manifest.assign(seconds=corpus.manifest.n_samples / corpus.sample_rate)
    rows = []
    for name in corpus.speakers:
        g = m[m.speaker == name]
        sp = corpus.speaker_info[name]
        rows.append(dict(
            speaker=name, engine=sp["engine"], voice=sp["voice"], role=sp.get("role", "seen"),
            splits="/".join(s for s in SPLITS if (g.split == s).any()), utts=len(g),
            minutes=round(g.seconds.sum() / 60, 2), f0_hz=round(float(g.f0.mean()), 1) if "f0" in g else float("nan"),
            pitch_factor=round(float(g.pitch.mean()), 3), rate_factor=round(float(g.rate.mean()), 3),
            mean_seconds=round(float(g.seconds.mean()), 2),
        ))
    return pd.DataFrame(rows)


def corpus_metrics(corpus: Corpus) -> dict[str, Any]:
    """Headline numbers: n_utts, n_speakers, n_engines, per-split counts, hours, build seconds."""
    m = corpus.manifest
    return dict(
        n_utts=int(len(m)), n_speakers=int(m.speaker.nunique()), n_engines=int(m.engine.nunique()),
        split_counts={s: int((m.split == s).sum()) for s in SPLITS},
        hours=round(float(m.n_samples.sum()) / corpus.sample_rate / 3600, 4),
        mean_seconds=round(float(m.n_samples.mean()) / corpus.sample_rate, 3),
        corpus_build_seconds=corpus.info.get("build_seconds"),
        n_phones=corpus.n_tokens, dropped=len(corpus.info.get("dropped", [])),
    )
