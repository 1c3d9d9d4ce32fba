"""UTMOS (Saeki et al. 2022) from a local TorchScript file: ``score = model(wav (1, N) 16 kHz)``.

No UTMOS weights ship in a package (FACTS: "Not available offline"), so the judge takes a
TorchScript export the user made once, e.g. from tarepan/SpeechMOS's ``utmos22_strong``::

    predictor = torch.hub.load("tarepan/SpeechMOS:v1.2.0", "utmos22_strong", trust_repo=True)
    wrapped = lambda wav: predictor(wav, 16000)          # (1, N) -> (1,)
    torch.jit.trace(Wrapper(predictor), torch.zeros(1, 16000)).save("utmos22_strong.pt")

Contract: the scripted module maps a float32 waveform (1, N) at 16 kHz to a MOS estimate of
shape (1,) or (1, 1) (or a scalar). TorchScript was chosen over ONNX because it loads with
torch alone (always installed) and is testable here with a traced module.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from imf.eval.judges.base import CachedJudge, JudgeItem


def file_sha1(path: Path, limit: int = 1 << 20) -> str:
    """SHA-1 of the first ``limit`` bytes and the size of ``path`` (a cheap identity for a checkpoint)."""
    with open(path, "rb") as f:
        head = f.read(limit)
    return hashlib.sha1(head + str(path.stat().st_size).encode()).hexdigest()[:12]


class UTMOS(CachedJudge):
    """MOS predicted by a TorchScript UTMOS export (column ``mos`` unless ``name`` says otherwise).

    Args:
        path: the TorchScript file (``torch.jit.save``).
        device: torch device.
    """
    name = "mos"
    higher_is_better = True

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", **kwargs: Any):
        super().__init__(**kwargs)
        import torch

        t0 = time.perf_counter()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise RuntimeError(f"MOS judge (utmos): no TorchScript file at {self.path}. Export UTMOS once with "
                               "torch.jit.trace(...).save(<file>) (see imf.eval.judges.utmos). (Judges never download weights.)")
        try:
            self._model = torch.jit.load(str(self.path), map_location=device).eval()
        except RuntimeError as e:
            raise RuntimeError(f"MOS judge (utmos): {self.path} is not a TorchScript file ({e})") from e
        self.device, self._sha1 = device, file_sha1(self.path)
        self.load_seconds = time.perf_counter() - t0

    @property
    def identity(self) -> str:
        return f"mos:utmos:{self.path.resolve()}:{self._sha1}"

    @property
    def label(self) -> str:
        return f"UTMOS ({self.path.name})"

    def _compute(self, items: list[JudgeItem]) -> list[float]:
        import torch

        out = []
        with torch.inference_mode():
            for it in items:
                y = self._model(torch.from_numpy(np.clip(it.wav, -1.0, 1.0))[None].to(self.device))
                if y.numel() != 1:
                    raise RuntimeError(f"MOS judge (utmos): {self.path} returned shape {tuple(y.shape)} for one "
                                       "utterance; expected one score")
                out.append(float(y.reshape(())))
        return out
