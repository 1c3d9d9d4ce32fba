"""The common core of the corpus importers: a list of utterances in -> a corpus folder out.

A layout module (:mod:`~imf.data.importers.ljspeech`, :mod:`~imf.data.importers.libritts`,
:mod:`~imf.data.importers.manifest`) lists :class:`Utterance` s (id, speaker, audio file, text);
:func:`write_corpus` turns them into exactly what :func:`imf.data.corpus.load_corpus` reads (the
layout of :mod:`imf.data.corpus`: ``wav/``, ``mel/``, ``meta/``, ``manifest.csv``, ``corpus.json``):

1. duration filter (``min_seconds`` / ``max_seconds``, from the audio header) and an optional cap of
   utterances per speaker (the first ones by id); a listed audio file that is missing is an error naming it;
2. speaker-held-out splits: the held-out speakers are the ``unseen`` split (named, or the layout's own
   held-out speakers such as LibriTTS's dev/test folders, else ``n_unseen`` chosen by a seeded hash);
   every other speaker's utterances go to train/dev/test by position (the last ones to test), as in the
   embedded corpus;
3. per utterance, once: audio -> mono -> resampled to ``sample_rate`` (torchaudio) -> PCM16 wav, its
   log-mel (:class:`~imf.models.features.LogMel`) and, with alignments, its frame-level phones from the
   MFA TextGrid (:mod:`~imf.data.importers.alignments`). Each utterance's files are written atomically
   and its ``meta/<id>.json`` last, keyed by a hash of its inputs (source file size and mtime, text,
   TextGrid, rate), so an interrupted import continues where it stopped and a re-run reuses everything;
4. the manifest, train-split mel statistics and ``corpus.json`` (written last: a corpus without it is
   not loadable, like a half-built embedded corpus).

Without alignments (``alignments="none"``, or ``"auto"`` when no TextGrid is found) the corpus holds
audio, mels and text (vocoder, text2mel); asking it for phone tokens is a :class:`CorpusError` saying so.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm.auto import tqdm

from imf.core.config import Config, require
from imf.core.runtime import atomic_path, atomic_write_json, process_pool, sweep_temp_files
from imf.data.build import estimate_f0, finished_row, init_worker, mel_stats, utterance_paths
from imf.data.corpus import MANIFEST_COLUMNS, SPLITS, CorpusError, check_files
from imf.data.engines import resample
from imf.data.importers.alignments import read_phones
from imf.data.text import PHONES, frame_durations
from imf.models.features import LogMel, MelConfig

IMPORTER_VERSION = 1  # bump when the same inputs would produce different files
LAYOUTS = ("auto", "ljspeech", "libritts", "manifest")
ALIGNMENTS = ("auto", "textgrid", "none")


@dataclasses.dataclass(frozen=True)
class ImportConfig(Config):
    layout: str = "auto"  # "auto" (detected) | "ljspeech" | "libritts" | "manifest"; or prefix CORPUS_DIR: "libritts:/data/x"
    name: str = ""  # folder under the data dir; "": the source folder's name (prefixed "<layout>-" unless it starts so)
    sample_rate: int = 16000  # Hz: audio is resampled to this rate (the mel front end's)
    min_seconds: float = 0.5  # shorter utterances are dropped (listed in corpus.json)
    max_seconds: float = 20.0  # longer utterances are dropped
    max_utts_per_speaker: int = 0  # 0: all; else each speaker's first n utterances (by id) after the filter
    unseen_speakers: tuple[str, ...] = ()  # held out whole as "unseen"; (): the layout's own, else n_unseen
    n_unseen: int = 2  # held-out speakers when nobody names them (seeded hash; at most n_speakers - 1)
    seed: int = 0  # the choice of the n_unseen held-out speakers
    dev_fraction: float = 0.1  # share of each seen speaker's utterances in dev
    test_fraction: float = 0.1  # share of each seen speaker's utterances in test
    alignments: str = "auto"  # "textgrid": every utterance needs an MFA TextGrid; "none": text only; "auto": either
    textgrid_dir: str = ""  # folder searched (recursively) for <id>.TextGrid; "": the corpus folder
    align_tolerance: float = 0.1  # s: max |end of the phones tier - audio duration|
    strip_stress: bool = True  # ARPAbet "AH0" -> "ah" (the embedded corpus's phone symbols)
    workers: int = 0  # processes computing features (0: min(2, cpu count); 1: in this process)

    def validate(self) -> None:
        require(self.layout in LAYOUTS, "layout", f"{self.layout!r} is not one of {list(LAYOUTS)}")
        require(self.alignments in ALIGNMENTS, "alignments", f"{self.alignments!r} is not one of {list(ALIGNMENTS)}")
        require(self.sample_rate >= 8000, "sample_rate", "must be >= 8000 Hz")
        require(0 <= self.min_seconds < self.max_seconds, "max_seconds", "need 0 <= min_seconds < max_seconds")
        require(self.max_utts_per_speaker >= 0 and self.n_unseen >= 0, "n_unseen", "counts must be >= 0")
        require(0 <= self.dev_fraction and 0 <= self.test_fraction and self.dev_fraction + self.test_fraction < 1,
                "test_fraction", "dev and test fractions must be >= 0 with a sum < 1")
        require(self.align_tolerance > 0, "align_tolerance", "must be positive")
        require(self.workers >= 0, "workers", "must be >= 0")

    @property
    def mel(self) -> MelConfig:
        return MelConfig(sample_rate=self.sample_rate)


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One utterance a layout lists: ``where`` names its origin (file and line) in errors."""
    id: str
    speaker: str
    audio: Path
    text: str
    where: str
    split: str = ""  # "": assigned by write_corpus; else given by the layout (a manifest's split column)


@dataclasses.dataclass(frozen=True)
class _Job:
    utt: Utterance
    textgrid: Path | None
    key: str
    layout: str
    sample_rate: int
    tolerance: float
    strip_stress: bool


def _key(utt: Utterance, textgrid: Path | None, cfg: ImportConfig) -> str:
    st = utt.audio.stat()
    tg = None if textgrid is None else [str(textgrid), textgrid.stat().st_size, textgrid.stat().st_mtime_ns]
    blob = json.dumps([IMPORTER_VERSION, str(utt.audio), st.st_size, st.st_mtime_ns, utt.text, utt.speaker, tg,
                       cfg.mel.to_dict(), cfg.align_tolerance, cfg.strip_stress], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


_LOGMEL: dict[int, LogMel] = {}


def make_utterance(root: Path, job: _Job) -> dict[str, Any]:
    """Resample, align and write one utterance (or find it finished) -> its manifest row (split unset)."""
    row = finished_row(root, job.utt.id, job.key)
    if row is not None:
        return row
    utt = job.utt
    try:
        wav, sr = sf.read(str(utt.audio), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise CorpusError(f"{utt.audio}: unreadable audio ({utt.where}): {e}") from None
    wav = resample(wav.mean(1), sr, job.sample_rate)
    pcm = np.clip(np.round(wav.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    mel_cfg = MelConfig(sample_rate=job.sample_rate)
    n_samples = len(pcm)
    n_frames = mel_cfg.n_frames(n_samples)
    phones, durations = [], []
    if job.textgrid is not None:
        phones, ends = read_phones(job.textgrid, n_samples / job.sample_rate, job.tolerance, utt.audio, job.strip_stress)
        if len(phones) > n_frames:
            raise CorpusError(f"{job.textgrid}: {len(phones)} phones do not fit the {n_frames} frames of {utt.audio}")
        durations = frame_durations(ends, n_frames, job.sample_rate / mel_cfg.hop_length)
    audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)  # exactly what Corpus.load_wav returns
    if job.sample_rate not in _LOGMEL:
        _LOGMEL[job.sample_rate] = LogMel(mel_cfg)
    with torch.no_grad():
        mel = _LOGMEL[job.sample_rate](audio).numpy().astype(np.float32)
    wav_path, mel_path, meta_path = utterance_paths(root, utt.id)
    with atomic_path(wav_path) as tmp:
        sf.write(str(tmp), pcm, job.sample_rate, subtype="PCM_16", format="WAV")
    with atomic_path(mel_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, mel)
    row = dict(id=utt.id, speaker=utt.speaker, engine=job.layout, voice=utt.speaker, split="", text=utt.text,
               phones=" ".join(phones), durations=" ".join(map(str, durations)), n_samples=n_samples,
               n_frames=n_frames, pitch=1.0, rate=1.0, wav=f"wav/{utt.id}.wav", mel=f"mel/{utt.id}.npy",
               pitch_range=1.0, f0=round(estimate_f0(audio.numpy(), job.sample_rate), 1))
    atomic_write_json(meta_path, {"key": job.key, "row": row})  # last: its presence marks completion
    return row


def _make_star(args: tuple[Path, _Job]) -> dict[str, Any]:
    return make_utterance(*args)


def _filter(utts: Sequence[Utterance], cfg: ImportConfig) -> tuple[list[Utterance], list[str]]:
    """Utterances within the duration limits (and the per-speaker cap), and the reasons of the dropped ones."""
    kept, dropped, per_speaker = [], [], {}
    for u in sorted(utts, key=lambda u: (u.speaker, u.id)):
        try:
            info = sf.info(str(u.audio))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            what = "audio file missing" if not u.audio.exists() else f"unreadable audio: {e}"
            raise CorpusError(f"{u.audio}: {what} ({u.where})") from None
        seconds = info.frames / info.samplerate
        if not cfg.min_seconds <= seconds <= cfg.max_seconds:
            dropped.append(f"{u.id}: {seconds:.2f} s outside [{cfg.min_seconds}, {cfg.max_seconds}] s")
            continue
        if cfg.max_utts_per_speaker and per_speaker.get(u.speaker, 0) >= cfg.max_utts_per_speaker:
            continue
        per_speaker[u.speaker] = per_speaker.get(u.speaker, 0) + 1
        kept.append(u)
    return kept, dropped


def held_out_speakers(speakers: Sequence[str], cfg: ImportConfig, layout_unseen: Sequence[str] = ()) -> list[str]:
    """The ``unseen`` speakers: ``cfg.unseen_speakers``, else the layout's own (unless that is every speaker),
    else ``min(n_unseen, n - 1)`` speakers with the smallest ``sha1(f"{seed}:{name}")``."""
    if cfg.unseen_speakers:
        unknown = [s for s in cfg.unseen_speakers if s not in speakers]
        if unknown:
            raise CorpusError(f"parameter 'unseen_speakers': {unknown} not in the corpus (speakers: {list(speakers)[:20]})")
        return list(cfg.unseen_speakers)
    if layout_unseen and set(layout_unseen) != set(speakers):
        return sorted(layout_unseen)
    ranked = sorted(speakers, key=lambda s: hashlib.sha1(f"{cfg.seed}:{s}".encode()).hexdigest())
    return sorted(ranked[: max(0, min(cfg.n_unseen, len(speakers) - 1))])


def assign_splits(utts: Sequence[Utterance], unseen: Sequence[str], cfg: ImportConfig) -> dict[str, str]:
    """id -> split: held-out speakers -> ``unseen``; each other speaker's utterances (by id) -> train, then
    dev, then test (the last ``round(n * test_fraction)``), at least one left in train."""
    out: dict[str, str] = {}
    by_speaker: dict[str, list[str]] = {}
    for u in utts:
        by_speaker.setdefault(u.speaker, []).append(u.id)
    for speaker, ids in by_speaker.items():
        ids = sorted(ids)
        if speaker in unseen:
            out.update({i: "unseen" for i in ids})
            continue
        n = len(ids)
        n_test = min(int(math.floor(n * cfg.test_fraction + 0.5)), n - 1)
        n_dev = min(int(math.floor(n * cfg.dev_fraction + 0.5)), n - 1 - n_test)
        for j, i in enumerate(ids):
            out[i] = "test" if j >= n - n_test else "dev" if j >= n - n_test - n_dev else "train"
    return out


def textgrid_index(folder: Path) -> dict[str, Path]:
    """``<id>.TextGrid`` files under ``folder`` (recursively) by id; an id found twice is an error naming both."""
    index: dict[str, Path] = {}
    for p in sorted(folder.rglob("*.TextGrid")):
        if p.stem in index:
            raise CorpusError(f"{p}: a second TextGrid for utterance {p.stem!r} (the first: {index[p.stem]})")
        index[p.stem] = p
    return index


def _textgrids(kept: Sequence[Utterance], source: Path, cfg: ImportConfig) -> dict[str, Path] | None:
    """id -> TextGrid for every kept utterance, or None (no alignments). Missing ones: error naming the file."""
    if cfg.alignments == "none":
        return None
    folder = Path(cfg.textgrid_dir) if cfg.textgrid_dir else (source if source.is_dir() else source.parent)
    index = textgrid_index(folder)
    if not index and cfg.alignments == "auto":
        return None
    missing = [u for u in kept if u.id not in index]
    if missing:
        u = missing[0]
        raise CorpusError(f"{folder / (u.id + '.TextGrid')}: alignment missing for {u.audio} ({len(missing)} of "
                          f"{len(kept)} utterances have no <id>.TextGrid under {folder}); run MFA on the corpus, "
                          "or import with alignments='none' (text2mel / vocoder only)")
    return {u.id: index[u.id] for u in kept}


def write_corpus(utts: Sequence[Utterance], out: Path, cfg: ImportConfig, layout: str, source: Path,
                 resolved: dict[str, Any], layout_unseen: Sequence[str] = (), progress: bool = True) -> Path:
    """Import ``utts`` into the corpus folder ``out`` (see the module docstring); returns ``out``."""
    t0 = time.time()
    dup = sorted(i for i, n in collections.Counter(u.id for u in utts).items() if n > 1)
    if dup:
        raise CorpusError(f"{source}: duplicate utterance id(s) {dup[:5]}")
    bad = [u for u in utts if not u.id or "/" in u.id or u.id.startswith(".")]
    if bad:
        raise CorpusError(f"{bad[0].where}: utterance id {bad[0].id!r} cannot name a file")
    kept, dropped = _filter(utts, cfg)
    if not kept:
        raise CorpusError(f"{source}: no utterance within [{cfg.min_seconds}, {cfg.max_seconds}] s "
                          f"({len(dropped)} dropped, e.g. {dropped[:3]})")
    textgrids = _textgrids(kept, source, cfg)
    speakers = sorted({u.speaker for u in kept})
    if all(u.split for u in kept):
        splits = {u.id: u.split for u in kept}
        unseen = sorted({u.speaker for u in kept if u.split == "unseen"})
        mixed = sorted({u.speaker for u in kept if u.speaker in unseen and u.split != "unseen"})
        if mixed:
            raise CorpusError(f"{source}: speaker {mixed[0]!r} has utterances in 'unseen' and in other splits "
                              "(unseen speakers are held out whole)")
    else:
        unseen = held_out_speakers(speakers, cfg, [s for s in layout_unseen if s in speakers])
        splits = assign_splits(kept, unseen, cfg)
    jobs = [_Job(u, None if textgrids is None else textgrids[u.id], _key(u, None if textgrids is None else textgrids[u.id], cfg),
                 layout, cfg.sample_rate, cfg.align_tolerance, cfg.strip_stress) for u in kept]

    info_path = out / "corpus.json"
    info_path.unlink(missing_ok=True)  # not loadable while being (re)imported
    sweep_temp_files(out)
    wanted = {u.id for u in kept}
    for sub, ext in (("wav", ".wav"), ("mel", ".npy"), ("meta", ".json")):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob(f"*{ext}"):
            if stale.name[: -len(ext)] not in wanted:
                stale.unlink()
    rows = _run(out, jobs, cfg.workers or min(2, os.cpu_count() or 1), progress, f"import {out.name}")
    for r in rows:
        r["split"] = splits[r["id"]]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    with atomic_path(out / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False, lineterminator="\n")
    train = manifest[manifest.split == "train"]
    mean, std = mel_stats(out, train)
    seen = set(" ".join(manifest.phones).split())
    info = dict(
        config=resolved, builder_version=IMPORTER_VERSION, importer=layout, source=str(source),
        sample_rate=cfg.sample_rate, mel=cfg.mel.to_dict(), aligned=textgrids is not None,
        phones=PHONES + sorted(seen - set(PHONES)),
        speakers=[dict(name=s, engine=layout, voice=s, role="unseen" if s in unseen else "seen") for s in speakers],
        mel_mean=mean, mel_std=std, n_utts=len(manifest),
        split_counts={s: int((manifest.split == s).sum()) for s in SPLITS},
        dropped=dropped, build_seconds=round(time.time() - t0, 1),
    )
    atomic_write_json(info_path, info)
    return out


def _run(out: Path, jobs: list[_Job], workers: int, progress: bool, desc: str) -> list[dict[str, Any]]:
    bar = tqdm(total=len(jobs), desc=desc, unit="utt", disable=not progress)
    rows: list[dict[str, Any]] = []
    if workers <= 1:
        threads = torch.get_num_threads()
        init_worker()
        try:
            for job in jobs:
                rows.append(make_utterance(out, job))
                bar.update(1)
        finally:
            torch.set_num_threads(threads)
    else:
        with process_pool(workers, initializer=init_worker) as pool:
            for r in pool.map(_make_star, [(out, j) for j in jobs], chunksize=8):
                rows.append(r)
                bar.update(1)
    bar.close()
    return rows


def finished_import(out: Path, resolved: dict[str, Any]) -> bool:
    """True if ``out`` holds a complete import of the same resolved config (one ``stat`` per file)."""
    try:
        info = json.loads((out / "corpus.json").read_text())
    except (OSError, ValueError):
        return False
    return (info.get("config") == resolved and info.get("builder_version") == IMPORTER_VERSION
            and (out / "manifest.csv").exists() and not check_files(out, info))
