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
        # After the depthwise conv the block runs channels-last (B, T, C), as ConvNeXt does: the pointwise
        # layers are GEMMs there (F.linear on the Conv1d weights, so checkpoints are unchanged). Measured on 2
        # CPU cores: a token2mel training step 0.59 -> 0.48 s (dim 192, batch 16 x 192 frames); equal to the
        # (B, C, T) Conv1d form to float rounding (tests/test_models.py).
        h = self.norm.norm(self.dwconv(x).transpose(1, 2))  # ChannelNorm's LayerNorm, already channels-last
        if self.ada is not None:
            shift, scale, gate = self.ada(c)[:, None, :].chunk(3, dim=-1)
            h = h * (1 + scale) + shift
        h = nn.functional.linear(h, self.pw1.weight[..., 0], self.pw1.bias)
        h = nn.functional.linear(nn.functional.gelu(h), self.pw2.weight[..., 0], self.pw2.bias)
        if self.ada is not None:
            h = h * gate
        x = x + h.transpose(1, 2)
        return x if mask is None else x * mask


class PromptConditioned(nn.Module):
    """Base of the package's generators: the time path and the text / speaker-prompt encoders.

    A subclass calls :meth:`init_conditioning` first in ``__init__`` and gets

    * ``embed_time(t, r=None)`` (B,) -> (B, dim): ``e_t = MLP(sin(t))``; with ``mean_flow``
      also ``e_r`` through the SAME modules and ``time_mix = Linear(2 dim, dim, bias=False)``
      on ``[e_t, e_r]`` after the MLP (a student adds ``r`` here; ``W = [I | 0]`` makes it
      equal its teacher);
    * ``encode_text(tokens, mask, drop)`` (B, T) -> (B, dim, T), dropped rows use a null token;
    * ``encode_speaker(prompt, prompt_mask, drop)`` (B, C, Tp) -> (B, dim), a masked mean of
      an encoded prompt of another utterance (dropped rows use a learned null speaker);
    * ``estimator_parameters()``: everything but the text and prompt encoders.
    """

    def init_conditioning(self, dim: int, in_channels: int, n_tokens: int, kernel_size: int, ff_mult: int,
                          text_layers: int, prompt_layers: int, time_freq_dim: int, mean_flow: bool) -> None:
        self.null_token = n_tokens  # extra embedding row for dropped conditioning
        self.token_embed = nn.Embedding(n_tokens + 1, dim)
        self.text_encoder = nn.ModuleList(ConvNeXtBlock(dim, kernel_size, ff_mult) for _ in range(text_layers))
        self.prompt_in = nn.Conv1d(in_channels, dim, 3, padding=1)
        self.prompt_encoder = nn.ModuleList(ConvNeXtBlock(dim, kernel_size, ff_mult) for _ in range(prompt_layers))
        self.speaker_proj = nn.Linear(dim, dim)
        self.null_speaker = nn.Parameter(torch.zeros(dim))
        self.time_embed = TimeEmbedding(dim, time_freq_dim)
        self.time_mix = nn.Linear(2 * dim, dim, bias=False) if mean_flow else None

    def embed_time(self, t: Tensor, r: Tensor | None = None) -> Tensor:
        """(B,) -> (B, dim). Teacher: ``e_t``. Mean-flow model: ``W [e_t, e_r]`` (``r=None`` means r = t)."""
        e_t = self.time_embed(t)
        if self.time_mix is None:
            return e_t
        e_r = self.time_embed(t if r is None else r)
        return self.time_mix(torch.cat([e_t, e_r], dim=-1))

    def encode_text(self, tokens: Tensor, mask: Tensor, drop: Tensor | None) -> Tensor:
        """tokens (B, T) long, mask (B, T) bool, drop (B,) bool or None -> (B, dim, T)."""
        if drop is not None:
            tokens = torch.where(drop[:, None], torch.full_like(tokens, self.null_token), tokens)
        m = mask[:, None].to(torch.float32)
        h = self.token_embed(tokens).transpose(1, 2) * m
        for blk in self.text_encoder:
            h = blk(h, mask=m)
        return h

    def encode_speaker(self, prompt: Tensor, prompt_mask: Tensor, drop: Tensor | None) -> Tensor:
        """prompt (B, C, Tp), prompt_mask (B, Tp) bool, drop (B,) bool or None -> (B, dim)."""
        m = prompt_mask[:, None].to(torch.float32)
        h = self.prompt_in(prompt * m) * m
        for blk in self.prompt_encoder:
            h = blk(h, mask=m)
        s = self.speaker_proj(h.sum(-1) / m.sum(-1).clamp(min=1.0))
        if drop is not None:
            s = torch.where(drop[:, None], self.null_speaker.expand_as(s), s)
        return s

    def estimator_parameters(self) -> list[nn.Parameter]:
        """Everything but the text and prompt encoders (``freeze(model, "encoder")``)."""
        enc = {id(p) for mod in (self.token_embed, self.text_encoder, self.prompt_in, self.prompt_encoder,
                                 self.speaker_proj) for p in mod.parameters()}
        enc.add(id(self.null_speaker))
        return [p for p in self.parameters() if id(p) not in enc]
