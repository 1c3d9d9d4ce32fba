"""The evaluation set: fixed utterances, prompts and noise ``z_0`` that every system sees.

Built once, deterministically from its seed, so teacher, students and baselines are compared
on identical noise at every NFE (comparable curves and listening pairs). One class for both
spaces: :func:`make_eval_set` (token2mel: normalised mels) and :func:`make_latent_eval_set`
(Token2Wav: standardised VAE latents of whole utterances, with their real waveforms).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor

from imf.data.dataset import MelTokenDataset, collate
from imf.data.waves import TokenWaveDataset, pad_stack


@dataclasses.dataclass
class EvalSet:
    """A padded batch of evaluation utterances with their fixed noise.

    ids: N utterance ids; z_1: (N, C, T) normalised real mel (token2mel) or standardised VAE
    latent (Token2Wav); mask: (N, T); cond: batch-first conditioning; z_0: (N, C, T) noise from
    the eval generator; corpus: for (de)normalising and the real audio; texts, speakers (N,)
    speaker ids, prompt_ids: for the judges. Waveform (latent) sets also hold wavs: N real
    waveforms (T_i * stride,) zero-padded to whole latent frames, and n_samples: their real lengths.
    """
    ids: list[str]
    z_1: Tensor
    mask: Tensor
    cond: dict[str, Tensor]
    z_0: Tensor
    corpus: Any
    texts: list[str] = dataclasses.field(default_factory=list)
    speakers: Tensor | None = None
    prompt_ids: list[str] = dataclasses.field(default_factory=list)
    wavs: list[Tensor] = dataclasses.field(default_factory=list)
    n_samples: list[int] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio the set represents: the real lengths, else the valid mel frames."""
        if self.n_samples:
            return sum(self.n_samples) / self.corpus.sample_rate
        mc = self.corpus.mel_config
        return float(self.mask.sum()) * mc.hop_length / mc.sample_rate

    def real_logmel(self) -> Tensor:
        if self.wavs:
            raise ValueError("a waveform (latent) eval set has no mels: z_1 holds VAE latents")
        return self.corpus.denormalize(self.z_1) * self.mask[:, None]

    def subset(self, idx: Sequence[int]) -> "EvalSet":
        idx_t = torch.as_tensor(list(idx))
        return EvalSet([self.ids[i] for i in idx], self.z_1[idx_t], self.mask[idx_t],
                       {k: v[idx_t] for k, v in self.cond.items()}, self.z_0[idx_t], self.corpus,
                       [self.texts[i] for i in idx] if self.texts else [],
                       None if self.speakers is None else self.speakers[idx_t],
                       [self.prompt_ids[i] for i in idx] if self.prompt_ids else [],
                       [self.wavs[i] for i in idx] if self.wavs else [],
                       [self.n_samples[i] for i in idx] if self.n_samples else [])


def make_eval_set(corpus, split: str = "test", n: int = 32, seed: int = 1234, max_frames: int = 256,
                  prompt_frames: int = 96) -> EvalSet:
    """``n`` utterances of ``split`` that fit whole in ``max_frames`` (so transcripts match the
    audio for WER), picked by a seeded shuffle; prompts are deterministic per (seed, id)."""
    ds = MelTokenDataset(corpus, split=split, max_frames=max_frames, prompt_frames=prompt_frames, crop="start",
                         normalize=True, seed=seed)
    if len(ds) == 0:
        raise ValueError(f"split {split!r} of corpus {corpus.root} is empty")
    g = torch.Generator().manual_seed(seed)
    frames = corpus.manifest.set_index("id")["n_frames"]
    fits = [i for i in torch.randperm(len(ds), generator=g).tolist() if frames[ds.ids[i]] <= max_frames]
    if not fits:
        raise ValueError(f"no utterance of split {split!r} fits in max_frames={max_frames}")
    order = fits[:n]
    batch = collate([ds[i] for i in order])
    z_0 = torch.randn(batch["z_1"].shape, generator=g) * batch["mask"][:, None]
    cond = {k: batch[k] for k in ("tokens", "mask", "prompt", "prompt_mask")}
    return EvalSet(batch["ids"], batch["z_1"], batch["mask"], cond, z_0, corpus, batch.get("texts", []),
                   batch.get("speaker"), batch.get("prompt_ids", []))


def make_latent_eval_set(data: TokenWaveDataset, n: int, seed: int = 1234, prompt_frames: int = 50,
                         max_frames: int = 0) -> EvalSet:
    """``n`` whole utterances of ``data`` (latents attached; at most ``max_frames`` latent frames
    if > 0) picked by a seeded shuffle; prompts deterministic per id; noise from its own generator.

    z_1 (N, C, T) standardised latents, cond {tokens (N, T), mask (N, T), prompt (N, C, Tp),
    prompt_mask (N, Tp)}, z_0 (N, C, T) zero on padded frames, wavs / n_samples the real audio.
    """
    data.require_latents()
    g = torch.Generator().manual_seed(seed)
    order = [i for i in torch.randperm(len(data), generator=g).tolist()
             if not max_frames or data.items[i]["tokens"].numel() <= max_frames][:n]
    if not order:
        raise ValueError(f"no utterance of split {data.split!r} fits the eval set (max_frames={max_frames})")
    items = [data.items[i] for i in order]
    prompts = [data.prompt(i, prompt_frames, None) for i in order]
    z_1, mask = pad_stack([it["latent"] for it in items])
    tokens, _ = pad_stack([it["tokens"] for it in items])
    prompt, prompt_mask = pad_stack([p[0] for p in prompts])
    z_0 = torch.randn(z_1.shape, generator=g) * mask[:, None]
    cond = {"tokens": tokens, "mask": mask, "prompt": prompt, "prompt_mask": prompt_mask}
    return EvalSet([it["id"] for it in items], z_1, mask, cond, z_0, data.corpus, [it["text"] for it in items],
                   torch.tensor([it["speaker"] for it in items]), [p[1] for p in prompts],
                   [it["wav"] for it in items], [it["n_samples"] for it in items])
