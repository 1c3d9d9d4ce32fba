"""Wide-band PESQ (ITU-T P.862.2) at 16 kHz against a reference of the same utterance (package ``pesq``)."""
from __future__ import annotations

import warnings
from typing import Any

from imf.eval.judges.base import SAMPLE_RATE, CachedJudge, JudgeItem, crop_pair, import_package


class PESQ(CachedJudge):
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO about 1.0-4.64) of ``wav`` against ``ref_wav``.

    Lengths are aligned by cropping to the shorter; no time alignment beyond PESQ's own. An
    item PESQ cannot score (e.g. no speech found in the reference) gets NaN and a warning.
    """
    name = "pesq"
    higher_is_better = True
    needs = ("ref_wav",)
    key_fields = ("ref",)

    def __init__(self, mode: str = "wb", **kwargs: Any):
        super().__init__(**kwargs)
        if mode not in ("wb", "nb"):
            raise ValueError(f"PESQ mode must be 'wb' or 'nb', got {mode!r}")
        self.mode = mode
        self._pesq = import_package("pesq", "pesq", "pesq")
        self.load_seconds = 0.0

    @property
    def identity(self) -> str:
        return f"pesq:{self.mode}"

    @property
    def label(self) -> str:
        return f"PESQ ({'wide' if self.mode == 'wb' else 'narrow'}-band)"

    def _compute(self, items: list[JudgeItem]) -> list[float]:
        out = []
        for it in items:
            ref, deg = crop_pair(it)
            try:
                out.append(float(self._pesq.pesq(SAMPLE_RATE, ref, deg, self.mode)))
            except self._pesq.PesqError as e:
                warnings.warn(f"PESQ failed on item {it.id!r}: {type(e).__name__}: {e}; scoring NaN")
                out.append(float("nan"))
        return out
