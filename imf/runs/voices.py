"""Which voices WER is scored on: the list notebook 00_vocoder chose, read here in the runs layer.

00_vocoder transcribes the REAL recordings of every voice and keeps the voices whose WER is
within its threshold (``results/00_vocoder/metrics.json``, key ``wer_voices``); later notebooks
score WER only on those (robotic voices the ASR cannot follow would swamp the column). Library
code never reads ``results/``: notebooks call :func:`wer_voices` and hand the list to
:class:`imf.eval.audio.AudioJudges` explicitly.
"""
from __future__ import annotations

import json
from pathlib import Path

from imf.runs.report import results_dir

SECTION = "00_vocoder"  # the notebook whose metrics.json holds the list


def wer_voices(override: list[str] | None = None, results: Path | None = None) -> list[str] | None:
    """Voices scored by WER.

    ``override`` if it is a non-empty list; else the ``wer_voices`` list of
    ``<results>/00_vocoder/metrics.json`` (``results`` default: :func:`imf.runs.report.results_dir`);
    else None (WER on every voice: 00_vocoder has not run, or it found no reliable voice).
    A file that is not valid JSON, or whose ``wer_voices`` is not a list of names, is an error
    naming the file.
    """
    if override is not None and (isinstance(override, str) or not all(isinstance(v, str) for v in override)):
        raise TypeError(f"wer_voices override must be a list of voice names, got {override!r}")
    if override:
        return list(override)
    path = Path(results if results is not None else results_dir()) / SECTION / "metrics.json"
    if not path.exists():
        return None
    try:
        blob = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run notebooks/{SECTION}.ipynb") from e
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(blob).__name__}; re-run notebooks/{SECTION}.ipynb")
    voices = blob.get("wer_voices")
    if voices is not None and not (isinstance(voices, list) and all(isinstance(v, str) for v in voices)):
        raise ValueError(f"{path}: 'wer_voices' must be a list of voice names, got {voices!r}; "
                         f"re-run notebooks/{SECTION}.ipynb")
    return voices or None
