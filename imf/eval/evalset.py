"""The evaluation set: fixed utterances, prompts and noise ``z_0`` that every system sees.

Built once, deterministically from its seed, so teacher, students and baselines are compared
on identical noise at every NFE (comparable curves and listening pairs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor


@dataclasses.dataclass
class EvalSet:
    """A padded batch of evaluation utterances with their fixed noise.

    ids: N utterance ids; x1: (N, C, T) normalised real mel; mask: (N, T); cond: batch-first
    conditioning; z_0: (N, C, T) noise from the eval generator; corpus: for (de)normalising.
    """
    ids: list[str]
    x1: Tensor
    mask: Tensor
    cond: dict[str, Tensor]
    z_0: Tensor
    corpus: Any
    texts: list[str] = dataclasses.field(default_factory=list)
    speakers: Tensor | None = None
    prompt_ids: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def real_logmel(self) -> Tensor:
        return self.corpus.denormalize(self.x1) * self.mask[:, None]

    def subset(self, idx: Sequence[int]) -> "EvalSet":
        idx_t = torch.as_tensor(list(idx))
        return EvalSet([self.ids[i] for i in idx], self.x1[idx_t], self.mask[idx_t],
                       {k: v[idx_t] for k, v in self.cond.items()}, self.z_0[idx_t], self.corpus,
                       [self.texts[i] for i in idx] if self.texts else [],
                       None if self.speakers is None else self.speakers[idx_t],
                       [self.prompt_ids[i] for i in idx] if self.prompt_ids else [])


def make_eval_set(corpus, split: str = "test", n: int = 32, seed: int = 1234, max_frames: int = 256,
                  prompt_frames: int = 96) -> EvalSet:
    """``n`` utterances of ``split`` that fit whole in ``max_frames`` (so transcripts match the
    audio for WER), picked by a seeded shuffle; prompts are deterministic per (seed, id)."""
    from imf.data import MelTokenDataset, collate

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
    z_0 = torch.randn(batch["x1"].shape, generator=g) * batch["mask"][:, None]
    cond = {k: batch[k] for k in ("tokens", "mask", "prompt", "prompt_mask")}
    return EvalSet(batch["ids"], batch["x1"], batch["mask"], cond, z_0, corpus, batch.get("texts", []),
                   batch.get("speaker"), batch.get("prompt_ids", []))
