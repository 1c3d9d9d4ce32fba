"""F5-TTS's front end, through F5-TTS's own code: text -> ids, audio -> its "vocos" mel, infilling batches.

* Text: F5's tokenizer (``get_tokenizer`` on the model's ``vocab.txt``), its char/pinyin
  conversion (``convert_char_to_pinyin``) and ``list_str_to_idx`` (unknown -> 0, batch padding
  -1). The DiT adds 1 and fills up to the mel length with its filler 0.
* Audio: mono, resampled to 24 kHz, F5's ``MelSpec`` ("vocos": n_fft 1024, hop 256, 100 mels,
  natural log of the magnitude clamped at 1e-5) -> (n_mels, N), channels first.
* Infilling (F5's training task): a random span covering ``frac`` (70-100 %) of each utterance
  is to be generated; ``cond_mel`` is the mel with that span zeroed; the loss runs on the span.

Everything imports ``f5_tts`` lazily (the ``f5`` extra).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

from imf.models.backbones.f5 import F5Config


def _f5_utils():
    try:
        from f5_tts.model import utils
    except ImportError as e:
        raise ImportError(f"F5-TTS is not installed ({e}): pip install -e '.[f5]'") from e
    return utils


class F5Text:
    """F5-TTS's text handling for one ``vocab.txt``: ``ids(["text", ...]) -> (B, Nt) long`` (-1 padded)."""

    def __init__(self, vocab: str | Path, tokenizer: str = "pinyin"):
        vocab = Path(vocab)
        if not vocab.is_file():
            raise FileNotFoundError(f"vocab file {vocab} does not exist (F5-TTS's vocab.txt of the model)")
        if tokenizer == "byte":
            raise ValueError("F5Text: the 'byte' tokenizer (no vocab.txt) is not supported; use a vocab.txt model")
        u = _f5_utils()
        self.vocab_path, self.tokenizer = vocab, tokenizer
        self.char_map, self.vocab_size = u.get_tokenizer(str(vocab), "custom")

    def tokens(self, texts: Sequence[str]) -> list[list[str]]:
        """F5's ``convert_char_to_pinyin``: pinyin for Chinese characters, characters (and its spacing
        rule) otherwise. F5-TTS's inference applies it whatever the tokenizer, and so do we."""
        return _f5_utils().convert_char_to_pinyin(list(texts))

    def ids(self, texts: Sequence[str]) -> Tensor:
        """(B, Nt) long: vocab ids, -1 after each text's end."""
        return _f5_utils().list_str_to_idx(self.tokens(texts), self.char_map)


def f5_mel(wav: Tensor, sr: int, cfg: F5Config = F5Config()) -> Tensor:
    """wav (N,) or (B, N) at ``sr`` -> F5's log mel (n_mels, N') or (B, n_mels, N') at ``cfg.sample_rate``."""
    from f5_tts.model.modules import MelSpec

    squeeze = wav.dim() == 1
    wav = wav[None] if squeeze else wav
    if sr != cfg.sample_rate:
        wav = torchaudio.functional.resample(wav.float(), sr, cfg.sample_rate)
    mel = MelSpec(n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, n_mel_channels=cfg.mel_dim,
                  target_sample_rate=cfg.sample_rate, mel_spec_type=cfg.mel_spec_type)(wav.float())
    return mel[0] if squeeze else mel


def read_audio(path: str | Path) -> tuple[Tensor, int]:
    """(mono float32 wav (N,), sample rate) of an audio file; errors name it."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise RuntimeError(f"cannot read audio {path}: {e}") from e
    return torch.from_numpy(data.mean(axis=1)), int(sr)


def span_mask(lengths: Tensor, frac: tuple[float, float] = (0.7, 1.0), n: int | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """(B, N) bool: per row a contiguous span of ``floor(f * length)`` frames, ``f ~ U(frac)``, at a uniform
    random start inside the row (F5's ``mask_from_frac_lengths``, drawn from ``generator``). lengths (B,) long."""
    b = lengths.shape[0]
    n = int(lengths.max()) if n is None else n
    f = frac[0] + (frac[1] - frac[0]) * torch.rand(b, generator=generator, dtype=torch.float64)
    span = (f * lengths.double()).long()
    start = ((lengths - span).double() * torch.rand(b, generator=generator, dtype=torch.float64)).long().clamp(min=0)
    pos = torch.arange(n)[None]
    return (pos >= start[:, None]) & (pos < (start + span)[:, None])


def infill_cond(x_1: Tensor, text: Tensor, mask: Tensor, span: Tensor) -> dict[str, Tensor]:
    """F5's conditioning of an infilling batch: ``cond_mel`` = x_1 (B, C, N) with ``span`` (B, N) zeroed."""
    return {"cond_mel": x_1.masked_fill(span[:, None], 0.0), "text": text, "mask": mask}


class F5Dataset(torch.utils.data.Dataset):
    """(audio file, transcript) pairs -> ``{"id", "z_1": F5 mel (n_mels, N), "text": str}``, mels cached in memory.

    ``max_frames`` crops longer utterances (their start, so the transcript still matches the
    beginning; 0 keeps everything). Build it from a table with :meth:`from_manifest` or from a
    workbench corpus with :meth:`from_corpus`.
    """

    def __init__(self, items: Sequence[tuple[str, str | Path, str]], cfg: F5Config, max_frames: int = 0):
        if not items:
            raise ValueError("F5Dataset: no items")
        self.items, self.cfg, self.max_frames = list(items), cfg, max_frames
        self._mels: dict[int, Tensor] = {}

    @classmethod
    def from_manifest(cls, path: str | Path, cfg: F5Config, max_frames: int = 0) -> "F5Dataset":
        """A CSV/TSV with columns ``audio_path`` and ``text`` (relative paths are relative to the file)."""
        path = Path(path)
        df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
        missing = {"audio_path", "text"} - set(df.columns)
        if missing:
            raise KeyError(f"{path}: missing column(s) {sorted(missing)}; have {list(df.columns)}")
        root = path.parent
        return cls([(str(i), root / p, str(t)) for i, (p, t) in enumerate(zip(df.audio_path, df.text))], cfg,
                   max_frames)

    @classmethod
    def from_corpus(cls, corpus: Any, cfg: F5Config, split: str = "train", max_frames: int = 0) -> "F5Dataset":
        """The wavs and sentences of a workbench corpus (:class:`imf.data.corpus.Corpus`) split."""
        rows = corpus.split(split)
        return cls([(r.id, corpus.root / "wav" / f"{r.id}.wav", r.text) for r in rows.itertuples()], cfg, max_frames)

    def __len__(self) -> int:
        return len(self.items)

    def mel(self, i: int) -> Tensor:
        if i not in self._mels:
            wav, sr = read_audio(self.items[i][1])
            m = f5_mel(wav, sr, self.cfg)
            self._mels[i] = m[:, : self.max_frames] if self.max_frames else m
        return self._mels[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        ident, _, text = self.items[i]
        return {"id": ident, "z_1": self.mel(i), "text": text}


def make_collate(text: F5Text):
    """A collate function: items -> ``{"ids", "z_1" (B, C, N) zero-padded, "mask" (B, N), "lengths" (B,),
    "text" (B, Nt) F5 ids}``."""

    def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {**pad_mels(items), "text": text.ids([it["text"] for it in items])}

    return collate


def pad_mels(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items with ``id`` and ``z_1`` (C, N_i) -> ``{"ids", "z_1" (B, C, N) zero-padded, "lengths" (B,), "mask" (B, N)}``."""
    lengths = torch.tensor([it["z_1"].shape[-1] for it in items])
    n, c = int(lengths.max()), items[0]["z_1"].shape[0]
    z_1 = torch.zeros(len(items), c, n)
    for j, it in enumerate(items):
        z_1[j, :, : it["z_1"].shape[-1]] = it["z_1"]
    return {"ids": [it["id"] for it in items], "z_1": z_1, "lengths": lengths,
            "mask": torch.arange(n)[None] < lengths[:, None]}


def estimate_frames(prompt_frames: int, prompt_text: str, gen_text: str, speed: float = 1.0) -> int:
    """F5-TTS's duration rule: total frames = prompt + int(prompt / bytes(prompt text) * bytes(new text) / speed).

    ``prompt_frames`` is F5's ``samples // hop`` of the 24 kHz reference; texts shorter than 10
    UTF-8 bytes are spoken at speed 0.3, as F5's inference does.
    """
    ref, gen = len(prompt_text.encode("utf-8")), len(gen_text.encode("utf-8"))
    speed = 0.3 if gen < 10 else speed
    return prompt_frames + int(prompt_frames / max(ref, 1) * gen / speed)


def prompt_text_with_pause(text: str) -> str:
    """A reference transcript the way F5-TTS's inference hands it to the model.

    Its preprocessing ends the transcript with ". " (or " " after a final "."); its batch inference
    then adds a space after a final one-byte character — so "Some text" becomes "Some text.  ".
    """
    if not text.endswith(". ") and not text.endswith("。"):
        text = text + (" " if text.endswith(".") else ". ")
    if len(text[-1].encode("utf-8")) == 1:
        text = text + " "
    return text


__all__ = ["F5Text", "f5_mel", "read_audio", "span_mask", "infill_cond", "F5Dataset", "make_collate",
           "estimate_frames", "prompt_text_with_pause"]
