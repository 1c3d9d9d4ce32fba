"""Token2Wav (Dai et al.): tokens + speaker prompt -> latent (DiT-1D generator) -> waveform (VAE decoder)."""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import Tensor, nn

from imf.core.config import Config, require
from imf.models.dit import DiT1D, DiTConfig
from imf.models.vae import VAEConfig, WaveVAE


@dataclasses.dataclass(frozen=True)
class Token2WavConfig(Config):
    vae: VAEConfig = VAEConfig()  # the waveform VAE (only its decoder runs at synthesis)
    generator: DiTConfig = DiTConfig()  # the latent generator

    def validate(self) -> None:
        require(self.vae.latent_dim == self.generator.latent_dim, "generator",
                f"latent_dim {self.generator.latent_dim} differs from the VAE's {self.vae.latent_dim}")


class Token2Wav(nn.Module):
    """Tokens + speaker prompt -> waveform: ``generator`` (latents) then ``vae.decode``.

    The unit that decoder-only and joint fine-tuning train and checkpoint (so a fine-tuned
    system loads from its checkpoint alone). Sampling a latent along a time grid is the
    sampler's job (:func:`imf.eval.systems.synthesize`); this class only composes the parts.
    """

    def __init__(self, config: Token2WavConfig = Token2WavConfig()):
        super().__init__()
        self.config = config
        self.vae = WaveVAE(config.vae)
        self.generator = DiT1D(config.generator)

    @classmethod
    def from_parts(cls, vae: WaveVAE, generator: nn.Module) -> "Token2Wav":
        """A system holding copies of the weights (and latent statistics) of ``vae`` and ``generator``."""
        m = cls(Token2WavConfig(vae=vae.config, generator=generator.config))
        m.vae.load_state_dict(vae.state_dict())
        m.generator.load_state_dict(generator.state_dict())
        return m.to(next(vae.parameters()).device)

    def one_step(self, z_0: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        """Differentiable one-step latent: ``x_1 = z_0 + u(z_0, t=0, r=1)`` (B, latent_dim, T), standardised."""
        b = z_0.shape[0]
        t, r = torch.zeros(b, device=z_0.device), torch.ones(b, device=z_0.device)
        return z_0 + self.generator(z_0, t=t, r=r, cond=cond)

    def decode(self, x: Tensor) -> Tensor:
        """Standardised latent (B, latent_dim, T) -> wav (B, T * stride)."""
        return self.vae.decode(self.vae.denormalize(x))
