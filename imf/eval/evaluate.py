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

from .. import schedules
from ..solvers import Guided, sample
from .metrics import intrinsic_metrics, noise_correlation


@dataclasses.dataclass
class EvalSet:
    """A padded batch of evaluation utterances with their fixed noise.

    ids: N utterance ids; x1: (N, C, T) normalised real mel; mask: (N, T); cond: batch-first
    conditioning; z_0: (N, C, T) noise from the eval generator; corpus: for (de)normalising.
    """
    ids: list[str]
    x1: Tensor
    mask: Tensor
    cond: dict[str, Tensor]
    z_0: Tensor
    corpus: Any
    texts: list[str] = dataclasses.field(default_factory=list)
    speakers: Tensor | None = None
    prompt_ids: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def real_logmel(self) -> Tensor:
        return self.corpus.denormalize(self.x1) * self.mask[:, None]

    def subset(self, idx: Sequence[int]) -> "EvalSet":
        idx_t = torch.as_tensor(list(idx))
        return EvalSet([self.ids[i] for i in idx], self.x1[idx_t], self.mask[idx_t],
                       {k: v[idx_t] for k, v in self.cond.items()}, self.z_0[idx_t], self.corpus,
                       [self.texts[i] for i in idx] if self.texts else [],
                       None if self.speakers is None else self.speakers[idx_t],
                       [self.prompt_ids[i] for i in idx] if self.prompt_ids else [])


def make_eval_set(corpus, split: str = "test", n: int = 32, seed: int = 1234, max_frames: int = 256,
                  prompt_frames: int = 96) -> EvalSet:
    """``n`` utterances of ``split`` that fit whole in ``max_frames`` (so transcripts match the
    audio for WER), picked by a seeded shuffle; prompts are deterministic per (seed, id)."""
    from ..data import MelTokenDataset, collate

    ds = MelTokenDataset(corpus, split=split, max_frames=max_frames, prompt_frames=prompt_frames, crop="start",
                         normalize=True, seed=seed)
    if len(ds) == 0:
        raise ValueError(f"split {split!r} of corpus {corpus.root} is empty")
    g = torch.Generator().manual_seed(seed)
    frames = corpus.manifest.set_index("id")["n_frames"]
    fits = [i for i in torch.randperm(len(ds), generator=g).tolist() if frames[ds.ids[i]] <= max_frames]
    if not fits:
        raise ValueError(f"no utterance of split {split!r} fits in max_frames={max_frames}")
    order = fits[:n]
    batch = collate([ds[i] for i in order])
    z_0 = torch.randn(batch["x1"].shape, generator=g) * batch["mask"][:, None]
    cond = {k: batch[k] for k in ("tokens", "mask", "prompt", "prompt_mask")}
    return EvalSet(batch["ids"], batch["x1"], batch["mask"], cond, z_0, corpus, batch.get("texts", []),
                   batch.get("speaker"), batch.get("prompt_ids", []))


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


@dataclasses.dataclass
class System:
    """A named sampler: a velocity model (guided or not) and how to make its grid for an NFE."""
    name: str
    model: Callable[..., Tensor]
    schedule: str = "uniform"  # uniform | sway | cosine | epss | custom
    grids: dict[int, Tensor] = dataclasses.field(default_factory=dict)  # explicit grids per NFE (custom)
    method: str = "euler"

    def grid(self, nfe: int) -> Tensor:
        if nfe in self.grids:
            return self.grids[nfe]
        return schedules.make_grid(self.schedule, nfe)


def guided(model, w: float) -> Callable[..., Tensor]:
    """``model`` with guidance ``w`` (``w = 1``: the plain conditional model)."""
    return model if w == 1.0 else Guided(model, w)


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
