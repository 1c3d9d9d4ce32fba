"""Samplers over any ``time_grid`` and classifier-free guidance as a model wrapper.

A velocity model is any callable ``model(x, *, t, r=None, cond) -> Tensor`` where
``x`` is (B, ...), ``t`` and ``r`` are (B,) and ``cond`` is a dict of batch-first tensors.
An instantaneous model (teacher) ignores ``r``; an average-velocity model (student)
returns ``u(x, t, r)`` and treats ``r=None`` as ``r = t``.

Nothing here imports a concrete model.
"""
from __future__ import annotations

from typing import Callable, Mapping, Protocol

import torch
from torch import Tensor

from imf.flow.paths import jump
from imf.flow.schedules import validate_grid

Cond = Mapping[str, Tensor]


class VelocityModel(Protocol):
    def __call__(self, x: Tensor, *, t: Tensor, r: Tensor | None = None, cond: Cond) -> Tensor: ...


def cat_cond_with_null(cond: Cond) -> dict[str, Tensor]:
    """Duplicate every batch-first tensor of ``cond`` and mark the second half as dropped.

    The model sees ``cond["drop"]`` (B,) bool and replaces the dropped rows' conditioning
    by its learned null condition. An existing ``drop`` is kept for the first half.
    """
    out: dict[str, Tensor] = {}
    b = None
    for k, v in cond.items():
        if k == "drop":
            continue
        out[k] = torch.cat([v, v], dim=0)
        b = v.shape[0]
    if b is None:
        raise ValueError("cond has no tensors to duplicate")
    first = cond.get("drop")
    first = torch.zeros(b, dtype=torch.bool) if first is None else first.to(torch.bool).cpu()
    device = next(iter(out.values())).device
    out["drop"] = torch.cat([first, torch.ones(b, dtype=torch.bool)]).to(device)
    return out


class Guided(torch.nn.Module):
    """Classifier-free guidance ``v = v_u + w (v_c - v_u)`` around any velocity model.

    Conditional and unconditional passes run as ONE batched call (2B rows), so one call of
    the wrapper is one model call. ``w = 1`` is the conditional model; ``w = 0`` unconditional.
    """

    def __init__(self, model: Callable[..., Tensor], w: float):
        super().__init__()
        self.model = model
        self.w = float(w)

    def forward(self, x: Tensor, *, t: Tensor, r: Tensor | None = None, cond: Cond) -> Tensor:
        b = x.shape[0]
        if self.w == 1.0:
            return self.model(x, t=t, r=r, cond=cond)
        out = self.model(
            torch.cat([x, x]), t=torch.cat([t, t]), r=None if r is None else torch.cat([r, r]),
            cond=cat_cond_with_null(cond),
        )
        v_c, v_u = out[:b], out[b:]
        return v_u + self.w * (v_c - v_u)


def guide(v_c: Tensor, v_u: Tensor, w: float) -> Tensor:
    """The guidance formula on its own: ``v_u + w (v_c - v_u)``."""
    return v_u + w * (v_c - v_u)


def _times(t: Tensor, b: int, like: Tensor) -> Tensor:
    return t.to(like.dtype).expand(b).to(like.device)


@torch.no_grad()
def sample(
    model: VelocityModel,
    z_0: Tensor,
    time_grid: Tensor,
    cond: Cond,
    method: str = "euler",
    return_path: bool = False,
) -> tuple[Tensor, int] | tuple[Tensor, int, list[Tensor]]:
    """Integrate ``dx/dt = model(x, t)`` from ``z_0`` (noise, t=0) along ``time_grid`` to t=1.

    ``euler``: ``x_{k+1} = x_k + (t_{k+1} - t_k) model(x_k, t=t_k, r=t_{k+1})`` — for a
    teacher this is Euler, for an average-velocity student it is its exact jump rule.
    ``midpoint``: second order, treating the model as instantaneous (``r=None``).

    Args:
        z_0: (B, ...) noise.  time_grid: (K+1,) increasing 0 -> 1.
    Returns:
        ``(x_1, nfe)`` with ``nfe`` the number of model calls (K for euler, 2K for midpoint),
        plus the list of intermediate states if ``return_path``.
    """
    g = validate_grid(time_grid)
    b = z_0.shape[0]
    x = z_0
    nfe = 0
    path = [x]
    for k in range(len(g) - 1):
        t = _times(g[k], b, x)
        r = _times(g[k + 1], b, x)
        if method == "euler":
            v = model(x, t=t, r=r, cond=cond)
            nfe += 1
        elif method == "midpoint":
            h = (r - t) / 2
            v1 = model(x, t=t, r=None, cond=cond)
            x_mid = jump(x, v1, t, t + h)
            v = model(x_mid, t=t + h, r=None, cond=cond)
            nfe += 2
        else:
            raise ValueError(f"unknown method {method!r}; choose 'euler' or 'midpoint'")
        x = jump(x, v, t, r)
        if return_path:
            path.append(x)
    if return_path:
        return x, nfe, path
    return x, nfe


def nfe_for(time_grid: Tensor, method: str = "euler") -> int:
    """Model calls :func:`sample` will make on this grid."""
    k = len(validate_grid(time_grid)) - 1
    return {"euler": k, "midpoint": 2 * k}[method]
