"""Log-mel -> waveform: a small Vocos-style vocoder and a Griffin-Lim fallback.

Both take the package's one feature (:class:`imf.models.features.LogMel`: 16 kHz, n_fft 1024,
hop 256, 80 slaney mel bins, natural-log magnitude) and return audio aligned to the mel's
frames: frame ``j`` is centred on sample ``j * hop``, so T frames give ``N = (T - 1) * hop``
samples (the inverse of ``T = 1 + N // hop``).

:class:`Vocoder` (after Vocos, Siuzdak 2023): log-mel (B, n_mels, T) -> Conv1d -> LayerNorm
-> ConvNeXt blocks -> LayerNorm -> per-frame Linear -> (log-magnitude, angle) of an n_fft
STFT -> ``torch.istft`` (centred, Hann). The spectrum is ``exp(min(log|S|, max)) * (cos p +
i sin p)``: predicting an unconstrained angle through cos/sin avoids phase wrapping.
Every frame is produced at the mel's own frame rate, so there is no upsampling stack.
One change from Vocos (``mag_prior``, default on): the head predicts log|S| as a residual
on ``log(pinv(F) exp(mel))``, F the slaney filterbank, so the network starts from the
least-squares magnitude and spends its few CPU minutes on the phase and the fine structure.

:class:`GriffinLim`: pseudo-inverse of the slaney filterbank, then Griffin-Lim phase
retrieval. No training, deterministic (zero initial phase); the floor for the judges.

:func:`load_vocoder` gives one or the other behind the same ``vocode(mel) -> wav``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn

from imf.core.checkpoints import CheckpointError, load_checkpoint, load_weights
from imf.core.config import Config, require
from imf.models.features import MelConfig
from imf.models.layers import ConvNeXtBlock


@dataclasses.dataclass(frozen=True)
class VocoderConfig(Config):
    n_mels: int = 80  # input mel bins (the corpus MelConfig)
    n_fft: int = 1024  # STFT of the output (= the mel's, so frames line up one to one)
    hop_length: int = 256  # samples per frame (= the mel's hop)
    dim: int = 192  # channels of the ConvNeXt stack
    n_layers: int = 6  # ConvNeXt blocks
    kernel_size: int = 7  # depthwise kernel (frames)
    ff_mult: int = 3  # pointwise expansion (Vocos uses 3)
    log_mag_max: float = 7.0  # log|S| is clamped here before exp (|S| <= ~1100; full-scale sine peaks ~256)
    mag_prior: bool = True  # predict log|S| as a residual on the mel filterbank's pseudo-inverse (measured:
    #   copy-synthesis PESQ 1.8 -> 2.2 after 500 steps on synth-small; False is plain Vocos)
    sample_rate: int = 16000  # mel geometry, used only by mag_prior (the corpus MelConfig)
    f_min: float = 0.0  # Hz, mel geometry (mag_prior)
    f_max: float = 8000.0  # Hz, mel geometry (mag_prior)

    def validate(self) -> None:
        require(self.n_mels >= 1, "n_mels", "must be >= 1")
        require(self.n_fft >= 2 and self.n_fft % 2 == 0, "n_fft", "must be an even int >= 2")
        require(0 < self.hop_length <= self.n_fft // 2, "hop_length", "must lie in (0, n_fft / 2] for overlap-add")
        require(self.dim >= 1 and self.n_layers >= 1, "dim", "dim and n_layers must be >= 1")
        require(self.kernel_size % 2 == 1, "kernel_size", "must be odd (same padding)")

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def n_samples(self, n_frames: int) -> int:
        """Samples produced for ``n_frames`` mel frames: ``(T - 1) * hop``."""
        return (n_frames - 1) * self.hop_length


def _as_batch(mel: Tensor, n_mels: int) -> tuple[Tensor, bool]:
    """(n_mels, T) or (B, n_mels, T) -> (B, n_mels, T), squeeze flag; shape-checked."""
    squeeze = mel.dim() == 2
    if squeeze:
        mel = mel[None]
    if mel.dim() != 3 or mel.shape[1] != n_mels or mel.shape[2] < 2:
        raise ValueError(f"mel must be (B, {n_mels}, T) or ({n_mels}, T) with T >= 2, got {tuple(mel.shape)}")
    return mel.float(), squeeze


class Vocoder(nn.Module):
    """``vocoder(mel) -> wav``: log-mel (B, n_mels, T) -> waveform (B, (T - 1) * hop).

    Trained with :func:`imf.train.vocoder.train_vocoder`; rebuild from a checkpoint with
    :func:`load_vocoder`.
    """

    def __init__(self, config: VocoderConfig = VocoderConfig()):
        super().__init__()
        self.config = c = config
        self.embed = nn.Conv1d(c.n_mels, c.dim, c.kernel_size, padding=c.kernel_size // 2)
        self.norm_in = nn.LayerNorm(c.dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(c.dim, c.kernel_size, c.ff_mult) for _ in range(c.n_layers))
        self.norm_out = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Linear(c.dim, 2 * c.n_bins)  # [log|S| ; angle] per frame
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        if c.mag_prior:
            fb = torchaudio.functional.melscale_fbanks(c.n_bins, c.f_min, c.f_max, c.n_mels, c.sample_rate,
                                                       norm="slaney", mel_scale="slaney")  # (bins, n_mels)
            self.register_buffer("mel_pinv", torch.linalg.pinv(fb.T), persistent=False)  # (bins, n_mels)

    def prior_log_mag(self, mel: Tensor) -> Tensor:
        """log-mel (B, n_mels, T) -> log of the least-squares linear magnitude (B, bins, T), floored at 1e-5."""
        return torch.log(torch.clamp(self.mel_pinv @ torch.exp(mel), min=1e-5))

    def log_mag_and_angle(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """log-mel (B, n_mels, T) -> log|S| (B, bins, T) (clamped at ``log_mag_max``), angle (B, bins, T) (unwrapped)."""
        h = self.embed(mel)
        h = self.norm_in(h.transpose(1, 2)).transpose(1, 2)
        for blk in self.blocks:
            h = blk(h)
        h = self.head(self.norm_out(h.transpose(1, 2))).transpose(1, 2)  # (B, 2 * bins, T)
        log_mag, angle = h.chunk(2, dim=1)
        if self.config.mag_prior:
            log_mag = log_mag + self.prior_log_mag(mel)
        return log_mag.clamp(max=self.config.log_mag_max), angle

    def spectrum(self, mel: Tensor) -> Tensor:
        """log-mel (B, n_mels, T) -> complex STFT ``|S| (cos p + i sin p)`` (B, n_fft // 2 + 1, T)."""
        return self.to_complex(*self.log_mag_and_angle(mel))

    @staticmethod
    def to_complex(log_mag: Tensor, angle: Tensor) -> Tensor:
        """``exp(log_mag) (cos angle + i sin angle)``, elementwise."""
        mag = torch.exp(log_mag)
        return torch.complex(mag * torch.cos(angle), mag * torch.sin(angle))

    def synthesize(self, spec: Tensor) -> Tensor:
        """complex STFT (B, bins, T) -> wav (B, (T - 1) * hop): centred Hann inverse STFT."""
        c = self.config
        return torch.istft(spec, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.n_fft,
                           window=self.window, center=True, length=c.n_samples(spec.shape[-1]))

    def forward(self, mel: Tensor) -> Tensor:
        """mel (B, n_mels, T) -> wav (B, (T - 1) * hop)."""
        c = self.config
        if mel.dim() != 3 or mel.shape[1] != c.n_mels or mel.shape[2] < 2:
            raise ValueError(f"mel must be (B, {c.n_mels}, T) with T >= 2, got {tuple(mel.shape)}")
        return self.synthesize(self.spectrum(mel))

    @torch.inference_mode()
    def vocode(self, mel: Tensor) -> Tensor:
        """mel (n_mels, T) or (B, n_mels, T) -> wav ((T - 1) * hop,) or (B, (T - 1) * hop)."""
        mel, squeeze = _as_batch(mel, self.config.n_mels)
        wav = self(mel.to(self.window.device))
        return wav[0] if squeeze else wav


class GriffinLim(nn.Module):
    """Training-free fallback with the :class:`Vocoder` interface: ``vocode(mel) -> wav``.

    ``|S| ~= relu(pinv(F) exp(mel))`` with F the slaney mel filterbank of ``mel_config``
    (least squares, as :class:`torchaudio.transforms.InverseMelScale`), then ``n_iter``
    Griffin-Lim iterations (momentum 0.99) from zero phase, so the output is deterministic.
    Muffled and phasey: a floor for the judges, not a reference.
    """

    def __init__(self, mel_config: MelConfig = MelConfig(), n_iter: int = 64, momentum: float = 0.99):
        super().__init__()
        self.mel_config = m = mel_config
        self.n_iter, self.momentum = n_iter, momentum
        # parameters must equal LogMel's MelSpectrogram (power 1, slaney norm and scale)
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=m.n_fft // 2 + 1, n_mels=m.n_mels, sample_rate=m.sample_rate, f_min=m.f_min, f_max=m.f_max,
            norm="slaney", mel_scale="slaney")
        self.register_buffer("window", torch.hann_window(m.win_length), persistent=False)

    def magnitude(self, mel: Tensor) -> Tensor:
        """log-mel (B, n_mels, T) -> linear magnitude (B, n_fft // 2 + 1, T), >= 0."""
        # the log floor marks silence: map it back to exact zeros rather than to 1e-5
        lin = torch.exp(mel) * (mel > math.log(self.mel_config.log_floor) + 1e-6)
        return self.inverse_mel(lin)

    def forward(self, mel: Tensor) -> Tensor:
        """mel (B, n_mels, T) -> wav (B, (T - 1) * hop)."""
        m = self.mel_config
        if mel.dim() != 3 or mel.shape[1] != m.n_mels or mel.shape[2] < 2:
            raise ValueError(f"mel must be (B, {m.n_mels}, T) with T >= 2, got {tuple(mel.shape)}")
        n = (mel.shape[-1] - 1) * m.hop_length
        # Griffin-Lim re-analyses its own output with a reflect-padded STFT, which needs more
        # than n_fft / 2 samples: pad very short inputs with silent frames, then cut back to n
        min_frames = m.n_fft // (2 * m.hop_length) + 2
        if mel.shape[-1] < min_frames:
            mel = torch.nn.functional.pad(mel, (0, min_frames - mel.shape[-1]), value=math.log(m.log_floor))
        wav = torchaudio.functional.griffinlim(
            self.magnitude(mel.float()), window=self.window, n_fft=m.n_fft, hop_length=m.hop_length,
            win_length=m.win_length, power=1.0, n_iter=self.n_iter, momentum=self.momentum,
            length=(mel.shape[-1] - 1) * m.hop_length, rand_init=False)
        return wav[..., :n]

    @torch.inference_mode()
    def vocode(self, mel: Tensor) -> Tensor:
        """mel (n_mels, T) or (B, n_mels, T) -> wav ((T - 1) * hop,) or (B, (T - 1) * hop)."""
        mel, squeeze = _as_batch(mel, self.mel_config.n_mels)
        wav = self(mel)
        return wav[0] if squeeze else wav


def load_vocoder(path: str | Path | None, mel_config: MelConfig = MelConfig(), ema: bool = True) -> nn.Module:
    """A vocoder with ``vocode(mel) -> wav``, in eval mode.

    ``path``: a checkpoint (``.../checkpoints/last.pt``) or a run folder holding one -> the
    trained :class:`Vocoder` (EMA weights by default); ``None`` -> :class:`GriffinLim` with a
    warning. The file is read by :func:`imf.core.checkpoints.load_checkpoint`, the one loader.
    """
    if path is None:
        warnings.warn("no vocoder checkpoint given: using the Griffin-Lim fallback (muffled, phasey audio; "
                      "train one with imf.train.vocoder.train_vocoder)", stacklevel=2)
        return GriffinLim(mel_config).eval()
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    weights = "ema" if ema else "model"
    state = load_checkpoint(path, require=("model_class", "model_config", weights))
    if state["model_class"] != "Vocoder":
        raise CheckpointError(f"checkpoint {path} holds a {state['model_class']!r}, not a Vocoder")
    model = Vocoder(VocoderConfig.from_dict(state["model_config"]))
    if model.config.n_mels != mel_config.n_mels or model.config.hop_length != mel_config.hop_length:
        raise ValueError(f"{path}: vocoder expects {model.config.n_mels} mels / hop {model.config.hop_length}, "
                         f"the features have {mel_config.n_mels} / {mel_config.hop_length}")
    load_weights(model, state[weights], path, weights)
    return model.eval().requires_grad_(False)
