"""Fixed-noise evaluation: every system sees the same utterances, prompts and noise ``z_0``.

An :class:`EvalSet` is built once (deterministic from its seed); :func:`generate` runs any
velocity model over any ``time_grid`` on it; :func:`nfe_sweep` evaluates many
(system, schedule, NFE) points into one table, with the intrinsic metrics and the distance
to a reference output on identical noise. Audio judges plug in through ``judges``.

Under ``torchrun`` (:mod:`imf.core.distributed`) :func:`generate` — and so :func:`nfe_sweep`,
:func:`grid_metric` and O3S on top of it — shards the utterances: each process samples its
contiguous block of the set from the set's own fixed noise and the blocks are gathered, so every
process returns all N outputs, equal (up to float rounding) to a one-process run.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Container, Sequence

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from imf.core import distributed
from imf.flow.solvers import sample
from imf.eval.evalset import EvalSet
from imf.eval.samples import SampleCache
from imf.eval.metrics import (intrinsic_metrics, intrinsic_per_utterance, noise_correlation, objective_column,
                              objective_score)
from imf.eval.systems import System

INTRINSIC = ("dist_ref", "fs_ratio", "gv_ratio")  # columns of imf.eval.metrics.intrinsic_metrics (no judges needed)


@torch.no_grad()
def generate(model: Callable[..., Tensor], es: EvalSet, time_grid: Tensor, method: str = "euler",
             batch_size: int = 32, progress: bool = False, shard: bool = True,
             cache: SampleCache | None = None) -> tuple[Tensor, int, float]:
    """Sample every utterance of ``es`` from its fixed noise. Returns (x (N, C, T) normalised,
    model calls per utterance batch, seconds). ``progress``: a transient bar over the batches
    (shown only when there are several; it sits under an outer bar such as :func:`nfe_sweep`'s).

    ``shard``: under torchrun, this process samples only its block of utterances
    (:func:`imf.core.distributed.shard_range`) and gathers the others' (module docstring).
    ``cache``: outputs already sampled with the same weights, grid, solver and set are read back
    (:class:`imf.eval.samples.SampleCache`; their ``seconds`` are the original sampling's)."""
    key = None if cache is None else cache.key(model, es, time_grid, method)
    hit = None if cache is None else cache.get(key)
    if hit is not None:
        return hit
    x, nfe, seconds = _generate(model, es, time_grid, method, batch_size, progress, shard)
    if cache is not None:
        cache.put(key, x, nfe, seconds)
    return x, nfe, seconds


def _generate(model: Callable[..., Tensor], es: EvalSet, time_grid: Tensor, method: str, batch_size: int,
              progress: bool, shard: bool) -> tuple[Tensor, int, float]:
    own = distributed.shard_range(len(es)) if shard else range(len(es))
    outs, nfe, t0 = [], 0, time.perf_counter()
    starts = range(own.start, own.stop, batch_size)
    for s in tqdm(starts, desc="batches", unit="batch", leave=False, disable=not progress or len(starts) < 2):
        sl = slice(s, min(s + batch_size, own.stop))
        cond = {k: v[sl] for k, v in es.cond.items()}
        x, nfe = sample(model, es.z_0[sl], time_grid, cond, method=method)
        outs.append(x * es.mask[sl, None])
    x = torch.cat(outs) if outs else es.z_0[:0]
    if shard and distributed.active():
        x = distributed.gather_rows(x)
        nfe = max(distributed.all_gather_objects(nfe))  # a process with no utterances made no calls
    return x, nfe, time.perf_counter() - t0


def nfe_sweep(es: EvalSet, points: Sequence[tuple[System, int]], reference: Tensor | tuple[System, int] | None = None,
              judges: Callable[[EvalSet, Tensor], dict[str, float]] | None = None, batch_size: int = 32,
              progress: bool = True, keep: bool = False, cache: SampleCache | None = None,
              judged: Container[tuple[str, int]] | None = None) -> tuple[pd.DataFrame, dict[tuple[str, int], Tensor]]:
    """Evaluate each (system, nfe) point on ``es``.

    ``reference``: normalised mel (N, C, T), or a (system, nfe) point generated first, whose
    output on the same noise gives the ``dist_ref`` column (that point, listed in ``points`` too — the same
    ``System`` object —, is sampled once); ``noise_corr`` correlates each
    output's fine structure with its noise (see :mod:`imf.eval.metrics`). Returns a table (one row per
    point) and, if ``keep``, the generated normalised mels keyed by (system name, nfe). ``cache``: see
    :func:`generate`. ``judged``: the (system name, nfe) points ``judges`` score (None: every point); the other
    rows have the intrinsic metrics only (the audio judges cost far more than sampling a small model).
    """
    real = es.real_logmel()
    ref_point = reference if isinstance(reference, tuple) else None
    shared = ref_point is not None and any(s is ref_point[0] and n == ref_point[1] for s, n in points)
    bar = tqdm(total=len(points) + (ref_point is not None and not shared), desc="evaluate", unit="point",
               disable=not progress)
    if ref_point is not None:
        system, nfe = ref_point
        bar.set_postfix_str(f"reference: {system.name}, {nfe} NFE")
        ref_out = generate(system.model, es, system.grid(nfe), system.method, batch_size, progress, cache=cache)
        reference = ref_out[0]
        if not shared:
            bar.update(1)
    ref = None if reference is None else es.corpus.denormalize(reference) * es.mask[:, None]
    rows, kept = [], {}
    for system, nfe in points:
        bar.set_postfix_str(f"{system.name}, {nfe} NFE")
        grid = system.grid(nfe)
        if ref_point is not None and system is ref_point[0] and nfe == ref_point[1]:
            x, calls, secs = ref_out  # the reference point is sampled once
        else:
            x, calls, secs = generate(system.model, es, grid, system.method, batch_size, progress, cache=cache)
        gen = es.corpus.denormalize(x) * es.mask[:, None]
        row = {"system": system.name, "schedule": system.schedule, "nfe": calls, "seconds": secs,
               **intrinsic_metrics(gen, real, es.mask, ref), "noise_corr": noise_correlation(x, es.z_0, es.mask)}
        if judges is not None and (judged is None or (system.name, nfe) in judged):
            row.update(judges(es, x))
        row["grid"] = " ".join(f"{v:.3f}" for v in grid.tolist())
        rows.append(row)
        if keep:
            kept[(system.name, nfe)] = x
        bar.update(1)
    bar.close()
    return pd.DataFrame(rows), kept


def grid_metric(model: Callable[..., Tensor], es: EvalSet, kind: str = "neg_dist_ref", reference: Tensor | None = None,
                judges: Callable[[EvalSet, Tensor], dict[str, float]] | None = None, batch_size: int = 32,
                method: str = "euler") -> Callable[[Tensor], float]:
    """``f(time_grid) -> float`` (higher is better) for O3S, on the fixed noise of ``es``.

    ``kind`` names the objective (:func:`imf.eval.metrics.objective_score`, signs from
    :data:`imf.eval.metrics.HIGHER_IS_BETTER`): ``neg_dist_ref`` (or ``dist_ref``: minus the distance
    to ``reference``, a normalised mel (N, C, T) on the same noise, e.g. the guided 32-NFE teacher),
    ``fs_closeness`` (``-|log fs_ratio|``), or a column returned by ``judges(es, x)``: ``sim`` and
    ``mos`` as they are, ``wer`` (or ``neg_wer``) negated.
    """
    column = objective_column(kind)
    real = es.real_logmel()
    ref = None if reference is None else es.corpus.denormalize(reference) * es.mask[:, None]
    if column == "dist_ref" and ref is None:
        raise ValueError(f"grid_metric(kind={kind!r}) needs a reference output")
    if column not in INTRINSIC and judges is None:
        raise ValueError(f"metric {kind!r} needs judges")

    def f(time_grid: Tensor) -> float:
        x, _, _ = generate(model, es, time_grid, method, batch_size)
        if column in INTRINSIC:
            gen = es.corpus.denormalize(x) * es.mask[:, None]
            scores = intrinsic_metrics(gen, real, es.mask, ref if column == "dist_ref" else None)
        else:
            scores = judges(es, x)
        if column not in scores:
            raise KeyError(f"judges returned {sorted(scores)}, not {column!r}")
        return objective_score(kind, scores[column])

    return f


def utterance_scores(es: EvalSet, x: Tensor, column: str, reference: Tensor | None = None,
                     judges: Any = None) -> Tensor:
    """One metric ``column`` for each utterance of normalised mels ``x`` (N, C, T) generated on ``es``:
    (N,) float64, in the metric's own units (rank with :func:`imf.eval.metrics.objective_score`).

    Intrinsic columns (``dist_ref``, ``fs_ratio``, ``gv_ratio``) use each utterance's own frames;
    ``dist_ref`` needs ``reference``, a normalised mel (N, C, T) on the same noise. Any other column is
    a judge's, from :func:`judge_table` (NaN where the judge skips an utterance).
    """
    if column in INTRINSIC:
        if column == "dist_ref" and reference is None:
            raise ValueError("utterance_scores(column='dist_ref') needs a reference output")
        gen = es.corpus.denormalize(x) * es.mask[:, None]
        ref = None if reference is None else es.corpus.denormalize(reference) * es.mask[:, None]
        return intrinsic_per_utterance(gen, es.real_logmel(), es.mask, ref)[column]
    if judges is None:
        raise ValueError(f"utterance_scores(column={column!r}) needs judges")
    table = judge_table(judges, es, x)
    if column not in table:
        raise KeyError(f"judges scored {sorted(table.columns)}, not {column!r}")
    return torch.from_numpy(table[column].to_numpy(dtype="float64", copy=True))


def judge_table(judges: Any, es: EvalSet, x: Tensor) -> pd.DataFrame:
    """Per-utterance scores of an :class:`imf.eval.audio.AudioJudges` on normalised mels ``x`` (N, C, T):
    one row per utterance of ``es`` (index: utterance id), one column per judge (and their extra columns).

    As the judges' own summary: WER only on utterances of ``judges.wer_speakers`` (NaN on the others).
    """
    return judges.mel_table(es, x)
