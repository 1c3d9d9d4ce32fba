"""MOS: DNSMOS P.808 (ONNX models inside the package ``speechmos``), run by onnxruntime."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from imf.eval.judges.base import SAMPLE_RATE, CachedJudge, JudgeItem, import_package, require_files


class MOS(CachedJudge):
    """DNSMOS (Reddy et al. 2022) through ``speechmos``; the score is the P.808 MOS.

    The score (column ``mos``) is speechmos's ``p808_mos`` field: the P.808 model's overall
    quality on a 1-5 scale. The P.835 SIG / BAK / OVRL estimates come as ``mos.sig``,
    ``mos.bak``, ``mos.ovrl``. DNSMOS judges 9.01 s windows: shorter audio is looped to that
    length (speechmos's behaviour); audio is clipped to [-1, 1] first. It was trained for noise
    suppression, and separates TTS systems only weakly.

    Args:
        model_dir: folder with ``sig_bak_ovr.onnx`` and ``model_v8.onnx``; None: the ones in
            the ``speechmos`` package.
    """
    name = "mos"
    higher_is_better = True

    def __init__(self, model_dir: str | os.PathLike | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        t0 = time.perf_counter()
        dnsmos = import_package("speechmos.dnsmos", "speechmos", "mos")
        ort = import_package("onnxruntime", "onnxruntime", "mos")
        self.model_dir = Path(model_dir) if model_dir else Path(dnsmos.__file__).parent / "dnsmos_models"
        require_files(self.model_dir, ["sig_bak_ovr.onnx", "model_v8.onnx"], "MOS judge: no DNSMOS ONNX models",
                       "Reinstall `speechmos` or pass model_dir=<folder with the DNSMOS ONNX files>.")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        primary, p808 = self.model_dir / "sig_bak_ovr.onnx", self.model_dir / "model_v8.onnx"

        class _DNSMOS(dnsmos.DNSMOS):  # speechmos's scorer, with sessions we control (threads, CPU)
            def __init__(self) -> None:
                self.primary_model_path = str(primary)
                self.onnx_sess = ort.InferenceSession(str(primary), opts, providers=["CPUExecutionProvider"])
                self.p808_onnx_sess = ort.InferenceSession(str(p808), opts, providers=["CPUExecutionProvider"])

        self._dnsmos = _DNSMOS()
        self.load_seconds = time.perf_counter() - t0

    @property
    def identity(self) -> str:
        return f"mos:dnsmos:{self.model_dir.resolve()}"

    @property
    def label(self) -> str:
        return "DNSMOS P.808 (bundled)"

    def _compute(self, items: list[JudgeItem]) -> list[dict[str, float]]:
        out = []
        for it in items:
            r = self._dnsmos(np.clip(it.wav, -1.0, 1.0), SAMPLE_RATE, False)
            out.append({k: float(r[k]) for k in ("p808_mos", "sig_mos", "bak_mos", "ovrl_mos")})
        return out

    def _columns(self, item: JudgeItem, raw: dict[str, float]) -> dict[str, Any]:
        n = self.name
        return {n: raw["p808_mos"], f"{n}.sig": raw["sig_mos"], f"{n}.bak": raw["bak_mos"], f"{n}.ovrl": raw["ovrl_mos"]}
