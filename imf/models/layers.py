"""Building blocks shared by the 1-D backbones. Tensors are (B, C, T) unless stated."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """t (B,) in [0, 1] -> (B, dim) sin/cos features of ``scale * t``."""

    def __init__(self, dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.dim, self.scale = dim, scale

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        dtype = t.dtype if t.is_floating_point() else torch.float32
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / half)
        arg = self.scale * t.to(dtype)[:, None] * freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class TimeEmbedding(nn.Module):
    """``e_t = MLP(sin(t))``: (B,) -> (B, dim). Shared by ``t`` and ``r`` in a student."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq = SinusoidalEmbedding(freq_dim)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.freq(t))


class ChannelNorm(nn.Module):
    """LayerNorm over channels of a (B, C, T) tensor."""

    def __init__(self, dim: int, affine: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=affine, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ConvNeXtBlock(nn.Module):
    """1-D ConvNeXt block; with ``cond_dim`` it is modulated adaLN-zero style by c (B, cond_dim).

    x -> dwconv -> norm -> (1 + scale) * . + shift -> pw(4d) -> GELU -> pw(d) -> gate * . -> + x
    The adaLN projection is zero-initialised, so a fresh conditioned block is the identity.
    """

    def __init__(self, dim: int, kernel_size: int = 7, ff_mult: int = 4, cond_dim: int | None = None):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = ChannelNorm(dim, affine=cond_dim is None)
        self.pw1 = nn.Conv1d(dim, ff_mult * dim, 1)
        self.pw2 = nn.Conv1d(ff_mult * dim, dim, 1)
        self.ada = None
        if cond_dim is not None:
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 3 * dim))
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        h = self.norm(self.dwconv(x))
        if self.ada is not None:
            shift, scale, gate = self.ada(c)[:, :, None].chunk(3, dim=1)
            h = h * (1 + scale) + shift
        h = self.pw2(torch.nn.functional.gelu(self.pw1(h)))
        if self.ada is not None:
            h = h * gate
        x = x + h
        return x if mask is None else x * mask
