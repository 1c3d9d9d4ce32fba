"""What every judge shares: the item, the protocol, the score cache, thread limits, the
cached base class of the built-in judges, and the import / weight-lookup helpers.

A judge scores a list of :class:`JudgeItem` (16 kHz mono float32 audio plus whatever
reference it needs) and returns one float per item (:class:`Judge`). The built-in judges
derive from :class:`CachedJudge`, which caches raw model outputs by a SHA-1 of the float32
audio bytes, the judge's identity and the reference audio, in memory and optionally in a JSON
file shared by several judges (:class:`ScoreCache`), and scores under :func:`limit_threads`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from imf.core.runtime import atomic_write_json

SAMPLE_RATE = 16_000  # every judge takes 16 kHz mono audio
CACHE_VERSION = 1  # bump when a judge's computation changes so old cache entries stop matching


# --------------------------------------------------------------------------------------------
# Items and the protocol
# --------------------------------------------------------------------------------------------

def _as_audio(x: Any, field: str, item_id: Any) -> np.ndarray:
    """numpy / torch (N,) -> contiguous float32 numpy (N,), validated."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim != 1:
        raise ValueError(f"JudgeItem {item_id!r}: {field} must be mono audio of shape (N,), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"JudgeItem {item_id!r}: {field} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"JudgeItem {item_id!r}: {field} contains NaN or inf")
    return a


def audio_sha1(wav: np.ndarray) -> str:
    """SHA-1 of the little-endian float32 bytes of ``wav`` (N,): the audio part of a cache key."""
    return hashlib.sha1(np.ascontiguousarray(wav, dtype="<f4").tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class JudgeItem:
    """One utterance to judge. All audio is mono float32 at 16 kHz in [-1, 1], shape (N,).

    wav: the audio to judge (numpy or torch, converted to numpy float32).
    text: reference transcript (for WER), or None.
    ref_wav: reference audio of the SAME utterance (for PESQ / STOI), or None.
    prompt_wav: real audio of the target speaker (for SIM, SIM-o style), or None.
    id: a label carried into result tables.

    Resample other rates first, e.g. ``torchaudio.functional.resample(x, sr, 16000)``.
    """
    wav: np.ndarray
    text: str | None = None
    ref_wav: np.ndarray | None = None
    prompt_wav: np.ndarray | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        for field in ("wav", "ref_wav", "prompt_wav"):
            value = getattr(self, field)
            if value is not None or field == "wav":
                object.__setattr__(self, field, _as_audio(value, field, self.id))
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"JudgeItem {self.id!r}: text must be a str or None, got {type(self.text).__name__}")

    @functools.cached_property
    def wav_sha1(self) -> str:
        return audio_sha1(self.wav)

    @functools.cached_property
    def ref_sha1(self) -> str | None:
        return None if self.ref_wav is None else audio_sha1(self.ref_wav)

    @functools.cached_property
    def prompt_sha1(self) -> str | None:
        return None if self.prompt_wav is None else audio_sha1(self.prompt_wav)

    @property
    def seconds(self) -> float:
        return len(self.wav) / SAMPLE_RATE


@runtime_checkable
class Judge(Protocol):
    """Anything that scores a batch of items, one float per item (NaN where undefined).

    A judge may also offer ``columns(items) -> dict[str, list]`` with its score under ``name``
    and extra per-item columns named ``f"{name}.<what>"``; :func:`evaluate` uses it when present.
    """
    name: str
    higher_is_better: bool

    def score(self, items: Sequence[JudgeItem]) -> list[float]: ...


# --------------------------------------------------------------------------------------------
# Cache, threads, errors
# --------------------------------------------------------------------------------------------

class ScoreCache:
    """A key -> JSON value store, in memory and, with ``path``, in a JSON file.

    Keys already include the judge identity, so one cache (one file) can serve many judges.
    :meth:`flush` merges with what is on disk (another process may have written) and replaces
    the file atomically; a cache of ``n`` entries costs O(n) per flush.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else Path(path)
        self._data: dict[str, Any] = {}
        self._dirty = False
        if self.path is not None and self.path.exists():
            self._data.update(self._read())

    def _read(self) -> dict[str, Any]:
        try:
            blob = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise RuntimeError(f"judge cache {self.path} is unreadable ({e}); delete it to start afresh") from e
        if blob.get("version") != CACHE_VERSION:
            return {}
        return dict(blob.get("entries", {}))

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value
        self._dirty = True

    def flush(self) -> None:
        """Write new entries to ``path`` (no-op for a memory-only cache)."""
        if self.path is None or not self._dirty:
            return
        merged = self._read() if self.path.exists() else {}
        merged.update(self._data)
        self._data = merged
        atomic_write_json(self.path, {"version": CACHE_VERSION, "entries": merged})
        self._dirty = False


@contextlib.contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` torch threads and ``n`` BLAS/OpenMP threads, then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: only limits numpy's BLAS inside librosa
            limiter = contextlib.nullcontext()
        else:
            limiter = threadpool_limits(limits=n)
        with limiter:
            yield
    finally:
        torch.set_num_threads(before)


def import_package(module: str, package: str, judge: str) -> Any:
    """Import ``module`` or raise ImportError naming the pip package to install."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # webrtcvad's pkg_resources notice and similar
            return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"the {judge!r} judge needs the Python package {package!r} (import {module!r} failed: {e}). "
            f"Install it with `pip install {package}` or all judges with `pip install -e '.[judges]'`."
        ) from e


def require_files(folder: Path, names: Sequence[str], what: str, hint: str) -> None:
    """Raise RuntimeError naming ``folder`` and the missing ``names`` (weights are never downloaded)."""
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise RuntimeError(f"{what}: looked in {folder} and found no {', '.join(missing)}. {hint} "
                           "(Judges never download weights.)")


def load_object(spec: str) -> Any:
    """``"package.module:attr"`` -> the attribute (``attr`` may be dotted)."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected 'module:factory', got {spec!r}")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------------
# The shared machinery of the built-in judges
# --------------------------------------------------------------------------------------------

class CachedJudge:
    """Base of the built-in judges: caching, batching, progress bar, thread limits.

    A subclass sets ``name``, ``higher_is_better``, ``needs`` (item fields it requires) and
    implements ``identity`` (model + options: anything that changes the raw output),
    ``_compute(items) -> raw outputs`` (JSON-serialisable) and, if the raw output is not the
    score itself, ``_columns(item, raw) -> {name: score, name.extra: ...}``.

    Args (all keyword):
        cache: a :class:`ScoreCache` (share one among judges), a path to a JSON cache file, or
            None for a private in-memory cache.
        progress: show a tqdm bar when more than ``batch_size`` items need computing.
        batch_size: items per ``_compute`` call (progress granularity).
        num_threads: threads while scoring (1: do not fight training for cores).
        name: override the column name, e.g. two WER judges "wer_tiny" and "wer_large".
    """
    name: str = "judge"
    higher_is_better: bool = True
    needs: tuple[str, ...] = ()  # item fields besides wav that scoring needs (not None)
    raw_needs: tuple[str, ...] | None = None  # ... that the cached raw output needs (None: ``needs``)
    key_fields: tuple[str, ...] = ()  # hashed item fields besides wav that the raw output depends on

    def __init__(self, *, cache: ScoreCache | str | os.PathLike | None = None, progress: bool = True,
                 batch_size: int = 8, num_threads: int = 1, name: str | None = None):
        if batch_size < 1 or num_threads < 1:
            raise ValueError(f"batch_size and num_threads must be >= 1, got {batch_size}, {num_threads}")
        self.cache = cache if isinstance(cache, ScoreCache) else ScoreCache(cache)
        self.progress, self.batch_size, self.num_threads = progress, batch_size, num_threads
        if name is not None:
            self.name = name
        self.n_computed = 0  # items actually run through the model (cache misses)

    # -- to override -------------------------------------------------------------------------
    @property
    def identity(self) -> str:
        raise NotImplementedError

    def _compute(self, items: list[JudgeItem]) -> list[Any]:
        raise NotImplementedError

    def _columns(self, item: JudgeItem, raw: Any) -> dict[str, Any]:
        return {self.name: float(raw)}

    @property
    def label(self) -> str:
        """Which model produced this judge's column, for tables and report footnotes."""
        return self.identity

    # -- shared --------------------------------------------------------------------------------
    def _key(self, item: JudgeItem) -> str:
        parts = [f"v{CACHE_VERSION}", self.identity, item.wav_sha1]
        parts += [str(getattr(item, f"{f}_sha1")) for f in self.key_fields]
        return hashlib.sha1("|".join(parts).encode()).hexdigest()

    def _check(self, items: Sequence[JudgeItem], fields: Sequence[str]) -> None:
        for i, item in enumerate(items):
            if not isinstance(item, JudgeItem):
                raise TypeError(f"{self.name}: item {i} is a {type(item).__name__}, expected JudgeItem")
            for f in fields:
                if getattr(item, f) is None:
                    raise ValueError(f"{self.name} judge needs item.{f}; item {i} (id={item.id!r}) has none")

    def raw(self, items: Sequence[JudgeItem]) -> list[Any]:
        """Raw model outputs per item, computing only cache misses (each distinct key once)."""
        self._check(items, self.needs if self.raw_needs is None else self.raw_needs)
        keys = [self._key(it) for it in items]
        todo: dict[str, JudgeItem] = {}
        for k, it in zip(keys, items):
            if k not in self.cache and k not in todo:
                todo[k] = it
        if todo:
            from tqdm.auto import tqdm

            pending = list(todo.items())
            show = self.progress and len(pending) > self.batch_size
            try:
                with tqdm(total=len(pending), desc=self.name, unit="utt", disable=not show, leave=False) as bar, \
                        limit_threads(self.num_threads):
                    for s in range(0, len(pending), self.batch_size):
                        chunk = pending[s: s + self.batch_size]
                        outs = self._compute([it for _, it in chunk])
                        if len(outs) != len(chunk):
                            raise RuntimeError(f"{self.name}: _compute gave {len(outs)} outputs for {len(chunk)} items")
                        for (k, _), out in zip(chunk, outs):
                            self.cache[k] = out
                        self.n_computed += len(chunk)
                        bar.update(len(chunk))
            finally:  # an interrupted long run keeps what it computed
                self.cache.flush()
        return [self.cache[k] for k in keys]

    def columns(self, items: Sequence[JudgeItem]) -> dict[str, list]:
        """``{name: scores, name.extra: ...}``, each a list aligned with ``items``."""
        self._check(items, self.needs)
        rows = [self._columns(it, r) for it, r in zip(items, self.raw(items))]
        names = list(rows[0]) if rows else [self.name]
        return {c: [r[c] for r in rows] for c in names}

    def score(self, items: Sequence[JudgeItem]) -> list[float]:
        """One float per item (see the class docstring for what it means)."""
        return [float(v) for v in self.columns(items)[self.name]]

    def __call__(self, items: Sequence[JudgeItem]) -> list[float]:
        return self.score(items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, identity={self.identity!r})"


def crop_pair(item: JudgeItem) -> tuple[np.ndarray, np.ndarray]:
    """(ref, deg) float64 cropped to the shorter length: both (min(N_ref, N_wav),)."""
    n = min(len(item.ref_wav), len(item.wav))
    return item.ref_wav[:n].astype(np.float64), item.wav[:n].astype(np.float64)
