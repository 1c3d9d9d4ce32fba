"""Training items from a :class:`~imf.data.corpus.Corpus`: mel crops, aligned phone tokens and
a speaker prompt taken from another utterance of the same speaker.

``MelTokenDataset(corpus, split="train")[i]`` ->

========  ====================  ================================================================
key       type                  meaning
========  ====================  ================================================================
id        str                   utterance id
z_1       float32 [80, T]       mel crop (normalised per bin unless ``normalize=False``), T <= max_frames
tokens    int64 [T]             frame-level phone ids aligned with ``z_1``'s crop (pad id 0 unused here)
speaker   int                   ``corpus.speaker_id(speaker)``
prompt    float32 [80, Tp]      mel crop (Tp <= prompt_frames) of a DIFFERENT utterance of the same
                                speaker from the same split (see ``prompt_pool``)
text      str                   the sentence
prompt_id str                   the utterance the prompt comes from
offset    int                   first frame of the ``z_1`` crop in the full utterance
========  ====================  ================================================================

``collate(items)`` pads to the longest item: ``z_1`` [B, 80, T] and ``prompt`` [B, 80, Tp] with
zeros, ``tokens`` [B, T] with 0; ``mask`` [B, T] / ``prompt_mask`` [B, Tp] are True on real frames.

Randomness: with ``crop="random"`` crop positions and prompt choices come from torch's global
RNG (so ``seed_everything`` and DataLoader's per-worker seeding apply, and workers do not
repeat each other); with ``crop="seeded"`` (a uniform window drawn from ``(seed, id)``), ``"start"`` or
``"none"`` everything is a function of ``(seed, id)``, so evaluation sets and trajectory caches are
identical across runs and processes.
"""
from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from imf.data.corpus import Corpus, CorpusError

CROPS = ("random", "seeded", "start", "none")


class MelTokenDataset(torch.utils.data.Dataset):
    """Items of one split of ``corpus`` (see the module docstring for the item layout).

    Args:
        corpus: a loaded :class:`Corpus`.
        split: "train" | "dev" | "test" | "unseen".
        max_frames: longest ``z_1`` crop (ignored with ``crop="none"``).
        prompt_frames: longest prompt crop.
        crop: "random" (uniform window, training), "seeded" (a uniform window fixed by ``(seed, id)``:
            the trajectory cache's crops), "start" (first frames) or "none" (whole).
        normalize: standardise mels with the corpus train statistics.
        seed: fixes prompt choice and prompt window per ``(seed, id)`` when ``crop != "random"``.
        cache: keep loaded mels in memory (the embedded corpus is ~70 MB of mels).
    """

    def __init__(self, corpus: Corpus, split: str = "train", max_frames: int = 192, prompt_frames: int = 96,
                 crop: str = "random", normalize: bool = True, seed: int = 0, cache: bool = True):
        if crop not in CROPS:
            raise ValueError(f"parameter 'crop': {crop!r} is not one of {list(CROPS)}")
        if max_frames < 1 or prompt_frames < 1:
            raise ValueError(f"max_frames ({max_frames}) and prompt_frames ({prompt_frames}) must be >= 1")
        self.corpus = corpus
        self.split = split
        rows = corpus.split(split)  # CorpusError for an unknown split
        self.ids: list[str] = rows["id"].tolist()
        self.max_frames, self.prompt_frames = max_frames, prompt_frames
        self.crop, self.normalize, self.seed, self.cache = crop, normalize, seed, cache
        self._mels: dict[str, Tensor] = {}
        self._pools = self._prompt_pools(rows)

    def _prompt_pools(self, rows) -> dict[str, list[str]]:
        """Per speaker: its utterances in this split, or (if it has fewer than two here) in the
        whole corpus, so that a different utterance exists whenever the speaker has one."""
        m = self.corpus.manifest
        pools = {}
        for speaker, group in rows.groupby("speaker", sort=False):
            ids = group["id"].tolist()
            pools[speaker] = ids if len(ids) >= 2 else m.loc[m.speaker == speaker, "id"].tolist()
        return pools

    def prompt_pool(self, ident: str) -> list[str]:
        """Candidate prompt utterances for ``ident`` (never ``ident`` itself unless it is its
        speaker's only utterance)."""
        speaker = self.corpus.row(ident)["speaker"]
        others = [i for i in self._pools[speaker] if i != ident]
        return others or [ident]

    def __len__(self) -> int:
        return len(self.ids)

    def mel(self, ident: str) -> Tensor:
        """[80, T] mel of ``ident``, normalised if ``self.normalize``."""
        mel = self._mels.get(ident)
        if mel is None:
            mel = self.corpus.load_mel(ident)
            if self.normalize:
                mel = self.corpus.normalize(mel)
            if self.cache:
                self._mels[ident] = mel
        return mel

    def _start(self, n: int, length: int, rng: np.random.Generator | None) -> int:
        """First frame of a window of ``length`` in ``n`` frames (torch RNG when rng is None)."""
        if n <= length:
            return 0
        if rng is None:
            return int(torch.randint(0, n - length + 1, ()).item())
        return int(rng.integers(0, n - length + 1))

    def __getitem__(self, i: int) -> dict[str, Any]:
        ident = self.ids[i]
        row = self.corpus.row(ident)
        mel, tokens = self.mel(ident), self.corpus.tokens(ident)
        if mel.shape[1] != tokens.numel():
            raise CorpusError(f"{self.corpus.root / row['mel']}: {mel.shape[1]} frames but {tokens.numel()} tokens")
        rng = None if self.crop == "random" else np.random.default_rng([self.seed, zlib.crc32(ident.encode())])
        if self.crop == "none":
            offset, z_1, tok = 0, mel, tokens
        else:
            offset = self._start(mel.shape[1], self.max_frames, rng) if self.crop in ("random", "seeded") else 0
            z_1, tok = mel[:, offset:offset + self.max_frames], tokens[offset:offset + self.max_frames]

        pool = self.prompt_pool(ident)
        k = int(torch.randint(0, len(pool), ()).item()) if rng is None else int(rng.integers(0, len(pool)))
        prompt_id = pool[k]
        pmel = self.mel(prompt_id)
        p0 = self._start(pmel.shape[1], self.prompt_frames, rng)
        prompt = pmel[:, p0:p0 + self.prompt_frames]
        return dict(id=ident, z_1=z_1, tokens=tok, speaker=self.corpus.speaker_id(row["speaker"]), prompt=prompt,
                    text=str(row["text"]), prompt_id=prompt_id, offset=offset)


def _pad(tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """[C, T_i] or [T_i] tensors -> zero-padded [B, C, T] / [B, T] and a bool mask [B, T]."""
    lengths = torch.tensor([t.shape[-1] for t in tensors], dtype=torch.long)
    T = int(lengths.max()) if len(tensors) else 0
    out = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-1], T))
    for b, t in enumerate(tensors):
        out[b, ..., : t.shape[-1]] = t
    mask = torch.arange(T)[None] < lengths[:, None]
    return out, mask


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`MelTokenDataset` items (see the module docstring).

    Returns ``ids`` list[str], ``z_1`` [B, 80, T], ``tokens`` [B, T] (pad 0), ``mask`` [B, T]
    bool, ``prompt`` [B, 80, Tp], ``prompt_mask`` [B, Tp] bool, ``speaker`` [B] long,
    ``lengths`` [B] long, ``prompt_lengths`` [B] long, ``texts`` list[str], ``prompt_ids``
    list[str].
    """
    if not items:
        raise ValueError("collate: empty batch")
    for it in items:
        if it["z_1"].shape[-1] != it["tokens"].shape[-1]:
            raise ValueError(f"item {it['id']!r}: z_1 has {it['z_1'].shape[-1]} frames, tokens {it['tokens'].shape[-1]}")
    z_1, mask = _pad([it["z_1"] for it in items])
    tokens, _ = _pad([it["tokens"] for it in items])
    prompt, prompt_mask = _pad([it["prompt"] for it in items])
    return dict(
        ids=[it["id"] for it in items], z_1=z_1, tokens=tokens, mask=mask, prompt=prompt, prompt_mask=prompt_mask,
        speaker=torch.tensor([it["speaker"] for it in items], dtype=torch.long),
        lengths=mask.sum(1), prompt_lengths=prompt_mask.sum(1), texts=[it["text"] for it in items],
        prompt_ids=[it.get("prompt_id", "") for it in items],
    )
