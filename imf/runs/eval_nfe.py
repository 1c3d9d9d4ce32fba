"""Notebook 03, quality vs NFE (the paper's Fig. 3 analogue): what is sampled and judged.

Every system on the identical noise of the opened evaluation set ``wb.es``: the teacher guided and
unguided on uniform and sway grids, the IntMeanFlow student (no guidance) at its NFEs::

    wb = open_runs("small", "03_nfe_curves")
    curves = nfe_curves(wb)                      # the sweep (one table row per system and NFE)
    figures = plot_nfe_curves(wb, curves)        # metric vs NFE, same-noise samples
    audio = audio_vs_nfe(wb, curves)             # WER / SIM / MOS of the vocoded output
    timings = speed_and_rtf(wb, curves.cfg_scale, curves.max_nfe)   # imf.runs.sections_eval
    report_nfe_curves(wb, curves, audio, timings, nfe_criteria(wb, curves, timings, audio))
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import pandas as pd
from torch import Tensor
from tqdm.auto import tqdm

from imf.eval.audio import AudioJudges
from imf.eval.judges import JudgesConfig, judge_labels, judge_specs, make_judges
from imf.eval.metrics import distance_per_utterance, paired_verdict
from imf.eval.sweep import nfe_sweep
from imf.eval.systems import System, guided
from imf.flow import schedules
from imf.runs.open import Opened
from imf.runs.sections_eval import Timings
from imf.runs.splits import split_voices, sweep_split, unseen_eval_set
from imf.runs.voices import wer_voices
from imf.viz.plots import plot_metric_vs_nfe, plot_samples

STUDENT = "IntMeanFlow student"  # the student's name in the tables


@dataclasses.dataclass
class NFECurves:
    """The sweep of :func:`nfe_curves`: ``table`` (one row per system and NFE, :func:`imf.eval.sweep.nfe_sweep`
    columns), ``outputs`` (system name, NFE) -> normalised mel (N, C, T) on ``wb.es``'s noise."""
    table: pd.DataFrame
    outputs: dict[tuple[str, int], Tensor]
    guided_name: str  # the guided teacher's name, e.g. "teacher + CFG 2"
    cfg_scale: float
    max_nfe: int  # the reference: the guided teacher at this NFE (uniform grid)
    unseen: pd.DataFrame | None = None  # guided teacher + student on the zero-shot split (None: no such split)
    unseen_voices: list[str] = dataclasses.field(default_factory=list)  # its voices

    def row(self, system: str, nfe: int) -> pd.Series:
        return self.table[(self.table.system == system) & (self.table.nfe == nfe)].iloc[0]


def nfe_curves(wb: Opened, cfg_scale: float = 0.0, sway: float = -1.0, progress: bool = True) -> NFECurves:
    """Sample and score every system at every NFE of the profile's ``eval`` section.

    ``cfg_scale``: guidance of the guided teacher (0: the profile's ``eval.cfg_scale``); ``sway``: the
    sway coefficient of the guided teacher's sway grids (between 1 and the largest NFE: at 1 NFE sway is
    uniform, at the largest it spends the reference's own budget). ``dist_ref``: distance to the guided teacher at the
    largest teacher NFE.
    """
    E = wb.P["eval"]
    w = cfg_scale or E["cfg_scale"]
    t_cfg = f"teacher + CFG {w:g}"
    max_nfe = max(E["teacher_nfes"])
    # sway for the guided teacher where a grid can differ from uniform and is not the reference's own budget
    sway_nfes = [n for n in E["teacher_nfes"] if 1 < n < max_nfe]
    systems = [System(t_cfg, guided(wb.teacher, w)), System("teacher", wb.teacher),
               System(f"{t_cfg}, sway", guided(wb.teacher, w), "sway", {n: schedules.sway(n, sway) for n in sway_nfes})]
    points = [(s, n) for s in systems[:2] for n in E["teacher_nfes"]] + [(systems[2], n) for n in sway_nfes]
    points += [(System(STUDENT, wb.student), n) for n in E["student_nfes"]]
    table, outputs = nfe_sweep(wb.es, points, reference=(systems[0], max_nfe), batch_size=E["batch_size"],
                               progress=progress, keep=True, cache=wb.samples)
    # zero-shot: the guided teacher (uniform) and the student again on held-out voices, under a forked RNG
    split = E.get("zero_shot_split", "unseen")
    ues = unseen_eval_set(wb.corpus, split, E["n_utts"], E["seed"], E["max_frames"], wb.P["data"]["prompt_frames"])
    zs_points = [p for p in points if p[0].name in (t_cfg, STUDENT)]
    unseen = sweep_split(ues, zs_points, (systems[0], max_nfe), E["batch_size"], cache=wb.samples)
    return NFECurves(table, outputs, t_cfg, w, max_nfe, unseen, split_voices(wb.corpus, split) if ues is not None else [])


def plot_nfe_curves(wb: Opened, curves: NFECurves) -> list[Path]:
    """``nfe_curves.png`` (intrinsic metrics vs NFE) and ``samples.png`` (the first utterance, real and
    a few systems on the same noise) in ``wb.out``; returns their paths."""
    t_cfg = curves.guided_name
    curve = plot_metric_vs_nfe(curves.table, ["fs_ratio", "gv_ratio", "dist_ref"], wb.out / "nfe_curves.png",
                               refs={"fs_ratio": 1.0, "gv_ratio": 1.0},
                               title=f"quality vs NFE, {len(wb.es)} held-out utterances, identical noise")
    keys = [(t_cfg, 1), (t_cfg, 4), (STUDENT, 1), (t_cfg, curves.max_nfe)]
    shown = {f"{name}, {n} NFE": curves.outputs[(name, n)] for name, n in keys if (name, n) in curves.outputs}
    return [curve, plot_samples(wb.es, shown, wb.out / "samples.png")]


def audio_vs_nfe(wb: Opened, curves: NFECurves, judges: Sequence[str] = ("wer", "sim", "mos"),
                 vocoder_run: str = "vocoder") -> pd.DataFrame:
    """Audio judges on the vocoded output of the guided teacher (uniform grids) and the student, after
    two ceiling rows (real recordings, vocoder copy-synthesis); also draws ``nfe_audio_judges.png``.

    An empty table (and a printed reason) without ``judges`` or without a trained vocoder.
    """
    trained = wb.vocoder_checkpoint(vocoder_run) is not None
    if not judges or not trained:
        print(f"no audio judges: JUDGES={list(judges)!r}, vocoder run {vocoder_run!r} trained: {trained}")
        return pd.DataFrame()
    E, es = wb.P["eval"], wb.es
    aj = AudioJudges(wb.vocoder(vocoder_run, fallback=False), make_judges(JudgesConfig(judges=judge_specs(judges))),
                     wer_voices())
    rows = [{"system": "real recordings", "nfe": 0, **aj.real_audio(es)},
            {"system": "vocoder copy-synthesis", "nfe": 0, **aj(es, es.z_1)}]
    keys = ([(curves.guided_name, n) for n in E.get("judged_teacher_nfes") or E["teacher_nfes"]]
            + [(STUDENT, n) for n in E.get("judged_student_nfes") or E["student_nfes"]])
    for key in tqdm(keys, desc="audio judges", unit="point"):  # the judges' own bars nest under it
        rows.append({"system": key[0], "nfe": key[1], **aj(es, curves.outputs[key])})
    audio = pd.DataFrame(rows)
    shown = [c for c in ("wer", "sim", "mos") if c in audio]
    plot_metric_vs_nfe(audio[audio.nfe > 0], shown, wb.out / "nfe_audio_judges.png",
                       refs={c: float(audio[c].iloc[0]) for c in shown},
                       title="audio judges on vocoded output (dotted: real recordings)")
    audio.attrs["judge_labels"] = judge_labels(aj.judges)  # which model produced each column (report footnote)
    return audio


def paired_distance(wb: Opened, curves: NFECurves, first: tuple[str, int], second: tuple[str, int],
                    better: str, worse: str) -> dict:
    """Per utterance, the distance of ``second``'s output to the reference minus ``first``'s (positive:
    ``first`` is closer), summarised by :func:`imf.eval.metrics.paired_verdict`."""
    es = wb.es

    def mel(key):
        return es.corpus.denormalize(curves.outputs[key]) * es.mask[:, None]

    ref = mel((curves.guided_name, curves.max_nfe))
    d = distance_per_utterance(mel(second), ref, es.mask) - distance_per_utterance(mel(first), ref, es.mask)
    return paired_verdict(d, better, worse)


def nfe_criteria(wb: Opened, curves: NFECurves, timings: Timings, audio: pd.DataFrame) -> dict:
    """Notebook 03's metrics: the 1-NFE student against the guided teacher.

    Criteria: its fine-structure ratio is at least 0.9x the guided ``max_nfe`` teacher's; its
    distance to that teacher is below the guided 4-NFE teacher's (set-level, and paired per
    utterance); ``None`` where the profile has no 4-NFE teacher row.
    """
    t_cfg, max_nfe = curves.guided_name, curves.max_nfe
    s1, top = curves.row(STUDENT, 1), curves.row(t_cfg, max_nfe)
    has4 = 4 in wb.P["eval"]["teacher_nfes"]
    t4 = curves.row(t_cfg, 4) if has4 else None
    speed = timings.speed
    return {
        "student_fs_ratio_1": float(s1.fs_ratio), "teacher_cfg_fs_ratio_max": float(top.fs_ratio),
        "student_dist_ref_1": float(s1.dist_ref), "teacher_cfg_dist_ref_4": float(t4.dist_ref) if has4 else None,
        "fs_criterion_0.9x": bool(s1.fs_ratio >= 0.9 * top.fs_ratio),
        "dist_criterion_below_teacher_4": bool(s1.dist_ref < t4.dist_ref) if has4 else None,
        "dist_paired_student1_vs_teacher4": paired_distance(wb, curves, (STUDENT, 1), (t_cfg, 4), "student closer",
                                                            "teacher closer") if has4 else None,
        "speedup_student_1": float(speed[(speed.system == STUDENT) & (speed.nfe == 1)].speedup.iloc[0]),
        "max_nfe": max_nfe, "cfg_scale": curves.cfg_scale, "n_eval_utts": len(wb.es),
        "audio_judges": audio.to_dict("records"),
    }
