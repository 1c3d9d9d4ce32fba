"""Adversarial training with the ``vocos`` package's discriminators and losses (Vocos, HiFi-GAN recipe).

Discriminators: ``vocos.discriminators.MultiPeriodDiscriminator`` (HiFi-GAN's MPD, periods
2, 3, 5, 7, 11) and ``MultiResolutionDiscriminator`` (DAC's MRD, FFT 2048 / 1024 / 512). Losses
(``vocos.loss``), averaged over the sub-discriminators as the package's ``VocosExp`` does:

    L_D = hinge_D(MPD) + mrd_weight * hinge_D(MRD)                    (the discriminator step)
    L_G += adv_weight * (hinge_G(MPD) + mrd_weight * hinge_G(MRD))
         + fm_weight * (FM(MPD) + mrd_weight * FM(MRD))               (added to the reconstruction loss)

with ``hinge_D = mean(relu(1 - D(y))) + mean(relu(1 + D(y_hat)))``, ``hinge_G = mean(relu(1 - D(y_hat)))``
and FM the L1 distance between the discriminators' feature maps of ``y`` and ``y_hat``.
Default weights: Vocos's ``mel 45 : adv 1 : fm 1`` (MRD x 0.1) with our reconstruction loss in the
place of its 45 x mel L1, i.e. ``adv_weight = fm_weight = 1 / 45``.

:class:`Adversarial` owns the discriminators AND their optimizer (AdamW, betas (0.8, 0.9) as Vocos,
the generator's warm-up + cosine schedule): an objective calls it once per generator step with
``(y, y_hat)``; it first updates the discriminators on ``y_hat.detach()``, then returns the
generator's adversarial + feature-matching terms (the discriminators frozen, so the generator's
backward leaves them alone). Its state (weights, optimizer, step) goes into the run's checkpoint
through :meth:`checkpoint_state` (:class:`imf.train.trainer.Trainer` saves an objective's), so a
resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from vocos.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from vocos.loss import DiscriminatorLoss, FeatureMatchingLoss, GeneratorLoss

from imf.core.config import Config, require
from imf.train.trainer import TrainConfig, lr_at


@dataclasses.dataclass(frozen=True)
class GANConfig(Config):
    enabled: bool = False  # add the adversarial + feature-matching terms (and a discriminator step per step)
    adv_weight: float = 1 / 45  # hinge generator loss (Vocos: 1 against 45 x mel L1)
    fm_weight: float = 1 / 45  # feature matching (Vocos: 1 against 45 x mel L1)
    mrd_weight: float = 0.1  # MRD terms relative to MPD's (Vocos's mrd_loss_coeff)
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)  # MPD periods (HiFi-GAN)
    fft_sizes: tuple[int, ...] = (2048, 1024, 512)  # MRD resolutions (the package's defaults)
    lr: float = 0.0  # discriminators' peak learning rate (0: the generator's); same warm-up + cosine schedule
    start_step: int = 0  # generator steps before the adversarial terms start (Vocos's pretrain_mel_steps)

    def validate(self) -> None:
        require(self.adv_weight >= 0 and self.fm_weight >= 0 and self.mrd_weight >= 0, "adv_weight",
                "weights must be >= 0")
        require(len(self.periods) >= 1 and min(self.periods) >= 1, "periods", "need at least one period >= 1")
        require(len(self.fft_sizes) >= 1 and min(self.fft_sizes) >= 8, "fft_sizes", "need at least one FFT size >= 8")
        require(self.lr >= 0, "lr", "must be >= 0 (0: the generator's)")
        require(self.start_step >= 0, "start_step", "must be >= 0")


def _mean_over(loss_and_list: tuple[Tensor, list]) -> Tensor:
    """The package's summed loss divided by the number of sub-discriminators, as a 0-dim tensor."""
    total, parts = loss_and_list[0], loss_and_list[1]
    return total.reshape(()) / len(parts)


def _hinge_d(d_loss: DiscriminatorLoss, real: list[Tensor], fake: list[Tensor]) -> Tensor:
    """The package's discriminator loss averaged over the sub-discriminators (0-dim)."""
    total, r_losses, _ = d_loss(disc_real_outputs=real, disc_generated_outputs=fake)
    return total.reshape(()) / len(r_losses)


class Adversarial(nn.Module):
    """``adversarial(y, y_hat) -> (loss, logs)``: one discriminator update, then the generator's terms.

    y, y_hat (B, N) waveforms (y_hat with the generator's graph). ``loss`` is a 0-dim tensor to add
    to the generator's loss (0 before ``start_step``); ``logs`` has ``d_loss, g_adv, g_fm``.
    """

    def __init__(self, cfg: GANConfig, train_cfg: TrainConfig):
        super().__init__()
        self.cfg, self.train_cfg = cfg, train_cfg
        self.mpd = MultiPeriodDiscriminator(periods=tuple(cfg.periods))
        self.mrd = MultiResolutionDiscriminator(fft_sizes=tuple(cfg.fft_sizes))
        self.d_loss, self.g_loss, self.fm_loss = DiscriminatorLoss(), GeneratorLoss(), FeatureMatchingLoss()
        self.lr_scale = (cfg.lr or train_cfg.lr) / train_cfg.lr
        self.opt = torch.optim.AdamW(self.parameters(), lr=train_cfg.lr * self.lr_scale, betas=(0.8, 0.9),
                                     weight_decay=train_cfg.weight_decay)
        self.step = 0  # generator steps seen (the discriminators' schedule and start_step count these)

    def discriminator_step(self, y: Tensor, y_hat: Tensor) -> float:
        """One AdamW step of both discriminators on real ``y`` vs generated ``y_hat`` (detached); returns L_D."""
        self.requires_grad_(True)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.train_cfg) * self.lr_scale
        y_hat = y_hat.detach()
        r_mp, g_mp, _, _ = self.mpd(y=y, y_hat=y_hat)
        r_mr, g_mr, _, _ = self.mrd(y=y, y_hat=y_hat)
        loss = _hinge_d(self.d_loss, r_mp, g_mp) + self.cfg.mrd_weight * _hinge_d(self.d_loss, r_mr, g_mr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters(), self.train_cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def generator_terms(self, y: Tensor, y_hat: Tensor) -> tuple[Tensor, Tensor]:
        """(hinge_G, FM), each MPD + mrd_weight * MRD, differentiable in ``y_hat``; discriminators frozen."""
        self.requires_grad_(False)
        _, g_mp, f_r_mp, f_g_mp = self.mpd(y=y, y_hat=y_hat)
        _, g_mr, f_r_mr, f_g_mr = self.mrd(y=y, y_hat=y_hat)
        w = self.cfg.mrd_weight
        adv = _mean_over(self.g_loss(g_mp)) + w * _mean_over(self.g_loss(g_mr))
        fm = (self.fm_loss(f_r_mp, f_g_mp).reshape(()) / len(f_r_mp)
              + w * self.fm_loss(f_r_mr, f_g_mr).reshape(()) / len(f_r_mr))
        return adv, fm

    def forward(self, y: Tensor, y_hat: Tensor) -> tuple[Tensor, dict[str, float]]:
        if y.shape != y_hat.shape or y.dim() != 2:
            raise ValueError(f"y and y_hat must be (B, N) of one shape, got {tuple(y.shape)} and {tuple(y_hat.shape)}")
        step, self.step = self.step, self.step + 1
        if step < self.cfg.start_step:
            return y_hat.new_zeros(()), {}
        d = self.discriminator_step(y, y_hat)
        adv, fm = self.generator_terms(y, y_hat)
        loss = self.cfg.adv_weight * adv + self.cfg.fm_weight * fm
        return loss, {"d_loss": d, "g_adv": float(adv.detach()), "g_fm": float(fm.detach())}

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps: discriminator weights, their optimizer, the step."""
        return {"discriminators": self.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["discriminators"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


def make_adversarial(cfg: GANConfig, train_cfg: TrainConfig) -> Adversarial | None:
    """An :class:`Adversarial` if ``cfg.enabled`` (built now: it draws its initial weights from the
    global RNG, so build it after the generator), else None."""
    return Adversarial(cfg, train_cfg) if cfg.enabled else None
