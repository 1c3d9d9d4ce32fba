"""DiT-1D latent generator for Token2Wav: 25 Hz tokens + a speaker prompt -> VAE latents.

``model(x, *, t, r=None, cond) -> v``, the package's one velocity signature:
x (B, latent_dim, T) standardised latents, t / r (B,), output (B, latent_dim, T).

``cond``: ``tokens`` (B, T) long (frame-aligned with x), ``mask`` (B, T) bool,
``prompt`` (B, latent_dim, Tp) standardised latents of ANOTHER utterance of the same speaker,
``prompt_mask`` (B, Tp) bool, optional ``drop`` (B,) bool (classifier-free guidance: those
rows use a null token and a null speaker).

Architecture (a CPU-sized DiT, Peebles & Xie 2023, in 1-D):

* tokens -> embedding -> ConvNeXt blocks -> added to ``in_proj(x)``; a depthwise conv gives
  relative position (no absolute positions, so any length works);
* speaker: the prompt latent -> conv + ConvNeXt blocks -> masked mean -> Linear, a learned
  embedding of a prompt (not a speaker id), so unseen speakers work from prompt audio alone;
* ``c = e_time + e_speaker`` modulates every block adaLN-zero style: ``x + g * f((1 + s) LN(x) + b)``
  for self-attention over the T frames and for the MLP, with the modulation zero-initialised
  (a fresh block is the identity); the output projection is zero-initialised too;
* attention is written out (``softmax(q k^T / sqrt(d) + mask) v``) when ``attn_impl="math"``
  (the default): on CPU ``F.scaled_dot_product_attention`` has no forward-mode AD, so the
  MeanFlow objective's ``torch.func.jvp`` fails through it (checked with torch 2.14.1).
  ``attn_impl="sdpa"`` is the same function, for inference only.

Time: ``e_t = MLP(sin(t))``; with ``mean_flow=True`` also ``e_r`` through the SAME modules and
``time_mix = Linear(2D, D, bias=False)`` applied to ``[e_t, e_r]`` after the MLP — the protocol
of :func:`imf.models.student.student_from_teacher` (``W = [I | 0]`` makes a fresh student
equal its teacher bit for bit).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imf.core.config import Config, require
from imf.models.checks import check_inputs
from imf.models.layers import PromptConditioned


@dataclasses.dataclass(frozen=True)
class DiTConfig(Config):
    latent_dim: int = 16  # channels of x (the VAE latent)
    n_tokens: int = 128  # token vocabulary incl. pad id 0 (set from the tokenizer)
    dim: int = 128  # transformer width
    n_layers: int = 4  # DiT blocks
    n_heads: int = 4  # attention heads (dim % n_heads == 0)
    ff_mult: int = 2  # MLP expansion
    token_layers: int = 2  # ConvNeXt blocks of the token encoder
    prompt_layers: int = 1  # ConvNeXt blocks of the speaker-prompt encoder
    kernel_size: int = 5  # depthwise kernel of the conv blocks and the positional conv
    time_freq_dim: int = 256  # sinusoidal features of t
    attn_impl: str = "math"  # "math" (JVP-safe) | "sdpa" (F.scaled_dot_product_attention, inference)
    mean_flow: bool = False  # True: u(x, t, r) with the [e_t, e_r] mix

    def validate(self) -> None:
        require(self.latent_dim >= 1, "latent_dim", "must be >= 1")
        require(self.n_tokens >= 2, "n_tokens", "needs at least pad + one token")
        require(self.dim > 0 and self.dim % self.n_heads == 0, "dim", "must be a positive multiple of n_heads")
        require(self.n_layers >= 1, "n_layers", "must be >= 1")
        require(self.kernel_size % 2 == 1, "kernel_size", "must be odd")
        require(self.attn_impl in ("math", "sdpa"), "attn_impl", "must be 'math' or 'sdpa'")


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, T, D); shift, scale (B, D) -> ``x (1 + scale) + shift``."""
    return x * (1 + scale[:, None]) + shift[:, None]


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, impl: str = "math") -> Tensor:
    """Multi-head attention. q, k, v (B, H, T, d); key_mask (B, T) bool (True = attend) -> (B, H, T, d)."""
    bias = None
    if key_mask is not None:
        bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~key_mask, float("-inf"))
        bias = bias[:, None, None, :]
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    logits = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1) @ v


class DiTBlock(nn.Module):
    """adaLN-zero transformer block on (B, T, D) conditioned by c (B, D)."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int, attn_impl: str):
        super().__init__()
        self.n_heads, self.attn_impl = n_heads, attn_impl
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(ff_mult * dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), sh1, sc1)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v, mask, self.attn_impl).transpose(1, 2).reshape(b, n, d)
        x = x + g1[:, None] * self.proj(a)
        x = x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))
        return x


class DiT1D(PromptConditioned):
    """The Token2Wav latent generator; see the module docstring for ``cond`` and shapes."""

    def __init__(self, config: DiTConfig = DiTConfig()):
        super().__init__()
        self.config = c = config
        d, k = c.dim, c.kernel_size
        self.init_conditioning(d, c.latent_dim, c.n_tokens, k, 2, c.token_layers, c.prompt_layers,
                               c.time_freq_dim, c.mean_flow)
        self.in_proj = nn.Conv1d(c.latent_dim, d, 1)
        self.pos_conv = nn.Conv1d(d, d, k, padding=k // 2, groups=d)
        self.blocks = nn.ModuleList(DiTBlock(d, c.n_heads, c.ff_mult, c.attn_impl) for _ in range(c.n_layers))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.proj_out = nn.Linear(d, c.latent_dim)
        for m in (self.ada_out[1], self.proj_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, *, t: Tensor, r: Tensor | None = None, cond: Mapping[str, Tensor]) -> Tensor:
        cfg = self.config
        check_inputs(x, t, r, cond, channels=cfg.latent_dim, n_tokens=cfg.n_tokens, mean_flow=cfg.mean_flow)
        b, ch, n = x.shape
        mask = cond.get("mask")
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        drop = cond.get("drop")
        m = mask[:, None].to(x.dtype)
        c = self.embed_time(t, r) + self.encode_speaker(cond["prompt"], cond["prompt_mask"], drop)
        h = (self.in_proj(x) + self.encode_text(cond["tokens"], mask, drop)) * m
        h = (h + self.pos_conv(h)) * m
        h = h.transpose(1, 2)  # (B, T, D)
        key_mask = None if bool(mask.all()) else mask
        for blk in self.blocks:
            h = blk(h, c, key_mask)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        h = modulate(self.norm_out(h), shift, scale)
        return self.proj_out(h).transpose(1, 2) * m
