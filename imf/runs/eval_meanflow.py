"""Notebook 05, MeanFlow (JVP) vs IntMeanFlow on the same network and data: what is trained and compared.

Vanilla MeanFlow runs (from the teacher with flow-matching fraction 0.75 and 0, from scratch with 0.75)
train with the student's recipe; their curves meet IntMeanFlow's (both of its stages stitched), and
their 1-NFE quality meets the IntMeanFlow student's on identical noise (the paper's Tab. 2 rows)::

    wb = open_runs("small", "05_meanflow_vs_imf")
    runs = train_meanflow_runs(wb, seed=0, steps=0, freeze="encoder")
    imf = imf_history(wb)
    quality = meanflow_quality(wb, runs, imf)
    report_meanflow(wb, memory, runs, imf, quality, winners(quality, runs.reference_name))  # imf.runs.sections_eval
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from imf.core.checkpoints import load_checkpoint, load_model
from imf.data import DataConfig
from imf.eval.metrics import beats
from imf.eval.sweep import nfe_sweep
from imf.eval.systems import System, guided
from imf.flow.objectives import MeanFlowConfig
from imf.models import Token2MelConfig
from imf.runs.distill import stitch_histories
from imf.runs.launch import default_nproc
from imf.runs.launch import train as launch_train
from imf.runs.open import Opened
from imf.runs.profiles import runs_dir
from imf.runs.sections_config import MEANFLOW_RUNS, MeanFlowTrainConfig
from imf.train.token2mel import train_meanflow
from imf.train.trainer import Trainer, TrainConfig

STUDENT = "IMF (IntMeanFlow student)"
STAGE1 = "IMF, first stage only"
EQUAL_WALL = "IMF at MeanFlow's wall-clock"  # the student's checkpoint at meanflow_train.imf_step
COMPARED = ("fs_ratio", "gv_ratio", "dist_ref")  # the 1-NFE metrics IntMeanFlow and MeanFlow are compared on


@dataclasses.dataclass
class Trained:
    """A run trained by ``torchrun`` (``IMF_NPROC > 1``) as the notebook reads it: its loss log and EMA model."""
    history: list[dict[str, Any]]
    ema: nn.Module


@dataclasses.dataclass
class MeanFlowRuns:
    """The trained MeanFlow runs (label -> :class:`imf.train.trainer.Trainer`, or :class:`Trained` from torchrun)
    and their settings."""
    trainers: dict[str, Trainer | Trained]
    train_cfg: TrainConfig
    data_cfg: DataConfig
    freeze: str  # what the teacher-initialised runs freeze
    cfg_scale: float  # guidance folded into the MeanFlow target (the IntMeanFlow student's)
    reference_name: str  # the guided teacher's name in the quality table

    def histories(self) -> dict[str, list[dict]]:
        return {label: tr.history for label, tr in self.trainers.items()}

    def stability(self) -> dict[str, dict]:
        """label -> non-finite (skipped) steps and the final unweighted MSE."""
        out = {}
        for label, tr in self.trainers.items():
            h = pd.DataFrame(tr.history)
            out[label] = {"nonfinite_steps": int(h.nonfinite.sum()), "final_mse": float(h["mse"].iloc[-1])}
        return out


@dataclasses.dataclass
class StageHistory:
    """A student's training history with the first stage it started from (if any) in front, steps
    counted on from it: ``history`` (columns ``step``, ``loss``, ``grad_norm``, ...)."""
    history: pd.DataFrame
    stage1: str | None  # the first stage's checkpoint (config ``init`` of a second-stage student)
    stage1_steps: int  # 0 without a first stage
    steps: int  # steps in all
    equal_wall: Path | None = None  # the checkpoint kept at ``equal_wall_step`` (05's equal wall-clock point)
    equal_wall_step: int = 0
    cache_seconds: float = 0.0  # the teacher-trajectory cache's build time (a trajectory student's; 0: none)

    def seconds(self, steps: int) -> float:
        """Training wall seconds to ``steps`` steps: the trajectory cache, then the logged seconds per step (each
        log row's mean over the steps since the previous row)."""
        h = self.history[self.history.step <= steps]
        if "sec_per_step" not in h or h.sec_per_step.isna().all():
            return float("nan")
        spans = h.step.diff().fillna(h.step.iloc[0])
        return self.cache_seconds + float((h.sec_per_step * spans).sum())


def imf_history(wb: Opened) -> StageHistory:
    """:func:`stage_history` of the notebook's student, with the checkpoint at ``meanflow_train.imf_step``."""
    return stage_history(wb.student_ckpt, MeanFlowTrainConfig.from_dict(wb.P["meanflow_train"]).imf_step)


def stage_history(ckpt: str | Path, equal_wall_step: int = 0) -> StageHistory:
    """The history of the student checkpoint ``ckpt``, stitched after its first stage's when it is a
    second-stage student (its config's ``init``), with the checkpoint 02 kept at ``equal_wall_step`` (0: none;
    ``meanflow_train.imf_step``) and the build time of the trajectory cache it learned from (its ``meta.json``)."""
    ckpt = Path(ckpt)
    state = load_checkpoint(ckpt)
    stage1, stage1_steps, rows = state["config"].get("init"), 0, state["history"]
    if stage1:
        h1 = load_checkpoint(stage1)["history"]
        stage1_steps = max(h["step"] for h in h1)
        rows = stitch_histories(h1, rows, stage1_steps)
    history = pd.DataFrame(rows)
    equal = None
    if equal_wall_step:
        equal = Path(stage1 or ckpt).parent / f"step_{equal_wall_step}.pt"  # 02 keeps it in the first stage
        if stage1 and equal_wall_step > stage1_steps:
            raise ValueError(f"meanflow_train.imf_step {equal_wall_step}: 02 keeps checkpoints of the first stage only "
                             f"({stage1_steps} steps)")
        if not equal.is_file():
            raise FileNotFoundError(f"{equal}: the student's checkpoint at step {equal_wall_step} "
                                    f"(meanflow_train.imf_step) is missing; 02_distill keeps it when it trains the "
                                    f"student (rerun it, or set meanflow_train.imf_step to 0)")
    meta = Path(state["config"].get("cache") or "") / "meta.json"
    cache_s = float(json.loads(meta.read_text()).get("teacher_seconds", 0.0)) if meta.is_file() else 0.0
    return StageHistory(history, stage1 or None, stage1_steps, int(history.step.max()), equal, equal_wall_step, cache_s)


def train_meanflow_runs(wb: Opened, seed: int = 0, steps: int = 0, freeze: str = "encoder",
                        progress: bool = True, nproc: int | None = None) -> MeanFlowRuns:
    """Train every run of :data:`MEANFLOW_RUNS` into ``runs/<profile>/mf_<init>_p<100 p>_w<w>`` with the
    student's recipe (``student_train``, ``steps``: 0 for the profile's ``meanflow_train.steps``),
    non-finite steps skipped and counted; runs already trained resume (nothing to do).

    ``nproc`` (default ``IMF_NPROC``, ``make reproduce NPROC=N``): 1 trains in this process, N > 1 each run on N
    torchrun processes (``python -m imf.train meanflow``, :func:`imf.runs.launch.train`) with the same global batch."""
    nproc = default_nproc() if nproc is None else nproc
    P = wb.P
    w = P["imf"]["cfg_scale"]
    train_cfg = TrainConfig.from_dict(P["student_train"], seed=seed, on_nonfinite="skip",
                                      steps=steps or P["meanflow_train"]["steps"])
    data_cfg, model_cfg = DataConfig.from_dict(P["data"]), Token2MelConfig.from_dict(P["teacher_model"])
    runs = runs_dir(wb.profile)
    trainers = {}
    chosen = MeanFlowTrainConfig.from_dict(P["meanflow_train"]).runs  # validated: names of MEANFLOW_RUNS
    for label, (init, p) in MEANFLOW_RUNS.items():
        if label not in chosen:
            continue
        mf_cfg = MeanFlowConfig(p_instant=p, cfg_scale=w)  # guidance folded into the target, as IMF's
        run_dir, freeze_mode = runs / f"mf_{init}_p{int(p * 100)}_w{w:g}", freeze if init == "teacher" else "none"
        if nproc > 1:
            history, _ = launch_train("meanflow", nproc, wb.corpus.root, run_dir,
                                      {"train": train_cfg, "meanflow": mf_cfg, "data": data_cfg, "model": model_cfg,
                                       "freeze": freeze_mode},
                                      init=wb.teacher_ckpt if init == "teacher" else None, progress=progress)
            trainers[label] = Trained(history, load_model(run_dir / "checkpoints" / "last.pt"))
            continue
        tr, _ = train_meanflow(wb.corpus, run_dir, train_cfg, mf_cfg, data_cfg,
                               init=str(wb.teacher_ckpt) if init == "teacher" else "scratch", model_cfg=model_cfg,
                               freeze_mode=freeze_mode, progress=progress)
        trainers[label] = tr
    return MeanFlowRuns(trainers, train_cfg, data_cfg, freeze, w, f"teacher + CFG {P['eval']['cfg_scale']:g}")


def meanflow_quality(wb: Opened, runs: MeanFlowRuns, imf: StageHistory) -> pd.DataFrame:
    """The guided teacher at the largest teacher NFE, then the IntMeanFlow student (and its first stage
    alone, at equal steps with MeanFlow) and each MeanFlow run's EMA at 1 and 2 NFE, on ``wb.es``;
    ``dist_ref`` to that teacher."""
    E = wb.P["eval"]
    max_nfe = max(E["teacher_nfes"])
    ref = System(runs.reference_name, guided(wb.teacher, E["cfg_scale"]))
    systems = [System(STUDENT, wb.student)]
    if imf.stage1:
        systems.append(System(STAGE1, load_model(imf.stage1)))
    if imf.equal_wall:
        systems.append(System(EQUAL_WALL, load_model(imf.equal_wall)))
    systems += [System(label, tr.ema) for label, tr in runs.trainers.items()]
    quality, _ = nfe_sweep(wb.es, [(ref, max_nfe)] + [(s, n) for s in systems for n in (1, 2)],
                           reference=(ref, max_nfe), batch_size=E["batch_size"], cache=wb.samples)
    return quality


def winners(quality: pd.DataFrame, reference_name: str) -> dict:
    """At 1 NFE, IntMeanFlow against the best MeanFlow run (lowest ``dist_ref``), per metric of
    :data:`COMPARED` by :func:`imf.eval.metrics.beats` (``dist_ref``: lower wins; the ratios: closer to
    the guided teacher's own value wins, as guidance raises them above real speech's 1).

    Returns ``best_mf``, ``wins`` (metric -> "IMF" | "MF"), ``wins_stage1`` (the first stage alone;
    None without one), ``wins_equal_wall`` (the student's checkpoint at MeanFlow's wall-clock; None without
    one) and ``reference`` (the guided teacher's row).
    """
    q1 = quality[quality.nfe == 1].set_index("system")
    best_mf = q1[~q1.index.str.startswith("IMF")].dist_ref.idxmin()
    ref = quality[quality.system == reference_name].iloc[0]

    def against(imf_row) -> dict[str, str]:
        return {m: "IMF" if beats(m, imf_row[m], q1.loc[best_mf, m], target=ref[m]) else "MF" for m in COMPARED}

    return {"best_mf": best_mf, "wins": against(q1.loc[STUDENT]),
            "wins_stage1": against(q1.loc[STAGE1]) if STAGE1 in q1.index else None,
            "wins_equal_wall": against(q1.loc[EQUAL_WALL]) if EQUAL_WALL in q1.index else None,
            "reference": {m: float(ref[m]) for m in COMPARED}}
