"""A system to evaluate: a named velocity model (guided or not) and how it makes its time grid."""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import torch
from torch import Tensor

from imf.flow import schedules
from imf.flow.solvers import Guided, sample


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


@torch.no_grad()
def synthesize(system, z_0: Tensor, cond: Mapping[str, Tensor], time_grid: Tensor,
               model: Callable[..., Tensor] | None = None) -> Tensor:
    """Sample a :class:`~imf.models.token2wav.Token2Wav` latent along ``time_grid`` (Euler) and decode.

    ``z_0`` (B, latent_dim, T) noise, ``cond`` as :class:`~imf.models.dit.DiT1D`; ``model``
    overrides the generator (e.g. a :class:`~imf.flow.solvers.Guided` wrapper of it).
    Returns wav (B, T * stride).
    """
    x, _ = sample(system.generator if model is None else model, z_0, time_grid, cond)
    mask = cond.get("mask")
    if mask is not None:
        x = x * mask[:, None].to(x.dtype)
    return system.decode(x)
