"""Whole-utterance waveform datasets: the vocoder's and Token2Wav's training data.

Utterances of one split are held whole in memory; every training step cuts random segments
with the trainer's generator (so a resumed run sees the same segments as an uninterrupted
one). One base, :class:`WaveDataset`; item keys follow :class:`imf.data.MelTokenDataset`'s
where the meaning is the same:

==========  ======================  =============================================================
key         type                    meaning
==========  ======================  =============================================================
id          str                     utterance id
wav         float32 [N']            the waveform, zero-padded at the end (each class says to what)
n_samples   int                     its real length N before padding
mel         float32 [80, 1+N'//hop] :class:`MelWaveDataset`: log-mel of the padded waveform
tokens      int64 [T]               :class:`TokenWaveDataset`: one token per latent frame, T = N' / stride
speaker     int                     :class:`TokenWaveDataset`: ``corpus.speaker_id(speaker)``
text        str                     :class:`TokenWaveDataset`: the sentence
latent      float32 [C, T]          :class:`TokenWaveDataset` after ``attach_latents``: standardised VAE ``mu``
==========  ======================  =============================================================

``collate_waves(items)`` keeps the items' values as lists (lengths differ):
``{"ids": [str], key: [value per item] for every other key}``; the objectives crop them
(:func:`mel_segments` for the vocoder; :func:`generator_batch`, :func:`segment_starts` and
:func:`wav_segments` for Token2Wav).
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from imf.core.checkpoints import module_fingerprint
from imf.core.config import Config, require
from imf.models.features import LogMel, MelConfig
from imf.data.tokenizers import Tokenizer


class WaveDataset(torch.utils.data.Dataset):
    """Whole utterances of one split in memory: item ``{"id", "wav" (N',), "n_samples"}`` + a subclass's keys.

    ``ids``: only these utterances of the split, in this order; ``max_utts > 0``: only the
    first ``max_utts``. Subclasses add keys in :meth:`make_item`.
    """

    def __init__(self, corpus, split: str = "train", ids: Sequence[str] | None = None, max_utts: int | None = 0):
        self.corpus, self.split = corpus, split
        rows = corpus.split(split)
        if ids is not None:
            rows = rows.set_index("id").loc[list(ids)].reset_index()
        if max_utts:
            rows = rows.iloc[:max_utts]
        if len(rows) == 0:
            raise ValueError(f"split {split!r} of corpus {getattr(corpus, 'root', '')} has no utterances")
        self.items: list[dict[str, Any]] = []
        for row in rows.to_dict("records"):
            wav = corpus.load_wav(row["id"]).float().reshape(-1)
            self.items.append({"id": str(row["id"]), **self.make_item(row, wav)})
        self.index = {it["id"]: i for i, it in enumerate(self.items)}

    def make_item(self, row: dict[str, Any], wav: Tensor) -> dict[str, Any]:
        """The item's keys after ``id`` from its manifest ``row`` and waveform (N,)."""
        return {"wav": wav, "n_samples": wav.numel()}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def collate_waves(items: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Utterances of different lengths stay lists (see the module docstring)."""
    if not items:
        raise ValueError("collate_waves: empty batch")
    return {"ids": [it["id"] for it in items], **{k: [it[k] for it in items] for k in items[0] if k != "id"}}


def pad_stack(tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """[(C, T_i)] or [(T_i,)] -> zero-padded (B, C, T) / (B, T) and a bool mask (B, T)."""
    lengths = torch.tensor([t.shape[-1] for t in tensors])
    n = int(lengths.max())
    out = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-1], n))
    for b, t in enumerate(tensors):
        out[b, ..., :t.shape[-1]] = t
    return out, torch.arange(n)[None] < lengths[:, None]


def _randint(hi: int, g: torch.Generator) -> int:
    """Uniform int in [0, hi] from ``g``."""
    return int(torch.randint(0, hi + 1, (1,), generator=g)) if hi > 0 else 0


# ---------------------------------------------------------------------------------------------
# The vocoder's data: waveform + log-mel
# ---------------------------------------------------------------------------------------------
class MelWaveDataset(WaveDataset):
    """Utterances with their log-mel (the corpus's :class:`LogMel`, computed once).

    Utterances shorter than ``min_samples`` are zero-padded at the end (their mel is computed
    on the padded audio) so every item holds at least one full segment.
    """

    def __init__(self, corpus, split: str = "train", min_samples: int = 0, max_utts: int | None = 0,
                 ids: Sequence[str] | None = None):
        self.mel_config: MelConfig = corpus.mel_config
        self.min_samples, self.logmel = min_samples, LogMel(self.mel_config)
        super().__init__(corpus, split, ids, max_utts)

    @torch.no_grad()
    def make_item(self, row: dict[str, Any], wav: Tensor) -> dict[str, Any]:
        n = wav.numel()
        if n < self.min_samples:
            wav = torch.nn.functional.pad(wav, (0, self.min_samples - n))
        return {"wav": wav, "n_samples": n, "mel": self.logmel(wav)}


def segment_frames(seg_seconds: float, mel_config: MelConfig) -> int:
    """Frames per vocoder training segment: ``round(seg_seconds * sr / hop)`` (the output has that many hops)."""
    n = round(seg_seconds * mel_config.sample_rate / mel_config.hop_length)
    if n < 2:
        raise ValueError(f"seg_seconds={seg_seconds} gives {n} frames; need >= 2")
    return n


def mel_segments(batch: dict[str, Any], seg_frames: int, hop: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """One random frame-aligned segment per utterance of a :func:`collate_waves` batch.

    A segment starting at frame ``f`` is the mel frames ``[f, f + seg_frames]`` (cut from the
    whole utterance's mel, so the context at its edges is real) and the samples
    ``[f * hop, (f + seg_frames) * hop)``: the vocoder's ``(T - 1) * hop`` output lines up with
    it sample for sample. Returns mel (B, n_mels, seg_frames + 1), wav (B, seg_frames * hop).
    """
    mels, wavs = [], []
    for mel, wav in zip(batch["mel"], batch["wav"]):
        last = min(mel.shape[-1] - 1, wav.numel() // hop) - seg_frames  # last valid start frame
        if last < 0:
            raise ValueError(f"utterance of {wav.numel()} samples is shorter than a {seg_frames}-frame segment")
        f = int(torch.randint(0, last + 1, (1,), generator=g))
        mels.append(mel[:, f:f + seg_frames + 1])
        wavs.append(wav[f * hop:(f + seg_frames) * hop])
    return torch.stack(mels), torch.stack(wavs)


# ---------------------------------------------------------------------------------------------
# Token2Wav's data: waveform + latent-rate tokens (+ VAE latents)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class T2WDataConfig(Config):
    seg_frames: int = 25  # latent frames per waveform training segment (VAE, fine-tuning): 25 = 1 s
    max_frames: int = 128  # generator training crop in latent frames (128 = 5.1 s: whole corpus utterances)
    prompt_frames: int = 50  # speaker-prompt crop in latent frames (2 s)
    max_utts: int = 0  # > 0: use only the first max_utts utterances of the split (tests)

    def validate(self) -> None:
        require(self.seg_frames >= 2, "seg_frames", "must be >= 2")
        require(self.max_frames >= 4, "max_frames", "must be >= 4")
        require(self.prompt_frames >= 2, "prompt_frames", "must be >= 2")
        require(self.max_utts >= 0, "max_utts", "must be >= 0")


class TokenWaveDataset(WaveDataset):
    """Utterances padded to whole latent frames with their tokens (see the module docstring).

    ``T = max(ceil(N / stride), min_frames)``; ``wav`` is zero-padded to ``T * stride``.
    After :meth:`attach_latents` every item also holds ``latent`` (C, T).
    """

    def __init__(self, corpus, split: str, tokenizer: Tokenizer, stride: int, min_frames: int = 0,
                 max_utts: int = 0, ids: Sequence[str] | None = None):
        self.tokenizer, self.stride, self.min_frames = tokenizer, stride, min_frames
        super().__init__(corpus, split, ids, max_utts)
        self.latent_source: str | None = None  # fingerprint of the VAE that encoded the latents
        self.by_speaker: dict[int, list[int]] = {}
        for i, it in enumerate(self.items):
            self.by_speaker.setdefault(it["speaker"], []).append(i)

    def make_item(self, row: dict[str, Any], wav: Tensor) -> dict[str, Any]:
        n = wav.numel()
        t = max(math.ceil(n / self.stride), self.min_frames)
        return {"wav": torch.nn.functional.pad(wav, (0, t * self.stride - n)), "n_samples": n,
                "tokens": self.tokenizer.tokens(self.corpus, str(row["id"]), t),
                "speaker": self.corpus.speaker_id(row["speaker"]), "text": str(row["text"])}

    def prompt_candidates(self, i: int) -> list[int]:
        """Other utterances of item ``i``'s speaker in this split (itself if it is the only one)."""
        others = [k for k in self.by_speaker[self.items[i]["speaker"]] if k != i]
        return others or [i]

    def prompt(self, i: int, prompt_frames: int, g: torch.Generator | None) -> tuple[Tensor, str]:
        """A prompt latent (C, <= prompt_frames) of another utterance of item ``i``'s speaker, and its id.

        ``g`` given: random utterance and window; ``None``: deterministic per item id (eval sets).
        """
        cands = self.prompt_candidates(i)
        if g is None:
            k, start = cands[zlib.crc32(self.items[i]["id"].encode()) % len(cands)], 0
        else:
            k = cands[_randint(len(cands) - 1, g)]
            start = None
        lat = self.items[k]["latent"]
        if start is None:
            start = _randint(lat.shape[-1] - prompt_frames, g)
        return lat[:, start:start + prompt_frames], self.items[k]["id"]

    @torch.no_grad()
    def attach_latents(self, vae: nn.Module) -> "TokenWaveDataset":
        """Encode every utterance (one at a time, whole) with ``vae``: ``item["latent"]`` (C, T) standardised.

        ``latent_source`` becomes a fingerprint of the VAE's weights; the generator and
        fine-tuning runs record it, so resuming one of them on latents of a different VAE is
        refused instead of silently mixing latent spaces.
        """
        vae = vae.eval()
        for it in self.items:
            mu, _ = vae.encode(it["wav"][None])
            it["latent"] = vae.normalize(mu)[0]
        self.latent_source = module_fingerprint(vae)[:16]
        return self

    def require_latents(self) -> None:
        if self.latent_source is None:
            raise ValueError("data has no latents: call data.attach_latents(vae) first")


def generator_batch(data: TokenWaveDataset, batch: dict[str, list], cfg: T2WDataConfig,
                    g: torch.Generator) -> dict[str, Any]:
    """Random crops of at most ``max_frames`` latent frames + prompts of a :func:`collate_waves` batch.

    Returns ``z_1`` (B, C, L) standardised latents, ``cond`` {tokens (B, L), mask (B, L), prompt
    (B, C, Lp), prompt_mask (B, Lp)}, ``starts`` / ``lengths`` (B,) frames.
    """
    lat, tok, prompts, starts = [], [], [], []
    for ident, latent, tokens in zip(batch["ids"], batch["latent"], batch["tokens"]):
        f = _randint(latent.shape[-1] - cfg.max_frames, g)
        lat.append(latent[:, f:f + cfg.max_frames])
        tok.append(tokens[f:f + cfg.max_frames])
        prompts.append(data.prompt(data.index[ident], cfg.prompt_frames, g)[0])
        starts.append(f)
    z_1, mask = pad_stack(lat)
    tokens, _ = pad_stack(tok)
    prompt, prompt_mask = pad_stack(prompts)
    return {"z_1": z_1, "cond": {"tokens": tokens, "mask": mask, "prompt": prompt, "prompt_mask": prompt_mask},
            "starts": torch.tensor(starts), "lengths": mask.sum(1)}


def segment_starts(lengths: Tensor, seg_frames: int, g: torch.Generator) -> list[int]:
    """A random first frame per utterance for a ``seg_frames`` segment inside its ``lengths`` frames."""
    out = []
    for n in lengths.tolist():
        if n < seg_frames:
            raise ValueError(f"an utterance of {n} latent frames is shorter than seg_frames={seg_frames}")
        out.append(_randint(n - seg_frames, g))
    return out


def wav_segments(wavs: Sequence[Tensor], frame_starts: Sequence[int], offsets: Sequence[int], seg_frames: int,
                 stride: int) -> Tensor:
    """(B, seg_frames * stride) waveform segments; ``wavs[b]`` is cut from latent frame ``offsets[b] + frame_starts[b]``."""
    segs = []
    for wav, f, o in zip(wavs, frame_starts, offsets):
        s = (o + f) * stride
        segs.append(wav[s:s + seg_frames * stride])
    return torch.stack(segs)
