"""Audio judges on generated mels: vocode, then WER / SIM / MOS / PESQ / STOI.

:class:`AudioJudges` is the ``judges`` hook of :func:`imf.eval.sweep.nfe_sweep` and
:func:`imf.eval.sweep.grid_metric`: ``judges(es, x) -> {"wer": ..., "sim": ..., ...}``
for normalised mels ``x`` (N, C, T) generated on the eval set ``es``. Each utterance is
vocoded over its valid frames; WER uses the utterance's transcript, SIM the REAL audio of
its prompt utterance (same speaker, SIM-o style), PESQ/STOI the real audio of the same
utterance. The same judges on the real mels give the vocoder's copy-synthesis ceiling, and
on the real audio the corpus ceiling.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import torch
from torch import Tensor

from imf.eval.judges import JudgeItem, evaluate, summarise


def wer_voices(override: str = "") -> list[str] | None:
    """Voices scored by WER: ``override`` (comma-separated) if given, else the list notebook
    00_vocoder chose (real-recording WER within its threshold, ``results/00_vocoder/metrics.json``),
    else None (WER on every voice)."""
    from imf.runs.report import results_dir

    voices = [v for v in override.split(",") if v]
    if voices:
        return voices
    path = results_dir() / "00_vocoder" / "metrics.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("wer_voices") or None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run notebooks/00_vocoder.ipynb") from e


class AudioJudges:
    """``judges(es, x_norm) -> dict`` of corpus-level summaries (WER over words, other means).

    ``wer_speakers``: WER is computed only on utterances of these speakers (voices that the
    ASR transcribes reliably on real recordings; robotic voices would swamp the column), the
    other judges on every utterance. None: WER on all.
    """

    def __init__(self, vocoder: Any, judges: Sequence[Any], wer_speakers: Sequence[str] | None = None):
        self.vocoder, self.judges = vocoder, list(judges)
        self.wer_speakers = None if wer_speakers is None else set(wer_speakers)
        self.last_table = None  # per-utterance scores of the last call

    @torch.inference_mode()
    def wavs(self, es, x_norm: Tensor) -> list[Tensor]:
        """Vocode each utterance's valid frames: list of (N_i,) float32 at 16 kHz."""
        out = []
        for i in range(len(es)):
            n = int(es.mask[i].sum())
            mel = es.corpus.denormalize(x_norm[i, :, :n])
            out.append(self.vocoder.vocode(mel[None])[0].float().clamp(-1, 1))
        return out

    def items(self, es, wavs: Sequence[Tensor]) -> list[JudgeItem]:
        items = []
        for i, wav in enumerate(wavs):
            ref = es.corpus.load_wav(es.ids[i])
            prompt = es.corpus.load_wav(es.prompt_ids[i]) if es.prompt_ids else None
            items.append(JudgeItem(wav=wav.numpy(), text=es.texts[i] if es.texts else None,
                                   ref_wav=ref.numpy(), prompt_wav=None if prompt is None else prompt.numpy(),
                                   id=es.ids[i]))
        return items

    def score_wavs(self, es, wavs: Sequence[Tensor]) -> dict[str, float]:
        items = self.items(es, wavs)
        asr = [j for j in self.judges if getattr(j, "name", "") == "wer"]
        rest = [j for j in self.judges if j not in asr]
        table = evaluate(rest, items) if rest else None
        if asr:
            keep = items
            if self.wer_speakers is not None and es.speakers is not None:
                names = [es.corpus.speakers[int(k)] for k in es.speakers]
                keep = [it for it, n in zip(items, names) if n in self.wer_speakers]
            if keep:
                wer = evaluate(asr, keep)
                table = wer if table is None else table.join(wer, how="left")
        self.last_table = table
        return {k: v for k, v in summarise(table).items() if k != "n_items"}

    def __call__(self, es, x_norm: Tensor) -> dict[str, float]:
        return self.score_wavs(es, self.wavs(es, x_norm))

    def real_audio(self, es) -> dict[str, float]:
        """The corpus ceiling: the same judges on the real recordings (no vocoder)."""
        return self.score_wavs(es, [es.corpus.load_wav(i) for i in es.ids])
