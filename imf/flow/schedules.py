"""Sampling schedules are data: strictly increasing ``time_grid`` tensors from 0 to 1.

NFE of a first-order sampler is ``len(time_grid) - 1``; it is always derived from the grid.
Every grid here goes through the same samplers; O3S writes its grids with :func:`save_grid`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from imf.core.runtime import atomic_write_json

# Published EPSS grids (F5-TTS), in units of 1/32.
_EPSS_32 = {
    5: [0, 2, 4, 8, 16, 32],
    6: [0, 2, 4, 6, 8, 16, 32],
    7: [0, 2, 4, 6, 8, 16, 24, 32],
}


class GridError(ValueError):
    """A time grid is not a strictly increasing sequence from 0 to 1."""


def validate_grid(time_grid: Tensor | Sequence[float], name: str = "time_grid", min_gap: float = 0.0) -> Tensor:
    """Return the grid as a float64 1-D tensor, or raise :class:`GridError` saying what is wrong."""
    try:
        g = torch.as_tensor(time_grid, dtype=torch.float64).flatten().clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise GridError(f"{name}: expected a sequence of numbers, got {_short(time_grid)} ({e})") from None
    if g.numel() < 2:
        raise GridError(f"{name}: needs at least 2 points (0 and 1), got {g.tolist()}")
    if not torch.isfinite(g).all():
        raise GridError(f"{name}: non-finite values in {g.tolist()}")
    if abs(g[0].item()) > 1e-9 or abs(g[-1].item() - 1.0) > 1e-9:
        raise GridError(f"{name}: must start at 0 and end at 1, got {g[0].item()} ... {g[-1].item()}")
    d = g[1:] - g[:-1]
    if not (d > min_gap).all():
        raise GridError(f"{name}: must be strictly increasing (min gap {min_gap}), got {g.tolist()}")
    g[0], g[-1] = 0.0, 1.0
    return g


def nfe_of(time_grid: Tensor) -> int:
    """Number of steps of a first-order sampler on this grid."""
    return int(torch.as_tensor(time_grid).numel()) - 1


def uniform(nfe: int) -> Tensor:
    """``[0, 1/n, ..., 1]`` with ``n = nfe`` steps."""
    _check_nfe(nfe)
    return torch.linspace(0, 1, nfe + 1, dtype=torch.float64)


def sway(nfe: int, s: float = -1.0) -> Tensor:
    """F5-TTS sway sampling: ``t + s (cos(pi t / 2) - 1 + t)`` on a uniform grid.

    ``s < 0`` puts more steps near noise (t = 0). ``s`` must lie in [-1, 2/pi ... ] so the
    map stays increasing; a non-monotone result raises :class:`GridError`.
    """
    u = uniform(nfe)
    g = u + s * (torch.cos(math.pi / 2 * u) - 1 + u)
    return validate_grid(g, name=f"sway(nfe={nfe}, s={s})")


def cosine(nfe: int) -> Tensor:
    """``1 - cos(pi t / 2)``: denser steps near noise."""
    u = uniform(nfe)
    return validate_grid(1 - torch.cos(math.pi / 2 * u), name=f"cosine(nfe={nfe})")


def epss(nfe: int) -> Tensor:
    """Empirically pruned step sampling grids published with F5-TTS (5, 6 or 7 steps)."""
    if nfe not in _EPSS_32:
        raise GridError(f"epss: grids exist for nfe in {sorted(_EPSS_32)}, got nfe={nfe}")
    return torch.tensor(_EPSS_32[nfe], dtype=torch.float64) / 32


def _check_nfe(nfe: int) -> None:
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise GridError(f"nfe must be a positive int, got {nfe!r}")


def make_grid(kind: str, nfe: int, **kw: float) -> Tensor:
    """Grid by name: ``uniform``, ``sway``, ``cosine``, ``epss``, ``epss_raw`` (F5-TTS's tables),
    ``epss_f5`` (F5-TTS's tables with its sway on top, the grid its sampler integrates on)."""
    makers = {"uniform": uniform, "sway": sway, "cosine": cosine, "epss": epss, "epss_raw": epss_raw,
              "epss_f5": epss_f5}
    if kind not in makers:
        raise GridError(f"unknown schedule {kind!r}; choose one of {sorted(makers)} or load a JSON grid")
    return makers[kind](nfe, **kw)


def save_grid(path: str | os.PathLike, time_grid: Tensor, **meta: object) -> None:
    """Write ``{"time_grid": [...], "nfe": n, **meta}`` atomically."""
    g = validate_grid(time_grid)
    atomic_write_json(path, {"time_grid": g.tolist(), "nfe": nfe_of(g), **meta})


def load_grid(path: str | os.PathLike) -> Tensor:
    """Read a grid written by :func:`save_grid` (or a bare JSON list)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GridError(f"{path}: cannot read a time grid ({e})") from e
    if isinstance(obj, dict):
        if "time_grid" not in obj:
            raise GridError(f"{path}: no 'time_grid' key (keys: {sorted(obj)}); expected "
                            '{"time_grid": [0, ..., 1], ...} as written by save_grid, or a bare list')
        obj = obj["time_grid"]
    if not isinstance(obj, list):
        raise GridError(f"{path}: the time grid must be a JSON list of numbers, got {_short(obj)}")
    return validate_grid(obj, name=str(path))


def _short(v: object) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


# ---------------------------------------------------------------------------------------
# F5-TTS's grids, exactly as its sampler builds them (appended; nothing above changes)
# ---------------------------------------------------------------------------------------
# Every EPSS grid F5-TTS defines (``f5_tts.model.utils.get_epss_timesteps``), in units of 1/32.
F5_EPSS = {
    5: [0, 2, 4, 8, 16, 32],
    6: [0, 2, 4, 6, 8, 16, 32],
    7: [0, 2, 4, 6, 8, 16, 24, 32],
    10: [0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32],
    12: [0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32],
    16: [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32],
}
F5_SWAY = -1.0  # F5-TTS's default sway coefficient (its CFM.sample / infer defaults)
F5_CFG_STRENGTH = 2.0  # F5-TTS's guidance s in pred + (pred - null) s; our w = s + 1 = 3


def epss_raw(nfe: int) -> Tensor:
    """F5-TTS's EPSS table for ``nfe`` in {5, 6, 7, 10, 12, 16}, WITHOUT sway: ``table / 32``.

    This is the grid F5-TTS's sampler starts from, not the one it integrates on (see
    :func:`epss_f5`). For 5/6/7 steps it equals :func:`epss`.
    """
    _check_nfe(nfe)
    if nfe not in F5_EPSS:
        raise GridError(f"epss_raw: F5-TTS defines EPSS grids for nfe in {sorted(F5_EPSS)}, got nfe={nfe}")
    return torch.tensor(F5_EPSS[nfe], dtype=torch.float64) / 32


def apply_sway(time_grid: Tensor | Sequence[float], s: float = F5_SWAY) -> Tensor:
    """Sway on top of any grid, as F5-TTS's ``CFM.sample`` does: ``t + s (cos(pi t / 2) - 1 + t)``.

    (B,)-free: time_grid (K+1,) -> (K+1,) float64. ``s = -1`` gives ``1 - cos(pi t / 2)``.
    A non-increasing result raises :class:`GridError`.
    """
    g = validate_grid(time_grid)
    return validate_grid(g + s * (torch.cos(math.pi / 2 * g) - 1 + g), name=f"sway(s={s}) of {g.tolist()}")


def epss_f5(nfe: int, sway: float | None = F5_SWAY) -> Tensor:
    """The grid F5-TTS's ``CFM.sample(steps=nfe, sway_sampling_coef=sway)`` integrates on.

    F5-TTS takes its EPSS table when it defines one for ``nfe`` (5, 6, 7, 10, 12, 16) and the
    uniform grid otherwise, then applies sway on top (``sway=None``: no sway, as F5's
    ``sway_sampling_coef=None``). Its default 7-step grid is therefore
    ``[0, .0048, .0192, .0431, .0761, .2929, .6173, 1]``, not the raw table
    (:func:`epss_raw`). (K+1,) float64.
    """
    _check_nfe(nfe)
    g = epss_raw(nfe) if nfe in F5_EPSS else uniform(nfe)
    return g if sway is None else apply_sway(g, sway)
