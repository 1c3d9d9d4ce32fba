"""Fixed-noise evaluation: every system sees the same utterances, prompts and noise ``z_0``.

An :class:`EvalSet` is built once (deterministic from its seed); :func:`generate` runs any
velocity model over any ``time_grid`` on it; :func:`nfe_sweep` evaluates many
(system, schedule, NFE) points into one table, with the intrinsic metrics and the distance
to a reference output on identical noise. Audio judges plug in through ``judges``.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from imf.flow import schedules
from imf.flow.solvers import Guided, sample
from imf.eval.evalset import EvalSet
from imf.eval.metrics import intrinsic_metrics, noise_correlation
from imf.eval.systems import System


@torch.no_grad()
def generate(model: Callable[..., Tensor], es: EvalSet, time_grid: Tensor, method: str = "euler",
             batch_size: int = 32) -> tuple[Tensor, int, float]:
    """Sample every utterance of ``es`` from its fixed noise. Returns (x (N, C, T) normalised,
    model calls per utterance batch, seconds)."""
    outs, nfe, t0 = [], 0, time.perf_counter()
    for s in range(0, len(es), batch_size):
        sl = slice(s, s + batch_size)
        cond = {k: v[sl] for k, v in es.cond.items()}
        x, nfe = sample(model, es.z_0[sl], time_grid, cond, method=method)
        outs.append(x * es.mask[sl, None])
    return torch.cat(outs), nfe, time.perf_counter() - t0


def nfe_sweep(es: EvalSet, points: Sequence[tuple[System, int]], reference: Tensor | tuple[System, int] | None = None,
              judges: Callable[[EvalSet, Tensor], dict[str, float]] | None = None, batch_size: int = 32,
              progress: bool = True, keep: bool = False) -> tuple[pd.DataFrame, dict[tuple[str, int], Tensor]]:
    """Evaluate each (system, nfe) point on ``es``.

    ``reference``: normalised mel (N, C, T), or a (system, nfe) point generated first, whose
    output on the same noise gives the ``dist_ref`` column; ``noise_corr`` correlates each
    output's fine structure with its noise (see :mod:`imf.eval.metrics`). Returns a table (one row per
    point) and, if ``keep``, the generated normalised mels keyed by (system name, nfe).
    """
    real = es.real_logmel()
    if isinstance(reference, tuple):
        system, nfe = reference
        reference, _, _ = generate(system.model, es, system.grid(nfe), system.method, batch_size)
    ref = None if reference is None else es.corpus.denormalize(reference) * es.mask[:, None]
    rows, kept = [], {}
    for system, nfe in tqdm(points, desc="evaluate", disable=not progress):
        grid = system.grid(nfe)
        x, calls, secs = generate(system.model, es, grid, system.method, batch_size)
        gen = es.corpus.denormalize(x) * es.mask[:, None]
        row = {"system": system.name, "schedule": system.schedule, "nfe": calls, "seconds": secs,
               **intrinsic_metrics(gen, real, es.mask, ref), "noise_corr": noise_correlation(x, es.z_0, es.mask)}
        if judges is not None:
            row.update(judges(es, x))
        row["grid"] = " ".join(f"{v:.3f}" for v in grid.tolist())
        rows.append(row)
        if keep:
            kept[(system.name, nfe)] = x
    return pd.DataFrame(rows), kept


def grid_metric(model: Callable[..., Tensor], es: EvalSet, kind: str = "neg_dist_ref", reference: Tensor | None = None,
                judges: Callable[[EvalSet, Tensor], dict[str, float]] | None = None, batch_size: int = 32,
                method: str = "euler") -> Callable[[Tensor], float]:
    """``f(time_grid) -> float`` (higher is better) for O3S, on the fixed noise of ``es``.

    kinds: ``neg_dist_ref`` (minus the distance to ``reference``, a normalised mel on the same
    noise, e.g. the guided 32-NFE teacher), ``fs_closeness`` (``-|log fs_ratio|``), or the
    name of a column returned by ``judges(es, x)`` (e.g. ``sim``), or ``neg_<column>`` for a
    lower-is-better judge column (e.g. ``neg_wer``).
    """
    import math

    real = es.real_logmel()
    ref = None if reference is None else es.corpus.denormalize(reference) * es.mask[:, None]
    if kind == "neg_dist_ref" and ref is None:
        raise ValueError("grid_metric(kind='neg_dist_ref') needs a reference output")

    def f(time_grid: Tensor) -> float:
        x, _, _ = generate(model, es, time_grid, method, batch_size)
        gen = es.corpus.denormalize(x) * es.mask[:, None]
        if kind == "neg_dist_ref":
            return -intrinsic_metrics(gen, real, es.mask, ref)["dist_ref"]
        if kind == "fs_closeness":
            return -abs(math.log(intrinsic_metrics(gen, real, es.mask)["fs_ratio"]))
        if judges is None:
            raise ValueError(f"metric {kind!r} needs judges")
        scores = judges(es, x)
        name = kind[4:] if kind.startswith("neg_") else kind
        if name not in scores:
            raise KeyError(f"judges returned {sorted(scores)}, not {name!r}")
        return -scores[name] if kind.startswith("neg_") else scores[name]

    return f
