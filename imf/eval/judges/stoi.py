"""STOI (Taal et al. 2011) against a reference of the same utterance (package ``pystoi``)."""
from __future__ import annotations

from typing import Any

from imf.eval.judges.base import SAMPLE_RATE, CachedJudge, JudgeItem, crop_pair, import_package


class STOI(CachedJudge):
    """Short-time objective intelligibility (0-1) of ``wav`` against ``ref_wav`` (cropped to the
    shorter). ``extended=True`` gives ESTOI."""
    name = "stoi"
    higher_is_better = True
    needs = ("ref_wav",)
    key_fields = ("ref",)

    def __init__(self, extended: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.extended = extended
        self._stoi = import_package("pystoi", "pystoi", "stoi").stoi
        self.load_seconds = 0.0

    @property
    def identity(self) -> str:
        return f"stoi:extended={self.extended}"

    @property
    def label(self) -> str:
        return "ESTOI" if self.extended else "STOI"

    def _compute(self, items: list[JudgeItem]) -> list[float]:
        return [float(self._stoi(*crop_pair(it), SAMPLE_RATE, extended=self.extended)) for it in items]
