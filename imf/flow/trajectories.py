"""Trajectory reuse: IntMeanFlow targets read off a stored guided-teacher trajectory (no teacher call).

The guided teacher is integrated ONCE per (utterance, noise) by Euler on a grid ``g_0 = 0 < ... < g_K = 1``
(:func:`euler_trajectory`): states ``Z_k = z(g_k)`` (K+1) and velocities ``V_k = v^cfg(Z_k, g_k)`` (K), with
``Z_{k+1} = Z_k + (g_{k+1} - g_k) V_k``. The continuous trajectory between grid points is the Euler polyline,
i.e. the linear interpolation of the stored states::

    z(s) = Z_k + (s - g_k) / h_k (Z_{k+1} - Z_k),   s in [g_k, g_{k+1}],  h_k = g_{k+1} - g_k.

A training pair ``(t, r)`` gives the input ``z_t = z(t)`` ON the trajectory and the target average velocity
``u = (z(r) - z(t)) / (r - t)`` (:func:`pair_targets`), computed as the overlap-weighted mean of the segment
slopes ``D_k = (Z_{k+1} - Z_k) / h_k`` (equal in exact arithmetic, free of the cancellation of a small
``r - t``); ``r = t`` gives the stored instantaneous velocity ``V_k`` of the segment holding ``t``.
``grid_only`` snaps ``t`` and ``r`` to grid points first (then ``z_t = Z_i`` and ``u = (Z_j - Z_i) / (g_j - g_i)``).

Beyond the paper (Wang et al. draw ``z_t`` on the data path and roll the teacher out per sample): a fraction
``p_fresh`` of the rows can still do that, see :func:`trajectory_loss`. Time convention: :mod:`imf.flow.paths`.
Nothing here imports a concrete model.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import torch
from torch import Tensor

from imf.core.config import Config, require
from imf.flow.objectives import (IMFConfig, index_cond, intmeanflow_loss, masked_mse, sample_intervals)
from imf.flow.paths import jump
from imf.flow.schedules import validate_grid

Cond = Mapping[str, Tensor]


@torch.no_grad()
def euler_trajectory(model: Callable[..., Tensor], z_0: Tensor, time_grid: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
    """Euler integration of ``model`` (e.g. ``Guided(teacher, w)``) from ``z_0`` along ``time_grid``, keeping
    every state and velocity; the same arithmetic as :func:`imf.flow.solvers.sample` (``method="euler"``).

    Args: z_0 (B, C, T); time_grid (K+1,). Returns: states (B, K+1, C, T), velocities (B, K, C, T).
    """
    g = validate_grid(time_grid)
    b = z_0.shape[0]
    x, states, velocities = z_0, [z_0], []
    for k in range(len(g) - 1):
        t = g[k].to(x.dtype).expand(b)
        r = g[k + 1].to(x.dtype).expand(b)
        v = model(x, t=t, r=r, cond=cond)
        x = jump(x, v, t, r)
        states.append(x)
        velocities.append(v)
    return torch.stack(states, 1), torch.stack(velocities, 1)


def _segment(s: Tensor, g: Tensor) -> Tensor:
    """(B,) long: the segment k with ``g_k <= s < g_{k+1}`` (s = 1 -> the last segment K - 1)."""
    k = torch.searchsorted(g, s.to(g.dtype).contiguous(), right=True) - 1
    return k.clamp(0, len(g) - 2)


def snap_to_grid(s: Tensor, time_grid: Tensor) -> Tensor:
    """(B,) the grid point nearest to each time of ``s`` (B,)."""
    g = time_grid.to(s.dtype)
    return g[(s[:, None] - g[None]).abs().argmin(1)]


def state_at(states: Tensor, time_grid: Tensor, s: Tensor) -> Tensor:
    """``z(s)`` on the stored polyline. states (B, K+1, C, T), time_grid (K+1,), s (B,) in [0, 1] -> (B, C, T)."""
    g = time_grid.to(torch.float64)
    k = _segment(s, g)
    h = (g[k + 1] - g[k])
    a = ((s.to(torch.float64) - g[k]) / h).to(states.dtype)[:, None, None]
    idx = torch.arange(states.shape[0])
    return states[idx, k] + a * (states[idx, k + 1] - states[idx, k])


def pair_targets(states: Tensor, velocities: Tensor, time_grid: Tensor, t: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Input and target of the pairs ``(t, r)``, ``0 <= t <= r <= 1``, on stored trajectories.

    ``z_t = z(t)``; ``u = (z(r) - z(t)) / (r - t) = sum_k w_k D_k`` with ``w_k = |[t, r] ^ [g_k, g_{k+1}]| / (r - t)``
    and ``D_k = (Z_{k+1} - Z_k) / h_k``; rows with ``r = t``: ``u = V_k`` of the segment holding ``t``.

    Args: states (B, K+1, C, T), velocities (B, K, C, T), time_grid (K+1,), t, r (B,).
    Returns: z_t (B, C, T), u (B, C, T), in the dtype of ``states``.
    """
    b, kp1 = states.shape[:2]
    if velocities.shape[:2] != (b, kp1 - 1) or time_grid.shape != (kp1,):
        raise ValueError(f"states {tuple(states.shape)}, velocities {tuple(velocities.shape)} and time_grid "
                         f"{tuple(time_grid.shape)} disagree: expected (B, K+1, ...), (B, K, ...), (K+1,)")
    if bool((r < t).any()):
        raise ValueError("pair_targets: every pair needs t <= r")
    g = time_grid.to(torch.float64)
    t64, r64 = t.to(torch.float64), r.to(torch.float64)
    lo, hi = g[:-1][None], g[1:][None]  # (1, K)
    overlap = (torch.minimum(hi, r64[:, None]) - torch.maximum(lo, t64[:, None])).clamp(min=0)  # (B, K)
    instant = r64 - t64 <= 0
    w = overlap / (r64 - t64).clamp(min=1e-30)[:, None]
    w[instant] = 0.0
    w[instant, _segment(t64[instant], g)] = 1.0
    slopes = (states[:, 1:] - states[:, :-1]) / (g[1:] - g[:-1]).to(states.dtype)[None, :, None, None]
    src = torch.where(instant[:, None, None, None], velocities, slopes)
    u = torch.einsum("bk,bkct->bct", w.to(states.dtype), src)
    return state_at(states, time_grid, t), u


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig(Config):
    """Trajectory reuse (this module's docstring): the cache, the pair draw and the fresh-rollout mix."""
    grid_nfe: int = 16  # K: the teacher's trajectories are stored on the K-step uniform grid (K guided calls each)
    noises_per_utt: int = 1  # stored trajectories per training utterance (each its own noise z_0)
    max_utts: int = 0  # > 0: only the first this many training utterances are integrated (0: all)
    cfg_scale: float = 2.0  # guidance w of the stored teacher, v_u + w (v_c - v_u)
    grid_only: bool = False  # True: (t, r) snapped to grid points; False: anywhere on the Euler polyline
    p_instant: float = 0.2  # fraction of pairs with r = t (target: the stored instantaneous velocity)
    p_full: float = 0.7  # fraction of pairs (t, r) = (0, 1): the one-step jump
    time_sampler: str = "uniform"  # how the two endpoints are drawn: "uniform" | "logit_normal"
    p_fresh: float = 0.0  # fraction of each batch trained the paper's way (data-path z_t, teacher rollout)
    teacher_nfe: int = 16  # N of those fresh rollouts (ceil((r - t) N) guided sub-steps)
    build_batch: int = 32  # trajectories integrated per teacher batch while building the cache

    def validate(self) -> None:
        require(self.grid_nfe >= 1, "grid_nfe", "must be >= 1")
        require(self.noises_per_utt >= 1, "noises_per_utt", "must be >= 1")
        require(self.max_utts >= 0, "max_utts", "must be >= 0")
        require(self.cfg_scale > 0, "cfg_scale", "must be > 0")
        require(0 <= self.p_instant and 0 <= self.p_full and self.p_instant + self.p_full <= 1,
                "p_instant", "p_instant + p_full must lie in [0, 1]")
        require(self.time_sampler in ("uniform", "logit_normal"), "time_sampler", "uniform | logit_normal")
        require(0.0 <= self.p_fresh <= 1.0, "p_fresh", "must lie in [0, 1]")
        require(self.teacher_nfe >= 1 and self.build_batch >= 1, "teacher_nfe", "teacher_nfe, build_batch >= 1")

    @property
    def imf(self) -> IMFConfig:
        """The interval draw (and the fresh rows' rollout) as an :class:`IMFConfig`."""
        return IMFConfig(teacher_nfe=self.teacher_nfe, cfg_scale=self.cfg_scale, p_instant=self.p_instant,
                         p_full=self.p_full, time_sampler=self.time_sampler)


def trajectory_loss(student: Callable[..., Tensor], states: Tensor, velocities: Tensor, time_grid: Tensor,
                    cond: Cond, mask: Tensor | None, cfg: TrajectoryConfig, generator: torch.Generator | None = None,
                    teacher: Callable[..., Tensor] | None = None, z_1: Tensor | None = None,
                    teacher_cond: Cond | None = None) -> tuple[Tensor, dict[str, float]]:
    """``|| u_theta(z_t, t, r) - (z(r) - z(t)) / (r - t) ||^2`` on stored trajectories (:func:`pair_targets`).

    ``states`` (B, K+1, C, T) and ``velocities`` (B, K, C, T) float32, ``time_grid`` (K+1,). The first
    ``round(p_fresh B)`` rows are instead the paper's IntMeanFlow rows (:func:`intmeanflow_loss`: data-path
    ``z_t`` from ``z_1`` (B, C, T), rollout of ``teacher``, already guided); the loss is the row-weighted mean.
    """
    b = states.shape[0]
    n_fresh = int(round(cfg.p_fresh * b))
    if n_fresh == b:
        raise ValueError(f"trajectory_loss(p_fresh={cfg.p_fresh}): no trajectory rows left in a batch of {b}")
    t, r = sample_intervals(b - n_fresh, cfg.imf, generator)
    if cfg.grid_only:
        t, r = snap_to_grid(t, time_grid), snap_to_grid(r, time_grid)
    keep = torch.arange(n_fresh, b)
    c_traj = index_cond(cond, keep)
    m_traj = None if mask is None else mask[keep]
    z_t, target = pair_targets(states[keep], velocities[keep], time_grid, t, r)
    t, r = t.to(z_t), r.to(z_t)
    pred = student(z_t, t=t, r=r, cond=c_traj)
    loss = masked_mse(pred, target, m_traj)
    logs = {"traj_loss": loss.item(), "mean_interval": (r - t).mean().item()}
    if n_fresh:
        if teacher is None or z_1 is None:
            raise ValueError(f"trajectory_loss(p_fresh={cfg.p_fresh}): fresh rows need the guided teacher and z_1")
        fresh = torch.arange(n_fresh)
        tc = index_cond(cond if teacher_cond is None else teacher_cond, fresh)
        f_loss, f_logs = intmeanflow_loss(student, teacher, z_1[fresh], index_cond(cond, fresh),
                                          None if mask is None else mask[fresh], cfg.imf, generator, teacher_cond=tc)
        loss = (loss * (b - n_fresh) + f_loss * n_fresh) / b
        logs.update(fresh_loss=f_loss.item(), teacher_rows=f_logs["teacher_rows"])
    logs["loss"] = loss.item()
    return loss, logs
