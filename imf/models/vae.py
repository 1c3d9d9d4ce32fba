"""Waveform VAE: 16 kHz audio <-> 25 Hz latents (the Token2Wav paper's latent space, CPU-sized).

Geometry. One latent frame covers ``stride = hop * prod(down)`` samples (default
``160 * 2 * 2 = 640``: 16 kHz -> 25 Hz). A waveform of ``N`` samples, ``N`` a multiple of
``stride``, has ``T = N / stride`` latent frames; latent frame ``j`` summarises samples
``[j * stride, (j + 1) * stride)`` (use :func:`pad_to_stride` first).

Encoder (``wav (B, N) -> mu, logvar (B, latent_dim, T)``). A fixed log-mel analysis at
``hop`` (the first, non-learned stride: 100 Hz frames, ``n_fft`` 640, 80 mel bins) followed by
ConvNeXt blocks and learned strided convolutions (``down``). Choice: the paper's encoder is
strided convolutions on the raw waveform (strides [2, 4, 4, 6, 5] at 24 kHz); on a CPU budget
of a few minutes a front end that already knows the spectrum trains much faster, and the
latent still comes from the waveform alone (no corpus feature is read).

Decoder (``z (B, latent_dim, T) -> wav (B, T * stride)``), deterministic, built from the
``vocos`` package's parts: ``dec_low`` (``vocos.models.VocosBackbone`` at 25 Hz: Conv1d ->
LayerNorm -> ConvNeXt blocks -> LayerNorm) -> transposed-conv upsampling by ``up`` ->
``dec_high`` (a second ``VocosBackbone`` at ``25 * up`` Hz) -> ``head``
(``vocos.heads.ISTFTHead``, ``"center"`` padding: per-frame Linear -> (log|S|, angle) of an
``n_fft = 4 * hop_out`` STFT -> inverse STFT, ``hop_out = stride / up``). ``up = 4`` (hop 160,
n_fft 640) is the default; ``up = 1`` is the paper-style head at 25 Hz (hop 640, n_fft 2560),
predicting the phase of a 40 ms hop directly. Measured with the previous hand-written decoder on
the small corpus (batch 16 x 1 s, lr 2e-3, 1 thread): after 150 steps the loss is 2.80 for
``up = 1`` and 2.79-2.86 for ``up = 4`` (two runs), at about the same CPU time per step: no
measurable difference at this budget, so the default keeps the usual Vocos geometry (4x overlap,
10 ms hop).

Training (:func:`imf.train.token2wav.train_vae`): mel L1 + multi-resolution STFT + a small KL
(the decoder / joint fine-tuning stages may add the ``vocos`` package's adversarial losses).
The encoder's log-variance head starts at ``logvar_init`` (posterior std 0.05): with the
default 0 start, the posterior noise drowned the latent in the first steps and the decoder
learned to ignore it (posterior collapse: loss stuck at ~3.8, std(mu) ~ 0.002). Seen once more
at lr 3e-3 / batch 8 even with this init; lr 2e-3 / batch 16 trained in all three runs.

Posterior: ``q(z | x) = N(mu, exp(logvar))``; :meth:`WaveVAE.forward` draws
``z = mu + exp(logvar / 2) eps`` in training and returns ``mu`` in eval mode. The latent
generator models ``mu`` standardised per channel with :attr:`latent_mean` / :attr:`latent_std`
(persistent buffers, set once after training with :meth:`set_latent_stats`).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone

from imf.core.config import Config, require
from imf.models.layers import ChannelNorm, ConvNeXtBlock


@dataclasses.dataclass(frozen=True)
class VAEConfig(Config):
    sample_rate: int = 16000  # Hz of the waveform
    latent_dim: int = 16  # channels of z (the paper: 16-24)
    hop: int = 160  # samples per front-end frame (the fixed first stride; 100 Hz)
    n_fft: int = 640  # front-end analysis window / FFT
    n_mels: int = 80  # front-end mel bins
    down: tuple[int, ...] = (2, 2)  # learned strides after the front end: stride = hop * prod(down)
    enc_dim: int = 128  # encoder channels
    enc_layers: int = 2  # ConvNeXt blocks at each encoder resolution
    dec_dim: int = 192  # decoder channels
    dec_low_layers: int = 2  # decoder ConvNeXt blocks at the latent rate (VocosBackbone)
    up: int = 4  # decoder upsampling before the iSTFT head (1: head at the latent rate)
    dec_layers: int = 4  # decoder ConvNeXt blocks after upsampling (VocosBackbone)
    kernel_size: int = 7  # encoder depthwise kernel (the decoder's VocosBackbone uses 7)
    ff_mult: int = 3  # ConvNeXt pointwise expansion (Vocos uses 3)
    logvar_init: float = -6.0  # initial posterior log-variance (bias of the encoder's logvar head)
    logvar_min: float = -12.0  # posterior log-variance clamp (numerical safety)
    logvar_max: float = 4.0

    def validate(self) -> None:
        require(self.latent_dim >= 1, "latent_dim", "must be >= 1")
        require(self.hop >= 1 and self.n_fft >= self.hop, "n_fft", "needs n_fft >= hop >= 1")
        require(all(s >= 1 for s in self.down), "down", "strides must be >= 1")
        require(self.up >= 1 and self.stride % self.up == 0, "up", f"must divide the stride {self.stride}")
        require((self.stride // self.up) * 4 % 2 == 0, "up", "the decoder STFT needs an even n_fft")
        require(self.kernel_size % 2 == 1, "kernel_size", "must be odd (same padding)")
        require(self.enc_dim >= 1 and self.dec_dim >= 1, "dec_dim", "channels must be >= 1")
        require(self.dec_low_layers >= 1 and self.dec_layers >= 1, "dec_layers",
                "dec_low_layers and dec_layers must be >= 1 (each is a VocosBackbone)")

    @property
    def stride(self) -> int:
        """Samples per latent frame (640 -> 25 Hz at 16 kHz)."""
        return self.hop * math.prod(self.down)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.stride

    @property
    def hop_out(self) -> int:
        """Decoder iSTFT hop."""
        return self.stride // self.up

    @property
    def n_fft_out(self) -> int:
        """Decoder iSTFT size (4x overlap)."""
        return 4 * self.hop_out


def pad_to_stride(wav: Tensor, stride: int) -> Tensor:
    """Zero-pad the last axis of ``wav`` (..., N) up to a multiple of ``stride``."""
    n = wav.shape[-1]
    return F.pad(wav, (0, (-n) % stride))


class _Down(nn.Module):
    """(B, C, L) -> (B, C, L / s): conv of kernel 2s, stride s, padded (s // 2, s - s // 2)."""

    def __init__(self, dim: int, s: int):
        super().__init__()
        self.s = s
        self.conv = nn.Conv1d(dim, dim, 2 * s, stride=s) if s > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.s == 1:
            return x
        return self.conv(F.pad(x, (self.s // 2, self.s - self.s // 2), mode="replicate"))


class _Up(nn.Module):
    """(B, C, L) -> (B, C, L * u): transposed conv of kernel 2u, stride u, trimmed to L * u."""

    def __init__(self, dim: int, u: int):
        super().__init__()
        self.u = u
        self.conv = nn.ConvTranspose1d(dim, dim, 2 * u, stride=u) if u > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.u == 1:
            return x
        n = x.shape[-1] * self.u
        y = self.conv(x)  # (L - 1) u + 2u = (L + 1) u samples
        left = self.u // 2
        return y[..., left:left + n]


class WaveVAE(nn.Module):
    """``encode(wav) -> (mu, logvar)``, ``decode(z) -> wav``; see the module docstring.

    Shapes: wav (B, N) with ``N % stride == 0``; mu, logvar, z (B, latent_dim, N / stride).
    """

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = c = config
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop, n_mels=c.n_mels, power=1.0,
            center=True, norm="slaney", mel_scale="slaney")
        k = c.kernel_size
        self.enc_in = nn.Conv1d(c.n_mels, c.enc_dim, k, padding=k // 2)
        self.enc_norm = ChannelNorm(c.enc_dim)
        stages = [nn.ModuleList(ConvNeXtBlock(c.enc_dim, k, c.ff_mult) for _ in range(c.enc_layers))]
        self.downs = nn.ModuleList(_Down(c.enc_dim, s) for s in c.down)
        stages += [nn.ModuleList(ConvNeXtBlock(c.enc_dim, k, c.ff_mult) for _ in range(c.enc_layers)) for _ in c.down]
        self.enc_stages = nn.ModuleList(stages)
        self.enc_out = nn.Sequential(ChannelNorm(c.enc_dim), nn.Conv1d(c.enc_dim, 2 * c.latent_dim, 1))
        with torch.no_grad():  # start with a small posterior noise (logvar = logvar_init): against early collapse
            self.enc_out[1].bias[c.latent_dim:].fill_(c.logvar_init)

        self.dec_low = VocosBackbone(c.latent_dim, c.dec_dim, c.ff_mult * c.dec_dim, c.dec_low_layers)
        self.upsample = _Up(c.dec_dim, c.up)
        self.dec_high = VocosBackbone(c.dec_dim, c.dec_dim, c.ff_mult * c.dec_dim, c.dec_layers)
        self.head = ISTFTHead(c.dec_dim, c.n_fft_out, c.hop_out, padding="center")
        self.register_buffer("latent_mean", torch.zeros(c.latent_dim))
        self.register_buffer("latent_std", torch.ones(c.latent_dim))

    # -- encoder ------------------------------------------------------------------------------
    def _check_wav(self, wav: Tensor) -> None:
        s = self.config.stride
        if wav.dim() != 2 or wav.shape[-1] == 0 or wav.shape[-1] % s:
            raise ValueError(f"wav must be (B, N) with N a positive multiple of {s} (use pad_to_stride), "
                             f"got {tuple(wav.shape)}")

    def features(self, wav: Tensor) -> Tensor:
        """wav (B, N) -> log-mel (B, n_mels, N / hop): the fixed front end (last centred frame dropped)."""
        n = wav.shape[-1] // self.config.hop
        m = self.melspec(wav.float())[..., :n]
        return torch.log(m.clamp(min=1e-5))

    def encode(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """wav (B, N) -> (mu, logvar), each (B, latent_dim, N / stride)."""
        self._check_wav(wav)
        h = self.enc_norm(self.enc_in(self.features(wav)))
        for i, blocks in enumerate(self.enc_stages):
            if i > 0:
                h = self.downs[i - 1](h)
            for blk in blocks:
                h = blk(h)
        mu, logvar = self.enc_out(h).chunk(2, dim=1)
        return mu, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    # -- decoder ------------------------------------------------------------------------------
    def decode(self, z: Tensor) -> Tensor:
        """z (B, latent_dim, T) -> wav (B, T * stride)."""
        c = self.config
        if z.dim() != 3 or z.shape[1] != c.latent_dim:
            raise ValueError(f"z must be (B, {c.latent_dim}, T), got {tuple(z.shape)}")
        h = self.upsample(self.dec_low(z).transpose(1, 2))  # (B, dec_dim, T * up)
        # a centred iSTFT of N = T * stride samples needs N / hop_out + 1 frames: repeat the last
        h = F.pad(h, (0, 1), mode="replicate")
        return self.head(self.dec_high(h))  # (B, T * up + 1, dec_dim) -> (B, T * stride)

    def forward(self, wav: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """wav (B, N) -> (wav_hat (B, N), mu, logvar): a reparameterised sample in training, mu in eval."""
        mu, logvar = self.encode(wav)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        return self.decode(z), mu, logvar

    # -- the generator's latent space ---------------------------------------------------------
    @torch.no_grad()
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Per-channel statistics of ``mu`` over the training audio, (latent_dim,) each."""
        self.latent_mean.copy_(mean.reshape(-1))
        self.latent_std.copy_(std.reshape(-1).clamp(min=1e-4))

    def normalize(self, mu: Tensor) -> Tensor:
        """mu (B, latent_dim, T) -> standardised latent (what the generator models)."""
        return (mu - self.latent_mean[:, None]) / self.latent_std[:, None]

    def denormalize(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        return x * self.latent_std[:, None] + self.latent_mean[:, None]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the decoder only (what decoder-only fine-tuning trains)."""
        mods = (self.dec_low, self.upsample, self.dec_high, self.head)
        return [p for m in mods for p in m.parameters()]

    @torch.inference_mode()
    def reconstruct(self, wav: Tensor) -> Tensor:
        """wav (N,) or (B, N), any N -> decode(mu) cut back to N samples (the "oracle" of the table)."""
        squeeze = wav.dim() == 1
        w = wav[None] if squeeze else wav
        n = w.shape[-1]
        out = self.decode(self.encode(pad_to_stride(w.float(), self.config.stride))[0])[..., :n]
        return out[0] if squeeze else out


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), mean over every element: (B, C, T) -> scalar."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
