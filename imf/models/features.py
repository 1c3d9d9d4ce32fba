"""The log-mel front end (config + transform), shared by the corpus builder, the vocoder and the losses.

It sits in the models layer because networks (the vocoder, the VAE losses) take it as their input
transform; the data layer above uses it to compute and store features. One config is stored with
every corpus.
"""
from __future__ import annotations

import dataclasses

import torch
import torchaudio
from torch import Tensor

from imf.core.config import Config, require


@dataclasses.dataclass(frozen=True)
class MelConfig(Config):
    sample_rate: int = 16000  # Hz, audio rate of the corpus
    n_fft: int = 1024  # FFT size
    win_length: int = 1024  # analysis window
    hop_length: int = 256  # frame hop: 62.5 frames per second at 16 kHz
    n_mels: int = 80  # mel bins
    f_min: float = 0.0  # Hz
    f_max: float = 8000.0  # Hz
    log_floor: float = 1e-5  # magnitudes are clamped here before the natural log

    def validate(self) -> None:
        require(self.sample_rate > 0, "sample_rate", "must be positive")
        require(self.hop_length > 0 and self.win_length <= self.n_fft, "hop_length", "bad STFT geometry")
        require(0 <= self.f_min < self.f_max <= self.sample_rate / 2, "f_max", "must lie in (f_min, sr/2]")

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` samples (centred STFT)."""
        return 1 + n_samples // self.hop_length


class LogMel(torch.nn.Module):
    """waveform (B, N) or (N,) -> natural-log magnitude mel (B, n_mels, 1 + N // hop)."""

    def __init__(self, cfg: MelConfig = MelConfig()):
        super().__init__()
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
            hop_length=cfg.hop_length, f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels,
            power=1.0, center=True, norm="slaney", mel_scale="slaney",
        )

    def forward(self, wav: Tensor) -> Tensor:
        squeeze = wav.dim() == 1
        if squeeze:
            wav = wav[None]
        m = torch.log(torch.clamp(self.mel(wav.float()), min=self.cfg.log_floor))
        return m[0] if squeeze else m
