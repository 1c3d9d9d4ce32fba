"""The judges' ceilings every later number sits under (notebook 00_vocoder).

- :func:`real_recordings`: the judges on the corpus's real held-out recordings, per voice
  (which voices Whisper can transcribe: :func:`reliable_voices`; MOS per voice).
- :func:`real_speaker_similarity`: SIM of real recordings, same speaker vs different speakers.
- :func:`copy_synthesis` / :func:`evaluate_copy_synthesis` / :func:`copy_synthesis_table`: a
  vocoder on ground-truth mels (PESQ / STOI against the original audio, MOS).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterable, Mapping, Sequence

import pandas as pd
from torch import Tensor, nn
from tqdm.auto import tqdm

from imf.eval.judges import PESQ, STOI, JudgeItem, JudgesConfig, evaluate, make_judge, make_judges, summarise


@dataclasses.dataclass
class RealRecordings:
    """Judges on real recordings: ``pick`` the held-out utterances (manifest rows), ``per_voice``
    utterances per voice, ``scores`` per utterance (index id, + ``speaker``), ``by_voice`` one row per voice."""
    pick: pd.DataFrame
    per_voice: int
    scores: pd.DataFrame
    by_voice: pd.DataFrame


def _means(df: pd.DataFrame) -> dict[str, float]:
    return {k: v for k, v in summarise(df).items() if k != "n_items"}


def real_recordings(corpus, per_voice: int, judges: Sequence[str]) -> RealRecordings:
    """The first ``per_voice`` held-out utterances of every voice (test split for seen voices,
    unseen split for held-out ones) judged by ``judges`` (names; SIM needs pairs, see
    :func:`real_speaker_similarity`), summarised per voice (WER at corpus level)."""
    held = pd.concat([corpus.split("test"), corpus.split("unseen")])
    pick = held.groupby("speaker", sort=False).head(per_voice)
    ids = pick["id"].tolist()
    judge_objs = make_judges(JudgesConfig(judges=tuple(judges))) if judges else []  # a bar per judge
    items = [JudgeItem(wav=corpus.load_wav(i).numpy(), text=t, id=i) for i, t in zip(ids, pick["text"])]
    scores = evaluate([j for j in judge_objs if j.name != "sim"], items) if judge_objs else pd.DataFrame(index=ids)
    scores["speaker"] = pick.set_index("id").loc[scores.index, "speaker"].values
    rows = []
    for spk, g in scores.groupby("speaker", sort=False):
        row = {"speaker": spk, "engine": corpus.speaker_info[spk]["engine"] if hasattr(corpus, "speaker_info") else "",
               "utts": len(g)}
        row.update(_means(g.drop(columns=["speaker"])))
        rows.append(row)
    return RealRecordings(pick, per_voice, scores, pd.DataFrame(rows))


def reliable_voices(by_voice: pd.DataFrame, wer_max: float) -> list[str]:
    """Voices whose real-recording WER is at most ``wer_max`` (those WER is scored on later)."""
    return by_voice[by_voice["wer"] <= wer_max]["speaker"].tolist() if "wer" in by_voice else []


def real_speaker_similarity(corpus, pick: pd.DataFrame, same_per_speaker: int = 4) -> pd.DataFrame:
    """SIM (resemblyzer cosine) of real recordings: every pair among a speaker's first
    ``same_per_speaker`` utterances ("same") and the first utterances of every two speakers
    ("different"). Returns mean / std / count per kind."""
    sim = make_judge("sim")
    by_spk = {s: g["id"].tolist() for s, g in pick.groupby("speaker", sort=False)}
    pairs = []
    for s, utts in by_spk.items():
        pairs += [("same", a, b) for a, b in itertools.combinations(utts[:same_per_speaker], 2)]
    for (s1, u1), (s2, u2) in itertools.combinations([(s, u[0]) for s, u in by_spk.items()], 2):
        pairs.append(("different", u1, u2))
    scores = sim.score([JudgeItem(wav=corpus.load_wav(a).numpy(), prompt_wav=corpus.load_wav(b).numpy(), id=f"{a}|{b}")
                        for _, a, b in pairs])
    df = pd.DataFrame({"kind": [p[0] for p in pairs], "sim": scores})
    return df.groupby("kind")["sim"].agg(["mean", "std", "count"]).reset_index()


def copy_synthesis(vocoder: nn.Module, corpus, ids: Iterable[str]) -> list[tuple[str, Tensor, Tensor]]:
    """Re-synthesise utterances from their cached mels: ``[(id, wav_ref (N,), wav_hat (N,))]``.

    ``vocoder`` is anything with ``vocode(mel) -> wav`` (:class:`~imf.models.vocoder.Vocoder`,
    :class:`~imf.models.vocoder.GriffinLim`). ``wav_ref`` is the corpus audio cut to the
    vocoder's ``(T - 1) * hop`` samples (the tail past the last frame centre is dropped), so
    the pair is sample-aligned.
    """
    out = []
    ids = list(ids)
    for uid in tqdm(ids, desc="copy synthesis", unit="utt", leave=False, disable=len(ids) < 8):
        mel = corpus.load_mel(uid)
        wav = corpus.load_wav(uid).float().reshape(-1)
        wav_hat = vocoder.vocode(mel).float().reshape(-1)
        n = min(wav.numel(), wav_hat.numel())
        out.append((str(uid), wav[:n].clone(), wav_hat[:n].clone()))
    return out


def evaluate_copy_synthesis(vocoder: nn.Module, corpus, ids: Iterable[str], judges=None) -> pd.DataFrame:
    """Copy-synthesis scores per utterance: a DataFrame indexed by ``id`` with one column per judge.

    ``judges``: :mod:`imf.eval.judges` judges (default: wide-band PESQ and STOI against the
    corpus audio, single-threaded); add ``make_judge("wer")`` etc. for the ASR/MOS ceilings.
    ``summarise(df)`` from the same module gives the means. Also a ``seconds`` column.
    """
    judges = [PESQ(progress=False), STOI(progress=False)] if judges is None else list(judges)
    pairs = copy_synthesis(vocoder, corpus, ids)
    items = [JudgeItem(wav=hat.clamp(-1, 1).numpy(), ref_wav=ref.numpy(), id=uid) for uid, ref, hat in pairs]
    df = evaluate(judges, items)
    df["seconds"] = [ref.numel() / corpus.mel_config.sample_rate for _, ref, _ in pairs]
    return df


def copy_synthesis_ids(real: RealRecordings) -> list[str]:
    """The first ``max(1, per_voice // 2)`` picked utterances of every voice."""
    return real.pick.groupby("speaker", sort=False).head(max(1, real.per_voice // 2))["id"].tolist()


def copy_synthesis_table(corpus, vocoders: Mapping[str, nn.Module], real: RealRecordings,
                         judges: Sequence[str]) -> pd.DataFrame:
    """Each vocoder's copy synthesis of :func:`copy_synthesis_ids`: mean PESQ / STOI (and MOS if
    ``"mos"`` is among ``judges``), then a "real recordings" row (the reference itself, MOS
    only: PESQ/STOI of the reference against itself are not measured)."""
    ids = copy_synthesis_ids(real)
    cs_judges = [make_judge("pesq"), make_judge("stoi")]
    if "mos" in judges:
        cs_judges += make_judges(JudgesConfig(judges=("mos",)))
    rows = [{"system": name, **_means(evaluate_copy_synthesis(voc, corpus, ids, judges=cs_judges).drop(columns=["seconds"]))}
            for name, voc in vocoders.items()]
    real_mos = float(real.scores["mos"].loc[ids].mean()) if "mos" in real.scores else math.nan
    return pd.DataFrame(rows + [{"system": "real recordings", "mos": real_mos}])
