"""Blind listening tests: CMOS / SMOS trials, a rating store that survives a kill, and the analysis.

A test is a folder (the notebook uses ``results/listening/<test>/``) holding the stimuli and the
ratings of every rater::

    manifest.json   conditions (opaque id -> label such as "student@1"), the reference, the
                    utterances and, per (condition, utterance) and per prompt, an audio file name
    audio/*.wav     the stimuli, under opaque names (a hash): nothing a listener's browser sees
                    names a system
    ratings.csv     one row per answer (:data:`COLUMNS`), appended as each answer is given

Trials (:func:`design_trials`): CMOS compares a condition with the reference on one utterance,
the two in a random order (A / B), answered on -3 … +3 ("B much worse" … "B much better"); the
recorded ``score`` is the condition's relative to the reference (the answer's sign flipped when
the condition played as A). SMOS rates one condition's similarity to the prompt speaker's real
recording, 1 … 5. The order of the trials and of A / B is drawn from a generator seeded by
``(test, rater)``: the same rater gets the same sequence after a restart, another rater another
one. :func:`next_trial` is the first trial that rater has not answered (resume).

Storage (:class:`RatingStore`): each answer rewrites ``ratings.csv`` as a temporary file (old
rows + the new one, fsync'd) renamed over the old file (:func:`imf.core.runtime.atomic_path`),
under an exclusive ``flock`` on ``ratings.csv.lock`` so two raters' kernels never lose each
other's rows. A process killed at any instant leaves either the old file or the new one, never a
torn row (a leftover temporary file is removed by the next append). The cost is O(rows) per
answer: milliseconds for the few thousand rows a listening test has. (The alternative, an
fsync'd ``O_APPEND`` write, can leave a torn last line after a crash that every reader must
then skip and the next writer repair; the rename has no such state.)

Analysis (:func:`analyse`): per condition the mean CMOS (vs the reference) and SMOS with 95 %
percentile bootstrap intervals, resampling raters AND utterances (crossed: each replicate draws
raters and utterances with replacement and weights every rating by the product of their
counts), one seeded generator; a condition's CMOS is significant when its interval excludes 0,
and every pair of conditions is compared by the bootstrap interval of their difference (same
replicates; uncorrected for multiple comparisons).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from imf.core.runtime import atomic_path, atomic_write_json, is_temp_file

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

CMOS, SMOS = "cmos", "smos"
CMOS_SCALE = (-3, -2, -1, 0, 1, 2, 3)  # B much worse … B much better than A
SMOS_SCALE = (1, 2, 3, 4, 5)  # not similar … same speaker
COLUMNS = ["test", "rater", "trial", "kind", "utt", "a", "b", "condition", "answer", "score", "seconds", "time"]
MANIFEST = "manifest.json"
RATINGS = "ratings.csv"

__all__ = ["CMOS", "SMOS", "CMOS_SCALE", "SMOS_SCALE", "COLUMNS", "Trial", "trial_seed", "design_trials",
           "next_trial", "RatingStore", "ListeningTest", "rating_row", "bootstrap", "analyse", "audio_name"]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One question. ``kind`` cmos: ``a`` / ``b`` are the condition ids played as A and B (one is
    the reference), ``condition`` the one rated against it; smos: ``a`` = ``condition`` (played
    after the prompt), ``b`` empty. ``key`` identifies the trial across restarts."""
    kind: str
    utt: str
    condition: str
    a: str
    b: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.condition}:{self.utt}"

    @property
    def flipped(self) -> bool:
        """CMOS: the rated condition played as A (its score is the answer negated)."""
        return self.kind == CMOS and self.a == self.condition


def trial_seed(test: str, rater: str) -> int:
    """The seed of a rater's trial order: a stable hash of ``(test, rater)`` (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(f"{test}\0{rater}".encode()).digest()[:8], "little")


def design_trials(test: str, rater: str, conditions: Sequence[str], reference: str, utts: Sequence[str],
                  kinds: Sequence[str] = (CMOS, SMOS)) -> list[Trial]:
    """Every trial of ``rater``, in the order they are asked (a seeded function of ``(test, rater)``).

    CMOS: each condition other than ``reference`` against it on each utterance, A / B order drawn
    per trial; SMOS: each condition (the reference too) on each utterance. The CMOS block comes
    first, each block shuffled. Draw order (fixed): CMOS permutation, CMOS flips, SMOS permutation.
    """
    if not rater or any(c in rater for c in "\r\n"):
        raise ValueError(f"rater id must be a non-empty single line, got {rater!r}")
    if reference not in conditions:
        raise ValueError(f"reference {reference!r} is not one of the conditions {list(conditions)}")
    if len(set(conditions)) != len(conditions) or not utts:
        raise ValueError(f"conditions must differ and utterances be given, got {list(conditions)}, {list(utts)}")
    bad = set(kinds) - {CMOS, SMOS}
    if bad:
        raise ValueError(f"unknown trial kinds {sorted(bad)}; choose from {[CMOS, SMOS]}")
    rng = np.random.default_rng(trial_seed(test, rater))
    trials: list[Trial] = []
    if CMOS in kinds:
        pairs = [(c, u) for c in conditions if c != reference for u in utts]
        order = rng.permutation(len(pairs))
        flips = rng.random(len(pairs)) < 0.5
        for k, f in zip(order, flips):
            c, u = pairs[k]
            trials.append(Trial(CMOS, u, c, *((c, reference) if f else (reference, c))))
    if SMOS in kinds:
        singles = [(c, u) for c in conditions for u in utts]
        trials += [Trial(SMOS, singles[k][1], singles[k][0], singles[k][0]) for k in rng.permutation(len(singles))]
    return trials


def next_trial(trials: Sequence[Trial], ratings: pd.DataFrame, rater: str) -> int | None:
    """Position in ``trials`` of the first one ``rater`` has not answered (None: all answered)."""
    done = set(ratings.loc[ratings["rater"] == rater, "trial"]) if len(ratings) else set()
    return next((i for i, t in enumerate(trials) if t.key not in done), None)


def rating_row(test: str, rater: str, trial: Trial, answer: int, seconds: float = float("nan")) -> dict[str, Any]:
    """The :data:`COLUMNS` row of one answer; ``score`` is the rated condition's (CMOS sign-corrected)."""
    scale = CMOS_SCALE if trial.kind == CMOS else SMOS_SCALE
    if isinstance(answer, bool) or int(answer) != answer or answer not in scale:
        raise ValueError(f"a {trial.kind.upper()} answer must be one of {list(scale)}, got {answer!r}")
    score = -answer if trial.flipped else answer
    return {"test": test, "rater": rater, "trial": trial.key, "kind": trial.kind, "utt": trial.utt, "a": trial.a,
            "b": trial.b, "condition": trial.condition, "answer": int(answer), "score": int(score),
            "seconds": round(float(seconds), 3),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the tests replace this to kill a writer half-way)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RatingStore:
    """``ratings.csv`` of one test: :meth:`append` one answer atomically, :meth:`read` them all."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row (the keys of :data:`COLUMNS`): old rows + this one to a temporary file,
        fsync'd, renamed over ``ratings.csv`` under the lock."""
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{self.path}: a rating row needs {missing}")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([row[c] for c in COLUMNS])
        with self._locked():
            for p in self.path.parent.glob(f".{self.path.name}.*"):  # a killed writer's leftover
                if is_temp_file(p):
                    p.unlink(missing_ok=True)
            old = self.path.read_bytes() if self.path.exists() else (",".join(COLUMNS) + "\n").encode()
            with atomic_path(self.path) as tmp:
                _write_bytes(tmp, old + buf.getvalue().encode())
            _fsync_dir(self.path.parent)

    def read(self) -> pd.DataFrame:
        """Every rating (columns :data:`COLUMNS`; empty if none yet)."""
        if not self.path.exists():
            return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
        df = pd.read_csv(self.path, dtype={c: str for c in ("test", "rater", "trial", "kind", "utt", "a", "b",
                                                            "condition", "time")},
                         keep_default_na=False, na_values={"seconds": ["nan", ""]})  # "" stays "" elsewhere
        if list(df.columns) != COLUMNS:
            raise ValueError(f"{self.path}: columns {list(df.columns)}, expected {COLUMNS}")
        return df


def audio_name(test: str, *parts: str) -> str:
    """An opaque file name for a stimulus (a hash: the condition's label is not in it)."""
    return hashlib.sha256("\0".join((test,) + parts).encode()).hexdigest()[:16] + ".wav"


@dataclasses.dataclass
class ListeningTest:
    """A prepared test folder (see the module docstring): its manifest, stimuli and ratings.

    ``conditions``: opaque id -> label; ``reference``: the id CMOS compares with; ``utts``: ids;
    ``audio``: ``"<condition>/<utt>"`` and ``"prompt/<utt>"`` -> file under ``audio/``.
    """
    folder: Path
    name: str
    conditions: dict[str, str]
    reference: str
    utts: list[str]
    audio: dict[str, str]
    kinds: tuple[str, ...] = (CMOS, SMOS)
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def store(self) -> RatingStore:
        return RatingStore(self.folder / RATINGS)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ListeningTest":
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: prepare the test first (notebooks/09_listening_test)")
        m = json.loads(path.read_text())
        return cls(folder, m["name"], m["conditions"], m["reference"], m["utts"], m["audio"], tuple(m["kinds"]),
                   m.get("spec", {}))

    def save(self) -> None:
        """Write the manifest (atomically; write it after the audio, so a manifest means a complete test)."""
        missing = [k for k in self.audio.values() if not (self.folder / "audio" / k).exists()]
        if missing:
            raise FileNotFoundError(f"{self.folder}/audio: {len(missing)} stimuli missing, e.g. {missing[0]}")
        atomic_write_json(self.folder / MANIFEST, {"name": self.name, "conditions": self.conditions,
                                                   "reference": self.reference, "utts": self.utts,
                                                   "audio": self.audio, "kinds": list(self.kinds), "spec": self.spec})

    def trials(self, rater: str) -> list[Trial]:
        return design_trials(self.name, rater, list(self.conditions), self.reference, self.utts, self.kinds)

    def wav(self, condition: str, utt: str) -> bytes:
        """The WAV bytes of a stimulus (``condition`` an id, or ``"prompt"``)."""
        return (self.folder / "audio" / self.audio[f"{condition}/{utt}"]).read_bytes()

    def ratings(self) -> pd.DataFrame:
        """The ratings with the condition's label in ``label``."""
        df = self.store.read()
        df["label"] = df["condition"].map(self.conditions)
        return df

    def answer(self, rater: str, trial: Trial, answer: int, seconds: float = float("nan")) -> None:
        self.store.append(rating_row(self.name, rater, trial, answer, seconds))


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------

def bootstrap(ratings: pd.DataFrame, value: str = "score", group: str = "condition", n_boot: int = 2000,
              seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Crossed bootstrap of per-group means over raters and utterances.

    Returns (groups, means (G,), replicates (n_boot, G)); a replicate in which a group drew no
    rating is NaN there. Each replicate weights rating k by ``c_rater[r_k] * c_utt[u_k]``, the
    multinomial counts of its rater and utterance.
    """
    groups = sorted(ratings[group].unique())
    if not groups:
        return [], np.zeros(0), np.zeros((n_boot, 0))
    raters, r_idx = np.unique(ratings["rater"].to_numpy(str), return_inverse=True)
    utts, u_idx = np.unique(ratings["utt"].to_numpy(str), return_inverse=True)
    g_idx = np.searchsorted(groups, ratings[group].to_numpy(str))
    x = ratings[value].to_numpy(float)
    onehot = np.zeros((len(x), len(groups)))
    onehot[np.arange(len(x)), g_idx] = 1.0
    means = (x @ onehot) / onehot.sum(0)
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, len(groups)))
    for s in range(0, n_boot, 500):  # chunks keep the (B, n) weight matrix small
        b = min(500, n_boot - s)
        c_r = rng.multinomial(len(raters), np.full(len(raters), 1 / len(raters)), size=b)
        c_u = rng.multinomial(len(utts), np.full(len(utts), 1 / len(utts)), size=b)
        w = c_r[:, r_idx] * c_u[:, u_idx]  # (b, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps[s: s + b] = ((w * x) @ onehot) / (w @ onehot)
    return list(groups), means, reps


def _interval(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    q = (1 - level) / 2
    return np.nanquantile(reps, q, axis=0), np.nanquantile(reps, 1 - q, axis=0)


def analyse(ratings: pd.DataFrame, labels: Mapping[str, str] | None = None, n_boot: int = 2000, seed: int = 0,
            level: float = 0.95) -> dict[str, pd.DataFrame]:
    """Per condition CMOS and SMOS with bootstrap intervals, and every pairwise difference.

    ``ratings``: :data:`COLUMNS` rows; ``labels``: condition id -> name shown in the tables.
    Returns ``{"cmos", "smos"}``: one row per rated condition (``n``, ``raters``, ``mean``, ``lo``,
    ``hi``; CMOS also ``significant``: the interval excludes 0, i.e. differs from the reference)
    and ``{"cmos_pairs", "smos_pairs"}``: ``a``, ``b``, ``diff`` = mean(a) - mean(b), ``lo``,
    ``hi``, ``significant`` (the interval excludes 0). Empty tables when there are no ratings.
    """
    labels = dict(labels or {})
    out: dict[str, pd.DataFrame] = {}
    for kind in (CMOS, SMOS):
        df = ratings[ratings["kind"] == kind] if len(ratings) else ratings
        groups, means, reps = bootstrap(df, n_boot=n_boot, seed=seed) if len(df) else ([], np.zeros(0), None)
        rows = []
        if groups:
            lo, hi = _interval(reps, level)
            for g, m, a, b in zip(groups, means, lo, hi):
                sel = df[df["condition"] == g]
                row = {"condition": labels.get(g, g), "n": len(sel), "raters": sel["rater"].nunique(),
                       "mean": float(m), "lo": float(a), "hi": float(b)}
                if kind == CMOS:
                    row["significant"] = bool(a > 0 or b < 0)
                rows.append(row)
        out[kind] = pd.DataFrame(rows, columns=["condition", "n", "raters", "mean", "lo", "hi"]
                                 + (["significant"] if kind == CMOS else []))
        pairs = []
        for i, j in itertools.combinations(range(len(groups)), 2):
            lo, hi = _interval(reps[:, i] - reps[:, j], level)
            pairs.append({"a": labels.get(groups[i], groups[i]), "b": labels.get(groups[j], groups[j]),
                          "diff": float(means[i] - means[j]), "lo": float(lo), "hi": float(hi),
                          "significant": bool(lo > 0 or hi < 0)})
        out[f"{kind}_pairs"] = pd.DataFrame(pairs, columns=["a", "b", "diff", "lo", "hi", "significant"])
    return out
