"""Token2mel flow-matching backbone: a 1-D ConvNeXt with adaLN time/speaker conditioning.

The CosyVoice2-flow analogue at CPU scale. Conditioning:
  * frame-aligned phone tokens (B, T), encoded by a small ConvNeXt text encoder and added
    to the projected input;
  * the speaker, as a prompt mel of ANOTHER utterance of the same speaker (B, 80, Tp),
    encoded and mean-pooled into a vector — so unseen speakers work from a prompt alone;
  * time: ``e_t = MLP(sin(t))``. A mean-flow student (``mean_flow=True``) also embeds ``r``
    with the SAME modules and mixes ``W [e_t, e_r]`` with ``W`` initialised ``[I | 0]``
    (see :mod:`imf.models.student`), so a fresh student equals its teacher exactly.

Classifier-free guidance: rows with ``cond["drop"]`` use a null token and a null speaker.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import Tensor, nn

from imf.core.config import Config, require
from imf.models.checks import InputError, check_cond, check_inputs
from imf.models.layers import ChannelNorm, ConvNeXtBlock, PromptConditioned


@dataclasses.dataclass(frozen=True)
class Token2MelConfig(Config):
    n_mels: int = 80  # feature bins of x
    n_tokens: int = 128  # phone vocabulary incl. pad id 0 (set from the corpus)
    dim: int = 192  # channels
    n_layers: int = 6  # conditioned ConvNeXt blocks of the estimator
    text_layers: int = 2  # unconditioned blocks of the token encoder
    prompt_layers: int = 2  # blocks of the prompt (speaker) encoder
    kernel_size: int = 7  # depthwise kernel
    ff_mult: int = 4  # pointwise expansion
    time_freq_dim: int = 256  # sinusoidal features of t
    mean_flow: bool = False  # True: u(x, t, r) student with the [e_t, e_r] mix

    def validate(self) -> None:
        require(self.n_tokens >= 2, "n_tokens", "needs at least pad + one phone")
        require(self.dim > 0 and self.dim % 2 == 0, "dim", "must be a positive even int")
        require(self.n_layers >= 1, "n_layers", "must be >= 1")


class Token2Mel(PromptConditioned):
    """``model(x, *, t, r=None, cond) -> v``: x (B, n_mels, T), t/r (B,), output (B, n_mels, T).

    ``cond``: ``tokens`` (B, T) long, ``mask`` (B, T) bool, ``prompt`` (B, n_mels, Tp),
    ``prompt_mask`` (B, Tp) bool, optional ``drop`` (B,) bool.
    """

    def __init__(self, config: Token2MelConfig):
        super().__init__()
        self.config = c = config
        d = c.dim
        self.init_conditioning(d, c.n_mels, c.n_tokens, c.kernel_size, c.ff_mult, c.text_layers,
                               c.prompt_layers, c.time_freq_dim, c.mean_flow)
        self.in_proj = nn.Conv1d(c.n_mels, d, 1)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(d, c.kernel_size, c.ff_mult, cond_dim=d) for _ in range(c.n_layers))
        self.norm_out = ChannelNorm(d, affine=False)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.proj_out = nn.Conv1d(d, c.n_mels, 1)
        for m in (self.ada_out[1], self.proj_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.no_grad()
    def encode_cond(self, cond: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``cond`` plus its encodings, for a FROZEN model called many times on one batch.

        Adds ``h_text``/``h_text_null`` (B, dim, T) and ``spk`` (B, dim): the text encoding with
        and without dropped conditioning and the speaker vector. :meth:`forward` then skips
        the encoders (it picks the null rows by ``drop``), with bit-identical output. The
        keys are batch-first, so they survive row selection and guidance's batch doubling.
        """
        tokens = cond.get("tokens")
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise InputError(f"cond['tokens']: expected shape (B, T), got "
                             f"{tuple(tokens.shape) if isinstance(tokens, Tensor) else tokens!r}")
        check_cond(cond, *tokens.shape, channels=self.config.n_mels, n_tokens=self.config.n_tokens)
        mask = cond.get("mask")
        if mask is None:
            mask = torch.ones_like(cond["tokens"], dtype=torch.bool)
        b = cond["tokens"].shape[0]
        keep = torch.zeros(b, dtype=torch.bool, device=mask.device)
        return {**cond, "h_text": self.encode_text(cond["tokens"], mask, keep),
                "h_text_null": self.encode_text(cond["tokens"], mask, ~keep),
                "spk": self.encode_speaker(cond["prompt"], cond["prompt_mask"], None)}

    def forward(self, x: Tensor, *, t: Tensor, r: Tensor | None = None, cond: Mapping[str, Tensor]) -> Tensor:
        """x (B, n_mels, T), t / r (B,) -> (B, n_mels, T); bad inputs raise
        :class:`~imf.models.checks.InputError` naming the tensor (see :mod:`imf.models.checks`)."""
        cfg = self.config
        check_inputs(x, t, r, cond, channels=cfg.n_mels, n_tokens=cfg.n_tokens, mean_flow=cfg.mean_flow)
        b, _, n = x.shape
        mask = cond.get("mask")
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
        drop = cond.get("drop")
        m = mask[:, None].to(x.dtype)
        if "h_text" in cond:  # encodings cached by encode_cond
            h_text, spk = cond["h_text"], cond["spk"]
            if drop is not None:
                h_text = torch.where(drop[:, None, None], cond["h_text_null"], h_text)
                spk = torch.where(drop[:, None], self.null_speaker.expand_as(spk), spk)
        else:
            h_text = self.encode_text(cond["tokens"], mask, drop)
            spk = self.encode_speaker(cond["prompt"], cond["prompt_mask"], drop)
        c = self.embed_time(t, r) + spk
        h = (self.in_proj(x) + h_text) * m
        for blk in self.blocks:
            h = blk(h, c, mask=m)
        shift, scale = self.ada_out(c)[:, :, None].chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        return self.proj_out(h) * m
