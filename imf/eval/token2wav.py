"""Evaluate the Token2Wav stages (:mod:`imf.train.token2wav`) as one table.

Whole held-out utterances (:func:`imf.eval.evalset.make_latent_eval_set`: fixed noise, prompts
from another test utterance of the same speaker); the rows are :class:`~imf.eval.systems.System`
``(system, nfe)`` points (:func:`build_systems`): the VAE oracle (a reconstruction reference
row), the flow-matching generator in ``fm_nfe`` guided steps, the MeanFlow generator in one
step before and after each refinement, and the IntMeanFlow student in one step. Audio comes
from :func:`imf.eval.systems.waveforms`, scores from the judges of :mod:`imf.eval.judges`
through :class:`imf.eval.audio.AudioJudges`, the real-time factors from
:func:`imf.eval.speed.rtf_table` (side by side, relative to the flow-matching row).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from torch import Tensor
from tqdm.auto import tqdm

from imf.core.checkpoints import load_model
from imf.core.config import Config, require
from imf.data.tokenizers import PhoneTokenizer
from imf.data.waves import TokenWaveDataset, pad_stack
from imf.eval.audio import AudioJudges
from imf.eval.evalset import EvalSet, make_latent_eval_set
from imf.eval.judges import JudgesConfig, judge_labels, judge_specs, make_judges
from imf.eval.metrics import higher_is_better
from imf.eval.speed import rtf_table
from imf.eval.systems import System, guided, waveforms
from imf.models.token2wav import Token2Wav

STAGES = ("MF No-FT", "MF Decoder-FT", "MF Joint-FT")  # the refinement ladder the paper orders
JUDGED = ("wer", "sim", "mos", "pesq", "stoi")  # the table's judge columns (directions: imf.eval.metrics)


@dataclasses.dataclass(frozen=True)
class T2WEvalConfig(Config):
    split: str = "test"  # held-out split of whole utterances
    n_utts: int = 24  # evaluation utterances
    seed: int = 1234  # utterance choice and the fixed noise
    fm_nfe: int = 10  # Euler steps of the flow-matching row
    fm_cfg: float = 2.0  # guidance of the flow-matching row (1: none)
    rtf_repeats: int = 3  # timing rounds (fastest of them, after one warm-up)
    zero_shot_split: str = "unseen"  # held-out voices judged beside `split` (imf.runs.splits; "": seen split only)

    def validate(self) -> None:
        require(self.n_utts >= 1, "n_utts", "must be >= 1")
        require(self.fm_nfe >= 1, "fm_nfe", "must be >= 1")
        require(self.rtf_repeats >= 1, "rtf_repeats", "must be >= 1")


def token2wav_system(name: str, system: Token2Wav, cfg_scale: float = 1.0, schedule: str = "uniform") -> System:
    """A :class:`Token2Wav` as a waveform :class:`System`: its generator (guided by ``cfg_scale``) and decoder."""
    system.eval()
    return System(name, guided(system.generator, cfg_scale), schedule, decode=system.decode)


def vae_oracle(vae, name: str = "VAE oracle") -> System:
    """The reference row: the VAE's reconstruction ``decode(encode(wav))`` of the real audio (no sampling)."""
    vae.eval()

    def reconstruct(es: EvalSet) -> Tensor:
        wav, _ = pad_stack(es.wavs)
        return vae.decode(vae.encode(wav)[0])

    return System(name, None, reconstruct=reconstruct)


def build_systems(ckpts: Mapping[str, str | Path], fm_cfg_scale: float = 2.0, fm_nfe: int = 10,
                  fm_schedule: str = "uniform") -> list[tuple[System, int]]:
    """The table's six ``(system, nfe)`` rows from the stages' checkpoints (EMA weights).

    ``ckpts``: ``vae``, ``fm``, ``mf``, ``imf``, ``mf_decft``, ``mf_joint``
    (:func:`imf.train.token2wav.checkpoints`).
    """
    vae = load_model(ckpts["vae"])
    parts = lambda key: Token2Wav.from_parts(vae, load_model(ckpts[key]))  # noqa: E731
    return [
        (vae_oracle(vae), 0),
        (token2wav_system(f"FM {fm_nfe}-step", parts("fm"), fm_cfg_scale, fm_schedule), fm_nfe),
        (token2wav_system("MF No-FT", parts("mf")), 1),
        (token2wav_system("MF Decoder-FT", load_model(ckpts["mf_decft"])), 1),
        (token2wav_system("MF Joint-FT", load_model(ckpts["mf_joint"])), 1),
        (token2wav_system("IMF-distilled (1 step)", parts("imf")), 1),
    ]


def score_systems(wavs: Mapping[str, Sequence[Tensor]], es: EvalSet, judges: Sequence[Any],
                  wer_speakers: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Judge every system's audio: (summary table one row per system, per-utterance tables by system).

    WER (if among the judges) only on ``wer_speakers`` (voices the ASR transcribes reliably).
    """
    aj = AudioJudges(None, judges, wer_speakers)
    rows, tables = [], {}
    for name, ws in tqdm(wavs.items(), desc="judge systems", unit="system", total=len(wavs)):
        tables[name] = aj.table(es, ws)
        rows.append({"system": name, **{k: v for k, v in aj.summary(tables[name]).items() if k != "n_items"}})
    return pd.DataFrame(rows), tables


def ordering(df: pd.DataFrame, column: str, names: Sequence[str], up: bool) -> bool:
    """Whether ``column`` strictly improves along ``names`` (rows of ``df`` by ``system``)."""
    v = [float(df.set_index("system").loc[n, column]) for n in names]
    if any(math.isnan(x) for x in v):
        return False
    return all((b > a) if up else (b < a) for a, b in zip(v, v[1:]))


@dataclasses.dataclass
class T2WResult:
    """What :func:`evaluate_token2wav` measured."""
    es: EvalSet  # the eval set (whole utterances, fixed noise)
    points: list[tuple[System, int]]  # the rows
    wavs: dict[str, list[Tensor]]  # system name -> (n_samples_i,) waveforms
    table: pd.DataFrame  # one row per system: judges' scores, nfe, rtf_e2e, rtf_flow
    per_utterance: dict[str, pd.DataFrame]  # system name -> per-utterance judge scores
    rtf: pd.DataFrame  # imf.eval.speed.rtf_table, speedups relative to the flow-matching row
    speed: dict[str, float]  # flow-matching / MF 1-step time: "end_to_end", "generator_only"
    orderings: dict[str, bool]  # judge -> No-FT < Decoder-FT < Joint-FT holds
    judges: list[str]
    wer_voices: list[str] | None
    judge_labels: dict[str, str] = dataclasses.field(default_factory=dict)  # column -> the model that produced it
    judge_objs: list[Any] = dataclasses.field(default_factory=list, repr=False)  # the loaded judges (reused per split)


def latent_eval_set(corpus, vae, split: str, n_utts: int, seed: int, prompt_frames: int) -> EvalSet:
    """Whole utterances of ``split`` with ``vae``'s latents attached, fixed noise (:func:`make_latent_eval_set`)."""
    stride = vae.config.stride
    data = TokenWaveDataset(corpus, split, PhoneTokenizer(stride), stride).attach_latents(vae)
    return make_latent_eval_set(data, n_utts, seed, prompt_frames)


def judge_split(corpus, result: T2WResult, vae, cfg: T2WEvalConfig, split: str, prompt_frames: int = 50) -> pd.DataFrame:
    """``result``'s rows synthesised and judged on another ``split`` (its own utterances and fixed noise, latents
    of ``vae``, the same judges and WER voices; no timing): one row per system, ``system, nfe`` + the judges' columns."""
    es = latent_eval_set(corpus, vae, split, cfg.n_utts, cfg.seed, prompt_frames)
    wavs = waveforms(result.points, es)
    if result.judge_objs:
        scores, _ = score_systems(wavs, es, result.judge_objs, result.wer_voices)
    else:
        scores = pd.DataFrame({"system": list(wavs)})
    nfe = {p.name: n for p, n in result.points}
    return scores.assign(nfe=scores.system.map(nfe))[["system", "nfe"] + [c for c in scores.columns if c != "system"]]


def evaluate_token2wav(corpus, ckpts: Mapping[str, str | Path], cfg: T2WEvalConfig = T2WEvalConfig(),
                       prompt_frames: int = 50, judges: Sequence[str] = (),
                       wer_voices: Sequence[str] | None = None) -> T2WResult:
    """The table: the held-out split with the trained VAE's latents, the six rows synthesised on
    identical noise, judged (``judges``: names of :mod:`imf.eval.judges`; WER on ``wer_voices``
    only, all voices if None) and timed side by side."""
    vae = load_model(ckpts["vae"])
    es = latent_eval_set(corpus, vae, cfg.split, cfg.n_utts, cfg.seed, prompt_frames)
    points = build_systems(ckpts, fm_cfg_scale=cfg.fm_cfg, fm_nfe=cfg.fm_nfe)
    wavs = waveforms(points, es)
    judge_objs = make_judges(JudgesConfig(judges=judge_specs(judges))) if judges else []  # nested bars per judge
    if judge_objs:
        scores, per_utt = score_systems(wavs, es, judge_objs, wer_voices)
    else:
        scores, per_utt = pd.DataFrame({"system": list(wavs)}), {}
    fm_name, mf_name = points[1][0].name, STAGES[0]
    rtf = rtf_table(points, es, repeats=cfg.rtf_repeats, reference=fm_name)
    table = scores.merge(rtf[["system", "nfe", "rtf_e2e", "rtf_flow"]], on="system")
    table = table[["system", "nfe"] + [c for c in table.columns if c not in ("system", "nfe")]]
    mf = rtf.set_index("system").loc[mf_name]
    speed = {"end_to_end": float(mf["speedup_e2e"]), "generator_only": float(mf["speedup_flow"])}
    orderings = {c: ordering(table, c, STAGES, higher_is_better(c)) for c in JUDGED if c in table}
    return T2WResult(es, points, wavs, table, per_utt, rtf, speed, orderings, list(judges),
                     None if wer_voices is None else list(wer_voices), judge_labels(judge_objs), judge_objs)
