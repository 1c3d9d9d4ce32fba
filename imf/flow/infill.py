"""F5-TTS's training objective: conditional flow matching on a masked span (text2mel infilling).

For each utterance a contiguous ``span`` (B, T) of its frames is to be generated; the rest of
its mel is the prompt, already written into ``cond["cond_mel"]`` by the caller (zeros on the
span, :func:`imf.data.f5_text.infill_cond`). With ``z_0 ~ N(0, I)``, ``t`` drawn per row and
``z_t = (1 - t) z_0 + t z_1`` (:mod:`imf.flow.paths`)::

    loss = mean over (span frames, bins) of  || v_theta(z_t, t | cond) - (z_1 - z_0) ||^2

so frames outside the span never enter the loss (F5's ``loss[rand_span_mask].mean()``). F5's
condition dropping, per row here (F5 draws it per batch): the audio prompt is dropped with
probability ``p_audio_drop`` (``cond["drop_audio"]``), and prompt AND text with ``p_cond_drop``
(``cond["drop"]``, the null condition of classifier-free guidance). F5 draws ``t`` uniformly.

``rows`` shards the batch as every loss of :mod:`imf.flow.objectives` does.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import torch
from torch import Tensor

from imf.core.config import Config, require
from imf.flow.objectives import _rows, drop_mask, masked_mse, mse_denominator, sample_t, take_rows
from imf.flow.paths import sample_path

Cond = Mapping[str, Tensor]


@dataclasses.dataclass(frozen=True)
class InfillConfig(Config):
    p_audio_drop: float = 0.3  # probability of dropping the audio prompt only (F5's audio_drop_prob)
    p_cond_drop: float = 0.2  # probability of dropping prompt AND text: the null condition (F5's cond_drop_prob)
    time_sampler: str = "uniform"  # "uniform" (F5) | "logit_normal"
    time_mu: float = 0.0  # logit-normal location
    time_sigma: float = 1.0  # logit-normal scale

    def validate(self) -> None:
        require(0.0 <= self.p_audio_drop < 1.0, "p_audio_drop", "must lie in [0, 1)")
        require(0.0 <= self.p_cond_drop < 1.0, "p_cond_drop", "must lie in [0, 1)")
        require(self.time_sampler in ("uniform", "logit_normal"), "time_sampler", "uniform | logit_normal")


def infill_loss(model: Callable[..., Tensor], z_1: Tensor, cond: Cond, span: Tensor, cfg: InfillConfig = InfillConfig(),
                generator: torch.Generator | None = None, rows: slice | None = None) -> tuple[Tensor, dict[str, float]]:
    """F5's infilling flow-matching loss (module doc). z_1 (B, C, T); span (B, T) bool, the frames to
    generate (and so to score); ``cond`` holds the prompt (``cond_mel``) and the text. Draw order: noise,
    times, audio drop, full drop (all for the whole batch)."""
    if span.shape != (z_1.shape[0], z_1.shape[-1]):
        raise ValueError(f"infill_loss: span must be (B, T) = {(z_1.shape[0], z_1.shape[-1])}, got {tuple(span.shape)}")
    b = z_1.shape[0]
    z_0 = torch.randn(z_1.shape, generator=generator).to(z_1)
    t = sample_t(b, cfg.time_sampler, generator, cfg.time_mu, cfg.time_sigma).to(z_1)
    z_t, v = sample_path(z_0, z_1, t)
    audio = drop_mask(b, cfg.p_audio_drop, generator).to(z_1.device)
    both = drop_mask(b, cfg.p_cond_drop, generator).to(z_1.device)
    cond = dict(cond, drop_audio=audio, drop=both)
    denom = None
    if rows is not None:
        denom = mse_denominator(z_1, span)
        z_t, t, v, cond, span = z_t[rows], t[rows], v[rows], take_rows(cond, rows), _rows(span, rows)
    pred = model(z_t, t=t, cond=cond)
    loss = masked_mse(pred, v, span, denom)
    return loss, {"loss": loss.item()}
