"""SIM-o with a WavLM speaker-verification model (``transformers`` ``WavLMForXVector``) from a
LOCAL folder, e.g. ``microsoft/wavlm-base-plus-sv`` saved with ``save_pretrained`` (the papers'
SIM-o uses a WavLM-large + ECAPA-TDNN verifier; any ``WavLMForXVector`` folder plugs in here).

The folder holds the model (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``) and
its feature extractor (``preprocessor_config.json``). Nothing is downloaded: both load with
``local_files_only=True``. The embedding of a waveform is the model's ``embeddings`` output
(the x-vector, before the AMSoftmax head); :class:`~imf.eval.judges.sim.SpeakerSim` L2-normalises
it and takes the cosine to the prompt's embedding.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imf.eval.judges.base import SAMPLE_RATE, import_package, require_files

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class WavLMEmbedder:
    """``f(wav (N,) float32 16 kHz) -> x-vector (D,)`` with a local ``WavLMForXVector`` folder.

    Args:
        path: the folder (config.json, weights, preprocessor_config.json).
        device: torch device of the model.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise RuntimeError(f"SIM judge (wavlm): no WavLMForXVector folder at {self.path}. Save one with "
                               "WavLMForXVector.from_pretrained(...).save_pretrained(<folder>) plus its feature "
                               "extractor (Judges never download weights.)")
        require_files(self.path, ["config.json", "preprocessor_config.json"], "SIM judge (wavlm): incomplete model folder",
                      "Save the model and its feature extractor there with save_pretrained.")
        if not any((self.path / f).is_file() for f in WEIGHT_FILES):
            raise RuntimeError(f"SIM judge (wavlm): looked in {self.path} and found no weights "
                               f"({' or '.join(WEIGHT_FILES)}). (Judges never download weights.)")
        tf = import_package("transformers", "transformers", "sim")
        self.model = tf.WavLMForXVector.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
        self.extractor = tf.AutoFeatureExtractor.from_pretrained(str(self.path), local_files_only=True)
        self.device = device
        sr = getattr(self.extractor, "sampling_rate", SAMPLE_RATE)
        if sr != SAMPLE_RATE:
            raise RuntimeError(f"SIM judge (wavlm): the feature extractor in {self.path} expects {sr} Hz; judges take {SAMPLE_RATE} Hz")

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        import torch

        inputs = self.extractor(np.asarray(wav, dtype=np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.inference_mode():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.embeddings[0].float().cpu().numpy()
