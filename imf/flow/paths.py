"""The time convention of the whole package, stated once.

Time runs from noise to data: ``t = 0`` is noise ``z_0 ~ N(0, I)``, ``t = 1`` is data ``z_1``.

* path:              ``z_t = (1 - t) z_0 + t z_1``
* target velocity:   ``v = dz_t/dt = z_1 - z_0``
* average velocity:  ``u(z_t, t, r) = (z_r - z_t) / (r - t)``  for ``r > t``
* a student's jump:  ``z_r = z_t + (r - t) u(z_t, t, r)``

Published MeanFlow code runs time the other way (data at 0); convert with ``t -> 1 - t``.
"""
from __future__ import annotations

from torch import Tensor


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample time ``t`` of shape (B,) to broadcast against ``like`` (B, ...)."""
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    if t.shape != (like.shape[0],):
        raise ValueError(f"time must have shape (B,) = ({like.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(z_0: Tensor, z_1: Tensor, t: Tensor) -> Tensor:
    """``z_t = (1 - t) z_0 + t z_1``.  z_0, z_1: (B, ...); t: (B,) -> (B, ...)."""
    if z_0.shape != z_1.shape:
        raise ValueError(f"z_0 {tuple(z_0.shape)} and z_1 {tuple(z_1.shape)} differ in shape")
    tb = _bcast(t, z_0)
    return (1 - tb) * z_0 + tb * z_1


def target_velocity(z_0: Tensor, z_1: Tensor) -> Tensor:
    """``v = z_1 - z_0``, the conditional flow-matching target.  (B, ...) -> (B, ...)."""
    return z_1 - z_0


def sample_path(z_0: Tensor, z_1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """One entry point for the path: returns ``(z_t, v)``."""
    return interpolate(z_0, z_1, t), target_velocity(z_0, z_1)


def jump(z_t: Tensor, u: Tensor, t: Tensor, r: Tensor) -> Tensor:
    """``z_r = z_t + (r - t) u``: a step of length ``r - t`` along velocity ``u``.  t, r: (B,)."""
    return z_t + _bcast(r - t, z_t) * u


def average_velocity(z_t: Tensor, z_r: Tensor, t: Tensor, r: Tensor) -> Tensor:
    """``u = (z_r - z_t) / (r - t)``; the caller guarantees ``r > t``."""
    return (z_r - z_t) / _bcast(r - t, z_t)


def bcast_time(t: Tensor, like: Tensor) -> Tensor:
    """Public form of the (B,) -> (B, 1, ...) reshape used by losses."""
    return _bcast(t, like)
