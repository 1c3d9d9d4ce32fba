"""Data configs shared by the token2mel recipes and evaluation."""
from __future__ import annotations

import dataclasses

from imf.core.config import Config, require


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    max_frames: int = 192  # training crops (frames of 16 ms)
    prompt_frames: int = 96  # speaker prompt crop from another utterance of the same speaker

    def validate(self) -> None:
        require(self.max_frames >= 8, "max_frames", "must be >= 8")
        require(self.prompt_frames >= 4, "prompt_frames", "must be >= 4")
