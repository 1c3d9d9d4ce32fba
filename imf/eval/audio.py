"""Audio judges on generated mels: vocode, then WER / SIM / MOS / PESQ / STOI.

:class:`AudioJudges` is the ``judges`` hook of :func:`imf.eval.sweep.nfe_sweep` and
:func:`imf.eval.sweep.grid_metric`: ``judges(es, x) -> {"wer": ..., "sim": ..., ...}``
for normalised mels ``x`` (N, C, T) generated on the eval set ``es``. Each utterance is
vocoded over its valid frames; WER uses the utterance's transcript, SIM the REAL audio of
its prompt utterance (same speaker, SIM-o style), PESQ/STOI the real audio of the same
utterance. The same judges on the real mels give the vocoder's copy-synthesis ceiling, and
on the real audio the corpus ceiling.

Per-utterance scores come from :meth:`AudioJudges.table`, corpus-level ones from
:meth:`AudioJudges.summary` of that table (``score_wavs = summary(table(...))``); :meth:`AudioJudges.mel_table`
scores generated mels and keeps each table, so the same output judged twice (a sweep's row, then a paired
verdict, then an alignment check) is vocoded and judged once. Which voices
WER is reliable on is given explicitly (``wer_speakers``); the runs layer reads the list
notebook 00_vocoder chose (:func:`imf.runs.voices.wer_voices`).

Under ``torchrun`` vocoding and judging shard the utterances across processes and gather them in order
(:func:`imf.eval.judges.evaluate`), so every process gets the table one process would.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch
from torch import Tensor

from imf.core import distributed
from imf.core.checkpoints import tensors_fingerprint
from imf.eval.judges import JudgeItem, evaluate, summarise


class AudioJudges:
    """Vocode generated mels and score them with judges of :mod:`imf.eval.judges`.

    ``judges(es, x_norm) -> dict`` of corpus-level summaries (WER over words, other means);
    :meth:`table` gives the per-utterance scores behind them.

    ``wer_speakers``: WER is computed only on utterances of these speakers (voices that the
    ASR transcribes reliably on real recordings; robotic voices would swamp the column), the
    other judges on every utterance. None: WER on all.
    """

    def __init__(self, vocoder: Any, judges: Sequence[Any], wer_speakers: Sequence[str] | None = None):
        self.vocoder, self.judges = vocoder, list(judges)
        if isinstance(wer_speakers, str):
            raise TypeError(f"wer_speakers must be a list of speaker names or None, got the string {wer_speakers!r}")
        self.wer_speakers = None if wer_speakers is None else set(wer_speakers)
        self._mel_tables: dict[str, pd.DataFrame] = {}

    @torch.inference_mode()
    def wavs(self, es, x_norm: Tensor, shard: bool = True) -> list[Tensor]:
        """Vocode each utterance's valid frames of ``x_norm`` (N, C, T): list of (N_i,) float32 at 16 kHz.

        ``shard``: under torchrun each process vocodes its block of utterances and the blocks are
        gathered in order (:mod:`imf.core.distributed`); every process returns all N waveforms."""
        sharded = shard and distributed.active()
        out = []
        for i in (distributed.shard_range(len(es)) if sharded else range(len(es))):
            n = int(es.mask[i].sum())
            mel = es.corpus.denormalize(x_norm[i, :, :n])
            out.append(self.vocoder.vocode(mel[None])[0].float().clamp(-1, 1))
        if sharded:
            out = [w for part in distributed.all_gather_objects([w.cpu() for w in out]) for w in part]
        return out

    def items(self, es, wavs: Sequence[Tensor]) -> list[JudgeItem]:
        """One :class:`JudgeItem` per utterance: its audio, transcript, real recording (ref) and
        the real recording of its prompt utterance (prompt)."""
        items = []
        for i, wav in enumerate(wavs):
            ref = es.corpus.load_wav(es.ids[i])
            prompt = es.corpus.load_wav(es.prompt_ids[i]) if es.prompt_ids else None
            items.append(JudgeItem(wav=wav.numpy(), text=es.texts[i] if es.texts else None,
                                   ref_wav=ref.numpy(), prompt_wav=None if prompt is None else prompt.numpy(),
                                   id=es.ids[i]))
        return items

    def table(self, es, wavs: Sequence[Tensor]) -> pd.DataFrame:
        """Per-utterance scores of ``wavs`` (one (N_i,) waveform per utterance of ``es``).

        Index: the utterance ids (``id``), one row per utterance. Columns: the judges' columns
        (:func:`imf.eval.judges.evaluate`: ``sim``, ``mos``, ``mos.sig``, ...), then the WER
        judge's (``wer``, ``wer.errors``, ``wer.words``, ``wer.hyp``), which hold values only on
        utterances of ``wer_speakers`` and NaN elsewhere (no WER columns if none of the
        utterances is of those speakers).
        """
        if len(wavs) != len(es.ids):
            raise ValueError(f"{len(wavs)} waveforms for an eval set of {len(es.ids)} utterances")
        items = self.items(es, wavs)
        asr = [j for j in self.judges if getattr(j, "name", "") == "wer"]
        rest = [j for j in self.judges if j not in asr]
        table = evaluate(rest, items) if rest else pd.DataFrame(index=pd.Index(list(es.ids), name="id"))
        if asr:
            keep = items
            if self.wer_speakers is not None and es.speakers is not None:
                names = [es.corpus.speakers[int(k)] for k in es.speakers]
                keep = [it for it, n in zip(items, names) if n in self.wer_speakers]
            if keep:
                table = table.join(evaluate(asr, keep), how="left")
        return table

    @staticmethod
    def summary(table: pd.DataFrame) -> dict[str, float]:
        """Corpus-level scores of a :meth:`table`: WER as total errors / total words over the
        scored utterances, the other judges' means (NaN skipped); extra columns left out."""
        return {k: v for k, v in summarise(table).items() if k != "n_items"}

    def score_wavs(self, es, wavs: Sequence[Tensor]) -> dict[str, float]:
        """``summary(table(es, wavs))``."""
        return self.summary(self.table(es, wavs))

    def mel_table(self, es, x_norm: Tensor) -> pd.DataFrame:
        """:meth:`table` of normalised mels ``x_norm`` (N, C, T) generated on ``es``, kept per (utterances, texts,
        prompts, mask, mels): asked again for the same output, it returns the kept table (a copy)."""
        key = tensors_fingerprint([("x", x_norm), ("mask", es.mask)],
                                  repr((list(es.ids), list(es.texts or []), list(es.prompt_ids or []))))
        if key not in self._mel_tables:
            self._mel_tables[key] = self.table(es, self.wavs(es, x_norm))
        return self._mel_tables[key].copy()

    def __call__(self, es, x_norm: Tensor) -> dict[str, float]:
        """Corpus-level scores of normalised mels ``x_norm`` (N, C, T) generated on ``es``."""
        return self.summary(self.mel_table(es, x_norm))

    def real_audio(self, es) -> dict[str, float]:
        """The corpus ceiling: the same judges on the real recordings (no vocoder)."""
        return self.score_wavs(es, [es.corpus.load_wav(i) for i in es.ids])
