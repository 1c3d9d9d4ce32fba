"""Fakes shared by the judge tests: a pure tone and a stub ASR (no weights)."""
from __future__ import annotations

import numpy as np

from imf.eval.judges import audio_sha1

SR = 16_000


def tone(seconds: float = 1.0, f: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


class CountingASR:
    """A stub recogniser: returns the transcript registered for an audio, counting calls."""

    def __init__(self, transcripts: dict[str, str]):
        self.transcripts, self.calls = transcripts, 0

    def __call__(self, wav: np.ndarray) -> str:
        self.calls += 1
        return self.transcripts[audio_sha1(wav)]
