"""A system to evaluate: a named velocity model (guided or not), how it makes its time grid and,
for a waveform system, how its output becomes audio.

One shape for every row of every table: token2mel teachers and students (mels, vocoded
outside), Token2Wav generators (``decode``: latents -> waveform) and reconstruction
references such as the VAE oracle (``reconstruct``: the eval set's real audio -> waveform, no
sampling). A point to evaluate or time is a ``(system, nfe)`` pair, as in
:func:`imf.eval.sweep.nfe_sweep` and :func:`imf.eval.speed.rtf_table`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from imf.eval.evalset import EvalSet
from imf.flow import schedules
from imf.flow.solvers import Guided, sample


@dataclasses.dataclass
class System:
    """A named sampler: a velocity model (guided or not) and how to make its grid for an NFE.

    ``decode`` (waveform systems): standardised latent (B, C, T) -> wav (B, T * stride).
    ``reconstruct`` (reference rows, ``model`` may be None): eval set -> wav (N, samples) without
    sampling, e.g. the VAE's reconstruction of the real audio; its NFE is 0.
    """
    name: str
    model: Callable[..., Tensor] | None
    schedule: str = "uniform"  # uniform | sway | cosine | epss | custom
    grids: dict[int, Tensor] = dataclasses.field(default_factory=dict)  # explicit grids per NFE (custom)
    method: str = "euler"
    decode: Callable[[Tensor], Tensor] | None = None  # latent (B, C, T) -> wav (B, N): a waveform system
    reconstruct: Callable[[EvalSet], Tensor] | None = None  # eval set -> wav (N, samples): a reference row

    def __post_init__(self) -> None:
        if self.model is None and self.reconstruct is None:
            raise ValueError(f"system {self.name!r}: give a velocity model, or a reconstruct hook for a reference row")

    def grid(self, nfe: int) -> Tensor:
        if nfe in self.grids:
            return self.grids[nfe]
        return schedules.make_grid(self.schedule, nfe)


def guided(model, w: float) -> Callable[..., Tensor]:
    """``model`` with guidance ``w`` (``w = 1``: the plain conditional model)."""
    return model if w == 1.0 else Guided(model, w)


@torch.no_grad()
def synthesize(system: System, z_0: Tensor, time_grid: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
    """Sample a latent from ``z_0`` along ``time_grid`` with ``system.model``, zero its padded
    frames (``cond["mask"]``) and decode it: ``system.decode(sample(model, z_0, time_grid, cond))``.

    ``z_0`` (B, C, T) noise, ``cond`` batch-first (e.g. :class:`~imf.models.dit.DiT1D`'s).
    Returns wav (B, T * stride).
    """
    if system.decode is None:
        raise ValueError(f"system {system.name!r} has no decode: it makes no waveform (vocode its mels instead)")
    x, _ = sample(system.model, z_0, time_grid, cond, method=system.method)
    mask = cond.get("mask")
    if mask is not None:
        x = x * mask[:, None].to(x.dtype)
    return system.decode(x)


@torch.no_grad()
def waveforms(points: Sequence[tuple[System, int]], es: EvalSet) -> dict[str, list[Tensor]]:
    """Every waveform system's audio on the eval set (batched, on its fixed noise).

    ``points``: ``(system, nfe)``; each name once. Returns name -> list of (n_samples_i,)
    waveforms, clamped to [-1, 1]. ``es`` must be a waveform eval set (``n_samples``).
    """
    names = [s.name for s, _ in points]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must differ, got {names}")
    if not es.n_samples:
        raise ValueError("waveforms needs a waveform eval set (imf.eval.evalset.make_latent_eval_set)")
    out = {}
    for system, nfe in points:
        if system.reconstruct is not None:
            wav = system.reconstruct(es)
        else:
            wav = synthesize(system, es.z_0, system.grid(nfe), es.cond)
        out[system.name] = [wav[i, :n].float().clamp(-1, 1) for i, n in enumerate(es.n_samples)]
    return out
