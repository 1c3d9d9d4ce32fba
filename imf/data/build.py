"""Building the embedded synthetic multi-speaker corpus, offline.

``build_corpus(CorpusConfig(profile="small"))`` speaks generated English sentences with 10
voices from two engines (6 espeak-ng, 4 flite), randomising pitch and rate per utterance, and
writes ``<data_dir>/synth-small/`` (the layout: :mod:`imf.data.corpus`, which reads it).

Speaker ``s`` utterance ``j`` draws its sentence and prosody from ``numpy.random.default_rng(
[seed, s, j])``, so the corpus is a pure function of the config: a re-run reproduces
``manifest.csv`` byte for byte and reuses every finished wav/mel. One espeak and one flite
voice are held out whole as the ``unseen`` split; the other speakers' utterances are split
into train/dev/test by position (the last ones go to test, the ones before to dev).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm.auto import tqdm

from imf.core.config import Config, require
from imf.core.runtime import atomic_path, atomic_write_json, process_pool, data_dir, sweep_temp_files
from imf.data.corpus import MANIFEST_COLUMNS, SPLITS, CorpusError, check_files
from imf.data.engines import SAMPLE_RATE, EngineError, Prosody, Voice, sample_prosody, synthesize
from imf.models.features import LogMel, MelConfig
from imf.data.text import PHONES, frame_durations, make_sentence

BUILDER_VERSION = 1  # bump when the same config would produce different files

#: The corpus speakers, chosen far apart by resemblyzer cosine (see data/README.md). ``holdout``
#: voices form the ``unseen`` split. The order fixes the speaker ids.
VOICES: tuple[Voice, ...] = (
    Voice("es-gb-grandma", "espeak", "en+grandma"),
    Voice("es-scotland-klatt", "espeak", "en-gb-scotland+klatt"),
    Voice("es-gbclan-f1", "espeak", "en-gb-x-gbclan+f1"),
    Voice("es-gbcwmd-klatt3", "espeak", "en-gb-x-gbcwmd+klatt3"),
    Voice("es-caribbean-andy", "espeak", "en-029+Andy"),
    Voice("es-nyc-m1", "espeak", "en-us-nyc+m1", holdout=True),
    Voice("fl-slt", "flite", "slt", f0=170.0),
    Voice("fl-rms", "flite", "rms", f0=100.0, pitch_by_speed=True),
    Voice("fl-kal16", "flite", "kal16", f0=90.0),
    Voice("fl-awb", "flite", "awb", f0=130.0, holdout=True),
)
VOICE_BY_NAME = {v.name: v for v in VOICES}

PROFILE_UTTS = {"tiny": 30, "small": 150}  # utterances per speaker when utts_per_speaker == 0

#: Loudness of every utterance: RMS scaled to this (peak kept below 0.99), so the engines'
#: different output levels do not become a speaker cue or dominate the mel statistics.
TARGET_RMS = 0.1
#: Gaussian dither (std, full scale 1; about -70 dBFS, the level of flite's pauses) added to every
#: utterance: espeak-ng pauses are digital zeros, which would pin those log-mel frames to the
#: log floor (a constant no generative model should have to hit exactly).
DITHER = 3e-4


@dataclasses.dataclass(frozen=True)
class CorpusConfig(Config):
    profile: str = "small"  # "tiny" (30 utts/speaker, tests) | "small" (150 utts/speaker)
    name: str = ""  # folder under the data dir; "" -> f"synth-{profile}"
    seed: int = 0  # texts, prosody and thus audio derive from (seed, speaker, utterance)
    utts_per_speaker: int = 0  # 0 -> profile default (tiny 30, small 150)
    dev_fraction: float = 0.1  # share of each seen speaker's utterances in dev
    test_fraction: float = 0.1  # share of each seen speaker's utterances in test
    speakers: tuple[str, ...] = ()  # subset of VOICES by name (keeps VOICES order); () = all 10
    pitch_semitones: float = 3.0  # per-utterance pitch drawn uniformly in +- this many semitones
    rate_min: float = 0.85  # per-utterance speaking-rate factor drawn uniformly in [min, max]
    rate_max: float = 1.2
    align_tolerance: float = 0.2  # s: max |last phone end - audio duration| before dropping

    def validate(self) -> None:
        require(self.profile in PROFILE_UTTS, "profile", f"{self.profile!r} is not one of {list(PROFILE_UTTS)}")
        require(self.utts_per_speaker >= 0, "utts_per_speaker", "must be >= 0 (0 = profile default)")
        require(0 <= self.dev_fraction < 1, "dev_fraction", "must lie in [0, 1)")
        require(0 <= self.test_fraction < 1, "test_fraction", "must lie in [0, 1)")
        require(self.dev_fraction + self.test_fraction < 1, "test_fraction", "dev + test must be < 1")
        unknown = [s for s in self.speakers if s not in VOICE_BY_NAME]
        require(not unknown, "speakers", f"unknown speaker(s) {unknown}; known: {list(VOICE_BY_NAME)}")
        require(0 <= self.pitch_semitones <= 12, "pitch_semitones", "must lie in [0, 12]")
        require(0.5 <= self.rate_min <= self.rate_max <= 2.0, "rate_min", "need 0.5 <= rate_min <= rate_max <= 2")
        require(self.align_tolerance > 0, "align_tolerance", "must be positive")
        n = self.n_utts_per_speaker
        n_dev, n_test = self.split_sizes()
        require(n - n_dev - n_test >= 2, "utts_per_speaker",
                f"{n} utterances per speaker leave {n - n_dev - n_test} for train after dev {n_dev} "
                f"and test {n_test}; need >= 2 (prompts come from another utterance)")

    @property
    def corpus_name(self) -> str:
        return self.name or f"synth-{self.profile}"

    @property
    def n_utts_per_speaker(self) -> int:
        return self.utts_per_speaker or PROFILE_UTTS[self.profile]

    @property
    def voices(self) -> tuple[Voice, ...]:
        return tuple(v for v in VOICES if not self.speakers or v.name in self.speakers)

    def split_sizes(self) -> tuple[int, int]:
        """(dev, test) utterances per seen speaker (fractions rounded half up)."""
        n = self.n_utts_per_speaker
        return int(math.floor(n * self.dev_fraction + 0.5)), int(math.floor(n * self.test_fraction + 0.5))

    def resolved(self) -> dict[str, Any]:
        """The config with defaults resolved: what corpus.json records and re-runs compare."""
        d = self.to_dict()
        d.update(name=self.corpus_name, utts_per_speaker=self.n_utts_per_speaker, speakers=[v.name for v in self.voices])
        return d


@dataclasses.dataclass(frozen=True)
class _Job:
    id: str
    voice: Voice
    split: str
    text: str
    prosody: Prosody
    tolerance: float  # s, allowed |last phone end - audio duration|
    seed: tuple[int, int, int]  # (corpus seed, speaker index, utterance index): the dither's seed
    key: str  # hash of everything that determines the files


def plan(cfg: CorpusConfig) -> list[_Job]:
    """Every utterance of the corpus, in manifest order (speaker by speaker)."""
    n = cfg.n_utts_per_speaker
    n_dev, n_test = cfg.split_sizes()
    mel_cfg = MelConfig().to_dict()
    jobs = []
    for s, voice in enumerate(VOICES):
        if voice not in cfg.voices:
            continue
        for j in range(n):
            rng = np.random.default_rng([cfg.seed, s, j])
            text = make_sentence(rng)
            prosody = sample_prosody(rng, cfg.pitch_semitones, (cfg.rate_min, cfg.rate_max))
            if voice.holdout:
                split = "unseen"
            else:
                split = "test" if j >= n - n_test else "dev" if j >= n - n_test - n_dev else "train"
            ident = f"{voice.name}_{j:04d}"
            blob = json.dumps([BUILDER_VERSION, dataclasses.asdict(voice), text, dataclasses.asdict(prosody),
                               split, cfg.align_tolerance, mel_cfg, [cfg.seed, s, j], DITHER, TARGET_RMS],
                              sort_keys=True)
            key = hashlib.sha1(blob.encode()).hexdigest()[:16]
            jobs.append(_Job(ident, voice, split, text, prosody, cfg.align_tolerance, (cfg.seed, s, j), key))
    return jobs


def estimate_f0(wav: np.ndarray, sr: int = SAMPLE_RATE, fmin: float = 60.0, fmax: float = 400.0,
                threshold: float = 0.5) -> float:
    """Median F0 (Hz) over voiced 40 ms frames of ``wav`` [N]; NaN if nothing is voiced.

    Normalised, window-unbiased autocorrelation per frame; a frame is voiced when its peak in
    the lag range ``[sr/fmax, sr/fmin]`` exceeds ``threshold``. Crude but fast (~5 ms per
    utterance); it is a corpus statistic, not a judge.
    """
    n, hop = int(0.04 * sr), int(0.01 * sr)
    if len(wav) < n:
        return float("nan")
    frames = wav[np.arange(0, len(wav) - n + 1, hop)[:, None] + np.arange(n)[None]].astype(np.float64)
    frames -= frames.mean(1, keepdims=True)
    energy = (frames ** 2).mean(1)
    frames = frames[energy > max(1e-6, 0.01 * energy.max())]
    if len(frames) == 0:
        return float("nan")
    window = np.hanning(n)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames * window, 2 * n)) ** 2)[:, :n]
    ac /= np.maximum(np.fft.irfft(np.abs(np.fft.rfft(window, 2 * n)) ** 2)[:n], 1e-9)
    ac /= np.maximum(ac[:, :1], 1e-12)
    lo, hi = int(sr / fmax), int(sr / fmin)
    lag, peak = ac[:, lo:hi].argmax(1), ac[:, lo:hi].max(1)
    voiced = peak > threshold
    return float(np.median(sr / (lo + lag[voiced]))) if voiced.any() else float("nan")


def utterance_paths(root: Path, ident: str) -> tuple[Path, Path, Path]:
    """(wav, mel, meta) files of utterance ``ident`` in corpus folder ``root`` (built or imported)."""
    return root / "wav" / f"{ident}.wav", root / "mel" / f"{ident}.npy", root / "meta" / f"{ident}.json"


def finished_row(root: Path, ident: str, key: str) -> dict[str, Any] | None:
    """The stored manifest row of utterance ``ident`` if its wav, mel and meta files are complete and were
    made from the inputs hashed as ``key`` (meta is written last), else None: an interrupted build resumes."""
    wav_path, mel_path, meta_path = utterance_paths(root, ident)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None
        row = meta["row"]
        if sf.info(str(wav_path)).frames != row["n_samples"]:
            return None
        if np.load(mel_path, mmap_mode="r").shape != (MelConfig().n_mels, row["n_frames"]):
            return None
        return row
    except (OSError, ValueError, KeyError, RuntimeError, sf.LibsndfileError):
        return None


_LOGMEL: LogMel | None = None


def init_worker() -> None:
    """A corpus worker process: one torch thread (fixed threading keeps the mels bit-identical)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)


def _make(root: Path, job: _Job) -> dict[str, Any] | str:
    """Synthesise, align and write one utterance -> its manifest row, or a reason to drop it."""
    global _LOGMEL
    row = finished_row(root, job.id, job.key)
    if row is not None:
        return row
    try:
        syn = synthesize(job.text, job.voice, job.prosody)
    except EngineError as e:
        return f"{job.id}: {e}"
    wav = syn.wav.astype(np.float64)
    rms, peak = np.sqrt((wav ** 2).mean()), np.abs(wav).max()
    if not np.isfinite(rms) or rms < 1e-4:
        return f"{job.id}: silent audio from {job.voice.engine} voice {job.voice.voice!r}"
    wav = wav * min(TARGET_RMS / rms, 0.99 / peak)
    wav += np.random.default_rng([*job.seed, 1]).normal(0.0, DITHER, len(wav))
    pcm = np.clip(np.round(wav * 32767), -32768, 32767).astype(np.int16)
    mel_cfg = MelConfig()
    n_samples = len(pcm)
    n_frames = mel_cfg.n_frames(n_samples)
    duration = n_samples / SAMPLE_RATE
    if abs(syn.ends[-1] - duration) > job.tolerance or any(b <= a for a, b in zip(syn.ends, syn.ends[1:])):
        return (f"{job.id}: alignment does not fit the audio (last phone ends at {syn.ends[-1]:.3f} s, "
                f"audio is {duration:.3f} s, or boundaries are not increasing)")
    durations = frame_durations(syn.ends, n_frames, SAMPLE_RATE / mel_cfg.hop_length)
    audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)  # exactly what load_wav returns
    if _LOGMEL is None:
        _LOGMEL = LogMel(mel_cfg)
    with torch.no_grad():
        mel = _LOGMEL(audio).numpy().astype(np.float32)
    assert mel.shape == (mel_cfg.n_mels, n_frames), (job.id, mel.shape, n_frames)

    wav_path, mel_path, meta_path = utterance_paths(root, job.id)
    with atomic_path(wav_path) as tmp:
        sf.write(str(tmp), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    with atomic_path(mel_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, mel)
    row = dict(
        id=job.id, speaker=job.voice.name, engine=job.voice.engine, voice=job.voice.voice, split=job.split,
        text=job.text, phones=" ".join(syn.phones), durations=" ".join(map(str, durations)),
        n_samples=n_samples, n_frames=n_frames, pitch=syn.prosody.pitch, rate=syn.prosody.rate,
        wav=f"wav/{job.id}.wav", mel=f"mel/{job.id}.npy", pitch_range=syn.prosody.pitch_range,
        f0=round(estimate_f0(audio.numpy()), 1),
    )
    atomic_write_json(meta_path, {"key": job.key, "row": row})  # last: its presence marks completion
    return row


def _make_star(args: tuple[Path, _Job]) -> dict[str, Any] | str:
    return _make(*args)


def build_corpus(cfg: CorpusConfig | None = None, root: str | os.PathLike | None = None,
                 progress: bool = True, workers: int | None = None) -> Path:
    """Build (or finish, or just find) the corpus of ``cfg`` under ``root or data_dir()``.

    Returns the corpus folder ``<root>/<cfg.corpus_name>``. If its ``corpus.json`` already
    records the same resolved config and builder version and every file listed in the manifest
    is there at its expected size (:func:`imf.data.corpus.check_files`, one ``stat`` per file),
    returns at once; otherwise builds (a damaged utterance is made again),
    reusing every utterance whose wav/mel/meta files are complete and current (files of
    utterances the config no longer has are deleted). ``workers``
    processes synthesise in parallel (default ``min(2, cpu_count)``; 1 = in this process).
    Utterances whose alignment does not fit their audio are dropped with a warning naming
    them (listed in corpus.json); more than 5 % dropped raises :class:`CorpusError`.
    """
    cfg = cfg or CorpusConfig()
    out = Path(root or data_dir()) / cfg.corpus_name
    info_path = out / "corpus.json"
    if info_path.exists() and (out / "manifest.csv").exists():
        try:
            info = json.loads(info_path.read_text())
        except ValueError:
            info = {}  # unreadable: rebuild it
        if info.get("config") == cfg.resolved() and info.get("builder_version") == BUILDER_VERSION:
            damaged = check_files(out, info)
            if not damaged:
                return out
            warnings.warn(f"corpus {out}: {len(damaged)} damaged or missing file(s), e.g. {damaged[:3]}: "
                          "rebuilding those utterances", stacklevel=2)
    t0 = time.time()
    jobs = plan(cfg)
    # a corpus being (re)built is not loadable: corpus.json reappears only when it is complete
    info_path.unlink(missing_ok=True)
    sweep_temp_files(out)  # leftovers of writes killed in an earlier build
    wanted = {j.id for j in jobs}
    for sub, ext in (("wav", ".wav"), ("mel", ".npy"), ("meta", ".json")):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob(f"*{ext}"):  # utterances of an earlier, different config
            if stale.name[: -len(ext)] not in wanted:
                stale.unlink()
    workers = workers or min(2, os.cpu_count() or 1)
    results: list[dict[str, Any] | str]
    bar = _progress(len(jobs), f"corpus {cfg.corpus_name}", progress)
    if workers <= 1:
        threads = torch.get_num_threads()
        init_worker()
        try:
            results = []
            for job in jobs:
                results.append(_make(out, job))
                bar.update(1)
        finally:
            torch.set_num_threads(threads)
    else:
        with process_pool(workers, initializer=init_worker) as pool:
            results = []
            for r in pool.map(_make_star, [(out, j) for j in jobs], chunksize=8):
                results.append(r)
                bar.update(1)
    bar.close()

    rows = [r for r in results if isinstance(r, dict)]
    dropped = [r for r in results if isinstance(r, str)]
    for reason in dropped:
        warnings.warn(f"corpus {cfg.corpus_name}: dropped {reason}", stacklevel=2)
    if len(dropped) > 0.05 * len(jobs):
        raise CorpusError(f"{out}: {len(dropped)} of {len(jobs)} utterances dropped; first: {dropped[:3]}")
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    with atomic_path(out / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False, lineterminator="\n")

    mean, std = mel_stats(out, manifest[manifest.split == "train"])
    mel_cfg = MelConfig()
    info = dict(
        config=cfg.resolved(), builder_version=BUILDER_VERSION, sample_rate=SAMPLE_RATE, mel=mel_cfg.to_dict(),
        phones=PHONES,
        speakers=[dict(name=v.name, engine=v.engine, voice=v.voice, role="unseen" if v.holdout else "seen")
                  for v in cfg.voices],
        mel_mean=mean, mel_std=std, n_utts=len(manifest),
        split_counts={s: int((manifest.split == s).sum()) for s in SPLITS},
        dropped=dropped, build_seconds=round(time.time() - t0, 1),
    )
    atomic_write_json(info_path, info)
    return out


def mel_stats(root: Path, rows: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Per-bin mean and std of the raw log-mel over ``rows`` (float64 sums over all frames)."""
    if len(rows) == 0:
        raise CorpusError(f"{root}: the train split is empty: cannot compute mel statistics")
    s1 = np.zeros(MelConfig().n_mels)
    s2 = np.zeros(MelConfig().n_mels)
    n = 0
    for rel in rows.mel:
        m = np.load(root / rel).astype(np.float64)
        s1 += m.sum(1)
        s2 += (m ** 2).sum(1)
        n += m.shape[1]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-8))
    return [round(float(x), 6) for x in mean], [round(float(x), 6) for x in std]


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="utt")
