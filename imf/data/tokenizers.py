"""Tokens at the latent frame rate for Token2Wav.

:class:`PhoneTokenizer` resamples the corpus's frame-level phone alignment (62.5 Hz, 16 ms mel
frames) to the latent rate (25 Hz) by majority vote over the mel frames whose centres fall in
each 40 ms latent frame (ties: the frame nearest the latent frame's centre). It stands in for
CosyVoice2's 25 Hz semantic tokens; any object with ``vocab_size(corpus)`` and
``tokens(corpus, id, n_frames) -> LongTensor (n_frames,)`` replaces it (:class:`Tokenizer`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import numpy as np
import torch
from torch import Tensor


class Tokenizer(Protocol):
    """What the Token2Wav stages need from a tokenizer (swap in semantic tokens here)."""

    def vocab_size(self, corpus) -> int: ...

    def tokens(self, corpus, ident: str, n_frames: int | None = None) -> Tensor: ...


def resample_labels(labels: np.ndarray, src_hop: int, dst_hop: int, n_out: int) -> np.ndarray:
    """Frame labels at hop ``src_hop`` (frame k centred on sample ``k * src_hop``) -> ``n_out``
    labels at hop ``dst_hop`` (frame j covers samples ``[j dst_hop, (j + 1) dst_hop)``).

    Majority over the source frames whose centres fall in the window; a tie (or no source
    frame in the window) takes the source frame nearest the window centre. Indices past the
    end are clamped to the last source frame. (n_src,) -> (n_out,).
    """
    n_src = len(labels)
    out = np.empty(n_out, dtype=labels.dtype)
    for j in range(n_out):
        lo = -(-(j * dst_hop) // src_hop)  # ceil
        hi = -(-((j + 1) * dst_hop) // src_hop)
        seg = labels[np.clip(np.arange(lo, hi), 0, n_src - 1)]
        nearest = labels[min(n_src - 1, int(round((j + 0.5) * dst_hop / src_hop)))]
        if len(seg) == 0:
            out[j] = nearest
            continue
        vals, counts = np.unique(seg, return_counts=True)
        best = vals[counts == counts.max()]
        out[j] = best[0] if len(best) == 1 else nearest
    return out


@dataclasses.dataclass(frozen=True)
class PhoneTokenizer:
    """25 Hz phone tokens from the corpus alignments (see the module docstring).

    ``stride``: samples per token frame (the VAE's stride, 640 at 16 kHz -> 25 Hz).
    ``tokens(corpus, id, n_frames)`` -> LongTensor (n_frames,), default ``ceil(N / stride)``.
    """
    stride: int = 640

    def vocab_size(self, corpus) -> int:
        return int(corpus.n_tokens)

    def tokens(self, corpus, ident: str, n_frames: int | None = None) -> Tensor:
        frame_tokens = corpus.tokens(ident).numpy()
        if n_frames is None:
            n_frames = math.ceil(int(corpus.row(ident)["n_samples"]) / self.stride)
        hop = corpus.mel_config.hop_length
        return torch.from_numpy(resample_labels(frame_tokens, hop, self.stride, n_frames)).long()
