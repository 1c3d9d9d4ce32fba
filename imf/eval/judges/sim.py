"""Speaker similarity (SIM-o style): cosine of speaker embeddings of the audio and of the
speaker's REAL prompt recording; Resemblyzer d-vectors by default (weights inside the package)."""
from __future__ import annotations

import os
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from imf.eval.judges.base import (SAMPLE_RATE, CachedJudge, JudgeItem, audio_sha1, import_package, limit_threads,
                                  load_object)
from imf.eval.judges.wavlm import WavLMEmbedder


class SpeakerSim(CachedJudge):
    """Cosine similarity of speaker embeddings of ``item.wav`` and ``item.prompt_wav``.

    SIM-o style: the prompt is the speaker's REAL recording, not a resynthesis. With the
    default Resemblyzer d-vectors (256-d, non-negative, L2-normed) values lie in [0, 1];
    measured on real LibriSpeech: same speaker ~0.85, different ~0.50.

    Args:
        encoder: "resemblyzer" (weights inside the package), "wavlm:<folder>" (a local
            ``WavLMForXVector`` + feature extractor, :mod:`~imf.eval.judges.wavlm`), a callable
            ``f(wav (N,) float32 16 kHz) -> embedding (D,)``, or a "module:factory" string whose
            factory (called with no arguments) returns such a callable (e.g. a WavLM-TDNN).
        weights_path: a Resemblyzer ``.pt`` checkpoint instead of the bundled ``pretrained.pt``.
        preprocess: Resemblyzer's own preprocessing (volume to -30 dBFS, long silences cut
            by WebRTC VAD) before embedding, as its authors intend.
    """
    name = "sim"
    higher_is_better = True
    needs = ("prompt_wav",)
    key_fields = ("prompt",)

    def __init__(self, encoder: str | Callable[[np.ndarray], np.ndarray] = "resemblyzer", *,
                 weights_path: str | os.PathLike | None = None, preprocess: bool = True,
                 embedding_cache_size: int = 4096, **kwargs: Any):
        super().__init__(**kwargs)
        t0 = time.perf_counter()
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()  # prompts repeat: embed once
        self._embedding_cache_size = embedding_cache_size
        if callable(encoder):
            self._embed = encoder
            self._identity = f"sim:callable:{getattr(encoder, '__module__', '?')}.{getattr(encoder, '__qualname__', type(encoder).__name__)}"
        elif encoder == "resemblyzer":
            self._embed = self._load_resemblyzer(weights_path, preprocess)
            self._identity = f"sim:resemblyzer:{self._weights}:pre={preprocess}"
        elif isinstance(encoder, str) and encoder.startswith("wavlm:"):
            self._embed = WavLMEmbedder(encoder.partition(":")[2])
            self._identity = f"sim:wavlm:{self._embed.path.resolve()}"
        elif isinstance(encoder, str) and ":" in encoder:
            self._embed = load_object(encoder)()
            if not callable(self._embed):
                raise TypeError(f"SpeakerSim encoder factory {encoder!r} returned a non-callable {self._embed!r}")
            self._identity = f"sim:factory:{encoder}"
        else:
            raise ValueError(f"SpeakerSim encoder must be 'resemblyzer', a callable or 'module:factory', got {encoder!r}")
        self.load_seconds = time.perf_counter() - t0

    def _load_resemblyzer(self, weights_path: str | os.PathLike | None, preprocess: bool) -> Callable:
        rz = import_package("resemblyzer", "resemblyzer", "sim")
        weights = Path(weights_path) if weights_path else Path(rz.__file__).parent / "pretrained.pt"
        if not weights.is_file():
            raise RuntimeError(f"SpeakerSim: no Resemblyzer weights at {weights}. Reinstall `resemblyzer` "
                               "or pass weights_path=<.pt file>. (Judges never download weights.)")
        self._weights = weights.resolve()
        with limit_threads(self.num_threads):
            encoder = rz.VoiceEncoder(device="cpu", verbose=False, weights_fpath=weights)
        encoder.eval()
        min_samples = SAMPLE_RATE // 4  # VAD can cut near-silent audio to nothing: then embed it raw

        def embed(wav: np.ndarray) -> np.ndarray:
            x = wav
            if preprocess:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = rz.preprocess_wav(wav)
                if len(x) < min_samples:
                    x = wav
            return encoder.embed_utterance(x)

        return embed

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def label(self) -> str:
        kind, _, rest = self._identity.partition(":")[2].partition(":")
        if kind == "resemblyzer":
            return "Resemblyzer d-vector cosine (bundled)"
        if kind == "wavlm":
            return f"WavLM x-vector cosine ({rest})"
        return f"speaker encoder {rest}"

    def embed(self, wav: np.ndarray, sha1: str | None = None) -> np.ndarray:
        """L2-normalised embedding (D,) of ``wav`` (N,), remembered by audio hash."""
        sha1 = sha1 or audio_sha1(wav)
        e = self._embeddings.get(sha1)
        if e is None:
            e = np.asarray(self._embed(wav), dtype=np.float64).reshape(-1)
            norm = np.linalg.norm(e)
            if not np.isfinite(norm) or norm == 0:
                raise RuntimeError(f"{self.name}: the speaker encoder returned a zero or non-finite embedding")
            e = e / norm
            self._embeddings[sha1] = e
            if len(self._embeddings) > self._embedding_cache_size:
                self._embeddings.popitem(last=False)
        else:
            self._embeddings.move_to_end(sha1)
        return e

    def _compute(self, items: list[JudgeItem]) -> list[float]:
        return [float(self.embed(it.wav, it.wav_sha1) @ self.embed(it.prompt_wav, it.prompt_sha1)) for it in items]
