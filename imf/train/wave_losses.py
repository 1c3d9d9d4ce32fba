"""Waveform reconstruction losses and the objectives that use them (vocoder, VAE, Token2Wav refinements).

One reconstruction loss for every waveform decoder::

    L = mel_weight * |LogMel(wav_hat) - LogMel(wav)|_1
      + stft_weight * MRSTFT(wav_hat, wav)      # auraloss: spectral convergence + log |STFT|
      (+ kl_weight * KL(q(z|x) || N(0, I))      # the Token2Wav VAE only)
      (+ adversarial + feature matching          # the vocoder and the Token2Wav fine-tuning, when a
                                                 # imf.train.gan.Adversarial is given)

Objectives are ``objective(model, batch, generator) -> (loss, logs)`` for
:class:`~imf.train.trainer.Trainer`, on :func:`imf.data.waves.collate_waves` batches; every
crop and noise draw comes from the trainer's generator.

Data parallel / gradient accumulation (``rows=``, see :mod:`imf.flow.objectives`): the crops and
noise are drawn for the whole batch, the model runs on ``rows`` only, and the loss and logs are
the shard's mean times its fraction of the batch. Every term is a mean over samples of equal
size, so the shares add up to the whole-batch loss — except auraloss's spectral-convergence
term, one ratio of norms over the whole batch, which the shares only approximate: these
stages are not bit-for-bit invariant to the number of processes (the flow stages are).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from imf.core.config import Config, require
from imf.flow.objectives import take_rows
from imf.models.features import LogMel, MelConfig
from imf.data.waves import (T2WDataConfig, TokenWaveDataset, generator_batch, mel_segments, segment_starts,
                            wav_segments)
from imf.models.token2wav import Token2Wav
from imf.models.vae import WaveVAE, kl_divergence
from imf.train.gan import Adversarial


@dataclasses.dataclass(frozen=True)
class WaveLossConfig(Config):
    mel_weight: float = 1.0  # L1 between natural-log mels (the corpus LogMel) of output and target
    stft_weight: float = 1.0  # multi-resolution STFT loss (auraloss: spectral convergence + log |STFT|)
    fft_sizes: tuple[int, ...] = (512, 1024, 2048)  # MR-STFT resolutions (auraloss defaults)
    hop_sizes: tuple[int, ...] = (50, 120, 240)
    win_lengths: tuple[int, ...] = (240, 600, 1200)

    def validate(self) -> None:
        require(self.mel_weight >= 0 and self.stft_weight >= 0, "mel_weight", "weights must be >= 0")
        require(self.mel_weight + self.stft_weight > 0, "mel_weight", "one waveform loss weight must be > 0")
        require(len(self.fft_sizes) == len(self.hop_sizes) == len(self.win_lengths) >= 1, "fft_sizes",
                "fft_sizes, hop_sizes and win_lengths must have the same (non-zero) length")
        require(all(w <= n for w, n in zip(self.win_lengths, self.fft_sizes)), "win_lengths",
                "each window must fit its FFT")


@dataclasses.dataclass(frozen=True)
class T2WLossConfig(WaveLossConfig):
    """The loss of every Token2Wav stage: the waveform loss, plus the KL term of the VAE stage."""
    kl_weight: float = 1e-3  # VAE only: KL(q(z|x) || N(0, I)), mean per latent element

    def validate(self) -> None:
        super().validate()
        require(self.kl_weight >= 0, "kl_weight", "must be >= 0")


class WaveLoss(nn.Module):
    """``loss(wav_hat, wav) -> {"loss", "mel_l1", "mrstft"}`` (scalars); wav_hat, wav (B, N)."""

    def __init__(self, cfg: WaveLossConfig = WaveLossConfig(), mel_config: MelConfig | None = None):
        super().__init__()
        import auraloss  # optional heavy dependency, only for training

        self.cfg = cfg
        self.logmel = LogMel(mel_config or MelConfig())
        self.mrstft = auraloss.freq.MultiResolutionSTFTLoss(
            fft_sizes=list(cfg.fft_sizes), hop_sizes=list(cfg.hop_sizes), win_lengths=list(cfg.win_lengths))

    def forward(self, wav_hat: Tensor, wav: Tensor) -> dict[str, Tensor]:
        mel_l1 = (self.logmel(wav_hat) - self.logmel(wav)).abs().mean()
        mrstft = self.mrstft(wav_hat[:, None], wav[:, None])
        return {"loss": self.cfg.mel_weight * mel_l1 + self.cfg.stft_weight * mrstft, "mel_l1": mel_l1,
                "mrstft": mrstft}


def _logs(out: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in out.items()}


def _share(out: dict[str, Tensor], rows: slice | None, b: int) -> tuple[Tensor, dict[str, float]]:
    """(loss, logs) of a shard ``rows`` of a batch of ``b``: its means times its fraction of the batch."""
    if rows is not None:
        n = len(range(b)[rows])
        out = {k: v * (n / b) for k, v in out.items()}
    return out["loss"], _logs(out)


class _WithAdversarial(nn.Module):
    """Adds an optional :class:`~imf.train.gan.Adversarial` to an objective and its state to the checkpoint."""
    gan: Adversarial | None

    def add_adversarial(self, out: dict[str, Tensor], wav: Tensor, wav_hat: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``out["loss"]`` (+ the GAN terms when there is a GAN) and the logs."""
        logs = _logs(out)
        if self.gan is None:
            return out["loss"], logs
        adv, gan_logs = self.gan(wav, wav_hat)
        return out["loss"] + adv, {**logs, **gan_logs}

    def combine(self, out: dict[str, Tensor], wav: Tensor, wav_hat: Tensor, rows: slice | None,
                b: int) -> tuple[Tensor, dict[str, float]]:
        """(loss, logs): a shard's share of the batch loss (:func:`_share`) without a GAN; the
        GAN terms added with one (its discriminator step is one process's: not sharded)."""
        if self.gan is None:
            return _share(out, rows, b)
        if rows is not None:
            raise NotImplementedError("adversarial training (gan) runs in one process: its discriminator "
                                      "step is not data-parallel; set gan.enabled false or train without torchrun")
        return self.add_adversarial(out, wav, wav_hat)

    def checkpoint_state(self) -> dict[str, Any] | None:
        return None if self.gan is None else self.gan.checkpoint_state()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if self.gan is None:
            raise ValueError("the checkpoint holds discriminator state but this run has no GAN")
        self.gan.load_checkpoint_state(state)


class VocoderObjective(_WithAdversarial):
    """One random ``seg_frames`` segment per utterance (:func:`~imf.data.waves.mel_segments`) -> vocode -> wave loss
    (+ adversarial and feature-matching terms with ``gan``)."""

    def __init__(self, mel_config: MelConfig, seg_frames: int, cfg: WaveLossConfig = WaveLossConfig(),
                 gan: Adversarial | None = None):
        super().__init__()
        self.seg_frames, self.hop = seg_frames, mel_config.hop_length
        self.wave_loss, self.gan = WaveLoss(cfg, mel_config), gan

    def forward(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator, rows: slice | None = None):
        mel, wav = mel_segments(batch, self.seg_frames, self.hop, generator)
        b = mel.shape[0]
        if rows is not None:
            mel, wav = mel[rows], wav[rows]
        wav_hat = model(mel)
        return self.combine(self.wave_loss(wav_hat, wav), wav, wav_hat, rows, b)


class VAEObjective(nn.Module):
    """One random ``seg_frames`` segment per utterance -> encode, sample, decode -> wave loss + KL."""

    def __init__(self, loss_cfg: T2WLossConfig, seg_frames: int, mel_config: MelConfig | None = None):
        super().__init__()
        self.wave_loss, self.kl_weight, self.seg = WaveLoss(loss_cfg, mel_config), loss_cfg.kl_weight, seg_frames

    def forward(self, model: WaveVAE, batch: dict[str, Any], g: torch.Generator, rows: slice | None = None):
        stride = model.config.stride
        lengths = torch.tensor([w.numel() // stride for w in batch["wav"]])
        wav = wav_segments(batch["wav"], segment_starts(lengths, self.seg, g), [0] * len(lengths), self.seg, stride)
        b = wav.shape[0]
        mu, logvar = model.encode(wav if rows is None else wav[rows])
        eps = torch.randn((b, *mu.shape[1:]), generator=g)  # the whole batch's noise (= mu.shape without rows)
        wav_hat = model.decode(mu + torch.exp(0.5 * logvar) * (eps if rows is None else eps[rows]))
        out = self.wave_loss(wav_hat, wav if rows is None else wav[rows])
        out["kl"] = kl_divergence(mu, logvar)
        out["loss"] = out["loss"] + self.kl_weight * out["kl"]
        return _share(out, rows, b)


class RefineObjective(_WithAdversarial):
    """Generate latents in ONE step for whole utterances, decode one random ``seg_frames``
    segment of each, compare with the real waveform segment (wave loss, + adversarial and
    feature-matching terms with ``gan``, as the Token2Wav paper's fine-tuning).

    ``joint=False``: the generator runs under ``no_grad`` (decoder-only fine-tuning);
    ``joint=True``: gradients flow through the generator's 1-step output into it.
    """

    def __init__(self, data: TokenWaveDataset, loss_cfg: WaveLossConfig, data_cfg: T2WDataConfig, joint: bool,
                 gan: Adversarial | None = None):
        super().__init__()
        self.data, self.data_cfg, self.joint = data, data_cfg, joint
        self.wave_loss, self.gan = WaveLoss(loss_cfg, data.corpus.mel_config), gan

    def forward(self, model: Token2Wav, batch: dict[str, Any], g: torch.Generator, rows: slice | None = None):
        b = generator_batch(self.data, batch, self.data_cfg, g)
        z_0 = torch.randn(b["z_1"].shape, generator=g)
        n = z_0.shape[0]
        own = slice(0, n) if rows is None else rows
        with torch.set_grad_enabled(self.joint and torch.is_grad_enabled()):
            x = model.one_step(z_0[own], take_rows(b["cond"], own))
        seg = self.data_cfg.seg_frames
        starts = segment_starts(b["lengths"], seg, g)
        x_seg = torch.stack([x[i, :, f:f + seg] for i, f in enumerate(starts[own])])
        wav = wav_segments(batch["wav"], starts, b["starts"].tolist(), seg, model.vae.config.stride)
        wav_hat = model.decode(x_seg)
        return self.combine(self.wave_loss(wav_hat, wav[own]), wav[own], wav_hat, rows, n)
