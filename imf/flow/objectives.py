"""Training objectives in the maths layer: conditional flow matching and IntMeanFlow.

No concrete model is imported: a model is any callable ``model(x, *, t, r=None, cond)``.
Tensors: ``z`` (B, C, T); ``mask`` (B, T) bool (valid frames); times (B,).
Time convention: see :mod:`imf.flow.paths` (noise t=0 -> data t=1).

Sharding (data-parallel training, gradient accumulation): every loss takes ``rows``, a slice of
the batch. All random draws (times, noise, condition drops) are still made for the WHOLE batch
from ``generator`` — so a row's draws never depend on how the batch is split — and the model is
called on ``rows`` only. The loss is this shard's share of the whole-batch loss (its terms
divided by the whole batch's normaliser), so the shares of a partition of the batch sum to the
whole-batch loss and their gradients to its gradient; every log value is additive in the same
way. ``rows=None`` is the whole batch (the one-process path, unchanged).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import torch
from torch import Tensor

from imf.core.config import Config, require
from imf.flow.paths import bcast_time, jump, sample_path

Cond = Mapping[str, Tensor]


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor | None, denom: Tensor | None = None) -> Tensor:
    """Mean squared error over valid frames. pred/target (B, C, T), mask (B, T) -> scalar.

    ``denom``: divide the summed error by this instead (a shard's share of a larger batch's
    mean, see :func:`mse_denominator`)."""
    err = (pred - target) ** 2
    if denom is not None:
        return (err if mask is None else err * mask[:, None].to(err.dtype)).sum() / denom
    if mask is None:
        return err.mean()
    m = mask[:, None].to(err.dtype)
    return (err * m).sum() / (m.sum() * err.shape[1]).clamp(min=1.0)


def mse_denominator(z: Tensor, mask: Tensor | None) -> Tensor:
    """The element count :func:`masked_mse` divides by for the whole batch ``z`` (B, C, T), mask (B, T)."""
    if mask is None:
        return torch.tensor(float(z.numel()), dtype=z.dtype, device=z.device)
    return (mask.to(z.dtype).sum() * z.shape[1]).clamp(min=1.0)


def take_rows(cond: Cond, rows: slice) -> dict[str, Tensor]:
    """Rows ``rows`` of every batch-first tensor of ``cond`` (other values as they are)."""
    return {k: v[rows] if torch.is_tensor(v) and v.dim() > 0 else v for k, v in cond.items()}


def _rows(x: Tensor | None, rows: slice) -> Tensor | None:
    return None if x is None else x[rows]


def per_sample_sq_error(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """(B,) squared L2 norm ``||pred - target||^2`` of each sample over its valid frames (a sum, not a mean)."""
    err = (pred - target) ** 2
    if mask is not None:
        err = err * mask[:, None].to(err.dtype)
    return err.flatten(1).sum(1)


def per_sample_mse(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """(B,) mean squared error of each sample over its valid frames."""
    err = (pred - target) ** 2
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask[:, None].to(err.dtype)
    return (err * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * err.shape[1]).clamp(min=1.0)


def sample_t(b: int, kind: str, generator: torch.Generator | None = None, mu: float = 0.0,
             sigma: float = 1.0) -> Tensor:
    """Times in (0, 1): ``uniform`` or ``logit_normal`` (sigmoid of N(mu, sigma^2)). -> (b,)"""
    if kind == "uniform":
        return torch.rand(b, generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(mu + sigma * torch.randn(b, generator=generator))
    raise ValueError(f"unknown time sampler {kind!r}; choose 'uniform' or 'logit_normal'")


def index_cond(cond: Cond, idx: Tensor) -> dict[str, Tensor]:
    """Rows ``idx`` of every batch-first tensor of ``cond``."""
    return {k: v[idx] for k, v in cond.items()}


def drop_mask(b: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """(b,) bool: which rows lose their conditioning (for classifier-free guidance)."""
    return torch.rand(b, generator=generator) < p


# ---------------------------------------------------------------------------------------
# Conditional flow matching (the teacher)
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CFMConfig(Config):
    p_drop: float = 0.2  # probability of dropping all conditioning (CFG training)
    time_sampler: str = "logit_normal"  # "uniform" | "logit_normal"
    time_mu: float = 0.0  # logit-normal location
    time_sigma: float = 1.0  # logit-normal scale

    def validate(self) -> None:
        require(0.0 <= self.p_drop < 1.0, "p_drop", "must lie in [0, 1)")
        require(self.time_sampler in ("uniform", "logit_normal"), "time_sampler", "uniform | logit_normal")


def cfm_loss(model: Callable[..., Tensor], z_1: Tensor, cond: Cond, mask: Tensor | None, cfg: CFMConfig,
             generator: torch.Generator | None = None, rows: slice | None = None) -> tuple[Tensor, dict[str, float]]:
    """``|| v_theta(z_t, t) - (z_1 - z_0) ||^2`` with ``z_0 ~ N(0, I)``; z_1 (B, C, T).

    ``rows``: compute only this shard's share (see the module docstring)."""
    b = z_1.shape[0]
    z_0 = torch.randn(z_1.shape, generator=generator).to(z_1)
    t = sample_t(b, cfg.time_sampler, generator, cfg.time_mu, cfg.time_sigma).to(z_1)
    z_t, v = sample_path(z_0, z_1, t)
    cond = dict(cond, drop=drop_mask(b, cfg.p_drop, generator).to(z_1.device))
    denom = None
    if rows is not None:
        denom = mse_denominator(z_1, mask)
        z_t, t, v, cond, mask = z_t[rows], t[rows], v[rows], take_rows(cond, rows), _rows(mask, rows)
    pred = model(z_t, t=t, cond=cond)
    loss = masked_mse(pred, v, mask, denom)
    return loss, {"loss": loss.item()}



# ---------------------------------------------------------------------------------------
# IntMeanFlow: average velocity of a guided teacher rolled out over [t, r]
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IMFConfig(Config):
    teacher_nfe: int = 16  # N: a sample with interval r - t gets ceil((r - t) N) Euler sub-steps
    fixed_substeps: int = 0  # > 0: use exactly this many sub-steps for every interval instead
    cfg_scale: float = 2.0  # guidance w of the teacher target, v_u + w (v_c - v_u)
    p_instant: float = 0.2  # fraction of samples with r = t (target: guided instantaneous velocity)
    p_full: float = 0.1  # fraction of samples with the whole interval (t, r) = (0, 1)
    time_sampler: str = "uniform"  # how the two endpoints are drawn: "uniform" | "logit_normal"
    time_mu: float = 0.0  # logit-normal location
    time_sigma: float = 1.0  # logit-normal scale

    def validate(self) -> None:
        require(self.teacher_nfe >= 1, "teacher_nfe", "must be >= 1")
        require(self.fixed_substeps >= 0, "fixed_substeps", "must be >= 0")
        require(0 <= self.p_instant and 0 <= self.p_full and self.p_instant + self.p_full <= 1,
                "p_instant", "p_instant + p_full must lie in [0, 1]")
        require(self.time_sampler in ("uniform", "logit_normal"), "time_sampler", "uniform | logit_normal")


def sample_intervals(b: int, cfg: IMFConfig, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(t, r) with 0 <= t <= r <= 1, (b,) each: sorted pair; ``p_instant`` rows r = t; ``p_full`` rows (0, 1)."""
    a = sample_t(b, cfg.time_sampler, generator, cfg.time_mu, cfg.time_sigma)
    c = sample_t(b, cfg.time_sampler, generator, cfg.time_mu, cfg.time_sigma)
    t, r = torch.minimum(a, c), torch.maximum(a, c)
    u = torch.rand(b, generator=generator)
    instant = u < cfg.p_instant
    full = (u >= cfg.p_instant) & (u < cfg.p_instant + cfg.p_full)
    r = torch.where(instant, t, r)
    t = torch.where(full, torch.zeros_like(t), t)
    r = torch.where(full, torch.ones_like(r), r)
    return t, r


def substep_counts(t: Tensor, r: Tensor, cfg: IMFConfig) -> Tensor:
    """(B,) long: ``fixed_substeps`` or ``max(1, ceil((r - t) N))``; r = t gets one evaluation."""
    if cfg.fixed_substeps > 0:
        return torch.full_like(t, cfg.fixed_substeps, dtype=torch.long)
    n = torch.ceil((r - t).double() * cfg.teacher_nfe - 1e-9).long()
    return n.clamp(min=1)


@torch.no_grad()
def rollout_average_velocity(teacher: Callable[..., Tensor], z_t: Tensor, t: Tensor, r: Tensor, cond: Cond,
                             n: Tensor) -> tuple[Tensor, int]:
    """Average velocity of ``teacher`` over [t, r] by ``n`` Euler sub-steps per sample.

    ``u = (z_r - z_t) / (r - t) = (1 / n) sum_k v(z^(k), t + k h)`` with ``h = (r - t) / n``,
    written as a mean of velocities so that r = t (n = 1) gives the instantaneous
    ``v(z_t, t)`` without dividing by zero. At sub-step k only the samples with ``n > k``
    (still inside their interval) are evaluated, so the cost is ``sum(n)`` rows, not
    ``B * max(n)``.

    Args: z_t (B, C, T); t, r (B,); n (B,) long >= 1.
    Returns: (u (B, C, T), teacher rows evaluated).
    """
    h = (r - t) / n.to(t.dtype)
    z = z_t.clone()
    v_sum = torch.zeros_like(z_t)
    rows = 0
    for k in range(int(n.max())):
        idx = torch.nonzero(n > k, as_tuple=True)[0]
        t_k = t[idx] + k * h[idx]
        v = teacher(z[idx], t=t_k, cond=index_cond(cond, idx))
        rows += idx.numel()
        v_sum[idx] += v
        z[idx] = jump(z[idx], v, t_k, t_k + h[idx])
    return v_sum / bcast_time(n.to(z_t.dtype), z_t), rows


def intmeanflow_loss(student: Callable[..., Tensor], teacher: Callable[..., Tensor], z_1: Tensor, cond: Cond,
                     mask: Tensor | None, cfg: IMFConfig, generator: torch.Generator | None = None,
                     teacher_cond: Cond | None = None, rows: slice | None = None) -> tuple[Tensor, dict[str, float]]:
    """IntMeanFlow distillation: ``|| u_theta(z_t, t, r) - mean_k v_teacher^cfg ||^2``.

    ``teacher`` must already include guidance (e.g. ``Guided(teacher, w)``) and be frozen;
    the student is called WITHOUT guidance (conditional rows only). ``teacher_cond``: the
    teacher's view of ``cond`` (e.g. with cached encodings); default ``cond``. ``rows``: compute
    only this shard's share (module docstring); the teacher rolls out these rows only, and
    ``teacher_cond`` (if given) holds these rows only.
    """
    b = z_1.shape[0]
    t, r = sample_intervals(b, cfg, generator)
    t, r = t.to(z_1), r.to(z_1)
    z_0 = torch.randn(z_1.shape, generator=generator).to(z_1)
    z_t, _ = sample_path(z_0, z_1, t)
    denom = None
    if rows is not None:
        denom = mse_denominator(z_1, mask)
        z_t, t, r, cond, mask = z_t[rows], t[rows], r[rows], take_rows(cond, rows), _rows(mask, rows)
    n = substep_counts(t, r, cfg).to(z_1.device)
    target, n_rows = rollout_average_velocity(teacher, z_t, t, r, cond if teacher_cond is None else teacher_cond, n)
    pred = student(z_t, t=t, r=r, cond=cond)
    loss = masked_mse(pred, target, mask, denom)
    return loss, {"loss": loss.item(), "teacher_rows": float(n_rows),
                  "mean_substeps": (n.float().mean() if rows is None else n.float().sum() / b).item()}


# ---------------------------------------------------------------------------------------
# MeanFlow (JVP) — the baseline IntMeanFlow is compared against
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MeanFlowConfig(Config):
    p_instant: float = 0.75  # flow-matching mixing: fraction of samples with r = t
    time_sampler: str = "logit_normal"  # endpoints drawn like this, then sorted
    time_mu: float = 0.4  # logit-normal location in OUR convention (published -0.4 with data at t=0)
    time_sigma: float = 1.0  # logit-normal scale
    adaptive_p: float = 1.0  # adaptive weight 1 / (||u - u_tgt||^2 + c)^p, the norm summed over the sample's
    #   valid elements as in the MeanFlow paper (p = 0: the plain summed squared error)
    adaptive_c: float = 1e-3  # adaptive weight offset c
    cfg_scale: float = 1.0  # w > 1 folds guidance into the target (MeanFlow paper); 1 = off
    p_drop: float = 0.1  # condition dropout (needed for the unconditional branch when cfg_scale != 1)

    def validate(self) -> None:
        require(0.0 <= self.p_instant <= 1.0, "p_instant", "must lie in [0, 1]")
        require(self.time_sampler in ("uniform", "logit_normal"), "time_sampler", "uniform | logit_normal")
        require(self.adaptive_p >= 0 and self.adaptive_c > 0, "adaptive_c", "p >= 0 and c > 0")
        require(0.0 <= self.p_drop < 1.0, "p_drop", "must lie in [0, 1)")


def meanflow_target(model: Callable[..., Tensor], z_t: Tensor, t: Tensor, r: Tensor, v: Tensor,
                    cond: Cond) -> tuple[Tensor, Tensor]:
    """MeanFlow identity in our convention (noise t = 0 -> data t = 1, interval [t, r], r >= t).

    From ``(r - t) u(z_t, t, r) = int_t^r v(z_s, s) ds`` and d/dt of both sides (r fixed):
    ``-u + (r - t) du/dt = -v``, so

        u_tgt = v + (r - t) du/dt,    du/dt = v . d_z u + d_t u,

    the total derivative along the path, from ONE forward-mode JVP with tangent
    ``(v, 1, 0)`` on ``(z, t, r)``. (Published code, with data at 0 and the interval [r, t],
    writes the same identity as ``v - (t - r) du/dt``.) The target is detached.

    Returns ``(u, u_tgt)``: the prediction (with gradient) and the stop-gradient target.
    """
    fn = lambda z, tt, rr: model(z, t=tt, r=rr, cond=cond)
    u, dudt = torch.func.jvp(fn, (z_t, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    u_tgt = v + bcast_time(r - t, z_t) * dudt
    return u, u_tgt.detach()


def meanflow_loss(model: Callable[..., Tensor], z_1: Tensor, cond: Cond, mask: Tensor | None, cfg: MeanFlowConfig,
                  generator: torch.Generator | None = None,
                  rows: slice | None = None) -> tuple[Tensor, dict[str, float]]:
    """MeanFlow objective with the paper's adaptive weighting, per sample ``b``:

        L_b = ||u_b - u_tgt_b||^2   (summed over the sample's valid elements),
        loss = mean_b sg(w_b) L_b,   w_b = 1 / (L_b + c)^p.

    The norm is a sum, as in the MeanFlow paper (Geng et al. 2025, eq. for the adaptive loss)
    and its official code, not a per-element mean: with a mean, ``c`` would act as ``c`` times
    the element count. ``logs["mse"]`` is the per-element mean squared error, for monitoring.
    ``rows``: compute only this shard's share (see the module docstring).
    """
    b = z_1.shape[0]
    a = sample_t(b, cfg.time_sampler, generator, cfg.time_mu, cfg.time_sigma)
    c = sample_t(b, cfg.time_sampler, generator, cfg.time_mu, cfg.time_sigma)
    t, r = torch.minimum(a, c), torch.maximum(a, c)
    r = torch.where(torch.rand(b, generator=generator) < cfg.p_instant, t, r)
    t, r = t.to(z_1), r.to(z_1)
    z_0 = torch.randn(z_1.shape, generator=generator).to(z_1)
    z_t, v = sample_path(z_0, z_1, t)
    drop = drop_mask(b, cfg.p_drop, generator).to(z_1.device)
    if rows is not None:
        z_t, t, r, v, drop = z_t[rows], t[rows], r[rows], v[rows], drop[rows]
        cond, mask = take_rows(cond, rows), _rows(mask, rows)
    if cfg.cfg_scale != 1.0:
        # guidance folded into the target: v~ = w v + (1 - w) u(z_t, t, t | null), for kept rows
        with torch.no_grad():
            u_null = model(z_t, t=t, r=t, cond=dict(cond, drop=torch.ones_like(drop)))
        v = torch.where(drop[:, None, None], v, cfg.cfg_scale * v + (1 - cfg.cfg_scale) * u_null)
    u, u_tgt = meanflow_target(model, z_t, t, r, v, dict(cond, drop=drop))
    sq = per_sample_sq_error(u, u_tgt, mask)
    weight = 1.0 / (sq.detach() + cfg.adaptive_c) ** cfg.adaptive_p
    if rows is None:
        loss = (weight * sq).mean()
        return loss, {"loss": loss.item(), "mse": per_sample_mse(u.detach(), u_tgt, mask).mean().item()}
    loss = (weight * sq).sum() / b
    return loss, {"loss": loss.item(), "mse": (per_sample_mse(u.detach(), u_tgt, mask).sum() / b).item()}
