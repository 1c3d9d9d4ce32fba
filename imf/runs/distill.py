"""Notebook 02_distill as package calls: its validated config, the two distillation stages with their
stitched loss history, the quick check on the evaluation set and the teacher-NFE ablation.

Each stage is :func:`imf.train.token2mel.distill`; the results section is
:func:`imf.runs.sections.distill_results`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from torch import nn

from imf.core.checkpoints import load_model
from imf.core.config import Config, require
from imf.data import DataConfig
from imf.eval.evalset import EvalSet
from imf.eval.sweep import nfe_sweep
from imf.eval.systems import System, guided
from imf.flow.objectives import IMFConfig
from imf.runs.launch import default_nproc
from imf.runs.launch import train as launch_train
from imf.runs.profiles import profile, runs_dir, sample_cache
from imf.flow.trajectories import TrajectoryConfig
from imf.runs.sections_config import (AblationConfig, EvalConfig, MeanFlowTrainConfig, Stage2Config,
                                      StudentObjectiveConfig)
from imf.train.token2mel import distill
from imf.train.trainer import Trainer, TrainConfig
from imf.train.trajectories import distill_trajectories, teacher_fingerprint
from imf.viz.distill import plot_teacher_nfe_ablation
from imf.viz.plots import plot_history

_field = dataclasses.field
LAST = Path("checkpoints") / "last.pt"


@dataclasses.dataclass(frozen=True)
class DistillRun(Config):
    """Everything 02_distill trains and evaluates with: the profile's sections with the notebook's overrides."""
    profile: str = "small"  # the profile the sections come from
    teacher_run: str = "teacher"  # run folder of the teacher (01_teacher)
    run_name: str = "student"  # run folder of the first-stage student
    stage2_run: str = "student_stage2"  # run folder of the second stage
    freeze: str = "encoder"  # "encoder": train only the estimator; "none": everything
    train: TrainConfig = _field(default_factory=TrainConfig)  # first stage (its seed is the run's one seed)
    imf: IMFConfig = _field(default_factory=IMFConfig)  # the IntMeanFlow objective (N, guidance, interval mix)
    data: DataConfig = _field(default_factory=DataConfig)  # training crops
    stage2: Stage2Config = _field(default_factory=Stage2Config)  # second stage (steps 0: none)
    ablation: AblationConfig = _field(default_factory=AblationConfig)  # teacher-NFE ablation
    run_ablation: bool = True  # train the ablation's students
    eval: EvalConfig = _field(default_factory=EvalConfig)  # the evaluation set of the quick check
    objective: StudentObjectiveConfig = _field(default_factory=StudentObjectiveConfig)  # rollout | trajectory reuse

    def validate(self) -> None:
        require(self.freeze in ("encoder", "none"), "freeze", f"must be 'encoder' or 'none', got {self.freeze!r}")
        require(self.stage2.steps == 0 or self.stage2_run != self.run_name, "stage2_run",
                "must differ from run_name (the second stage starts from the first)")

    @property
    def runs(self) -> Path:
        return runs_dir(self.profile)

    @property
    def teacher_ckpt(self) -> Path:
        return self.runs / self.teacher_run / LAST

    @property
    def has_stage2(self) -> bool:
        return self.stage2.steps > 0

    @property
    def final_run(self) -> str:
        """The run folder of the final student (03-06 evaluate it)."""
        return self.stage2_run if self.has_stage2 else self.run_name

    @property
    def stage2_train(self) -> TrainConfig:
        """Fresh batches (seed + 1) and a restarted cosine schedule at the second stage's lr."""
        return self.train.replace(seed=self.train.seed + 1, steps=self.stage2.steps, lr=self.stage2.lr, keep_steps=())

    @property
    def trajectory(self) -> TrajectoryConfig:
        """Trajectory reuse with the IntMeanFlow section's guidance and N (one source for both objectives)."""
        return self.objective.trajectory.replace(cfg_scale=self.imf.cfg_scale, teacher_nfe=self.imf.teacher_nfe)

    def cache_dir(self, teacher: nn.Module) -> Path:
        """``runs/<profile>/trajectories/<teacher fingerprint>_K<K>_n<noises>_u<max_utts>``: a retrained teacher
        gets a new cache (a cache is refused by any other teacher)."""
        c = self.trajectory
        fp = teacher_fingerprint(teacher, c.cfg_scale)[:12]
        return self.runs / "trajectories" / f"{fp}_K{c.grid_nfe}_n{c.noises_per_utt}_u{c.max_utts}"

    @property
    def stage2_imf(self) -> IMFConfig:
        return self.imf.replace(p_full=self.stage2.p_full)

    @property
    def ablation_train(self) -> TrainConfig:
        A = self.ablation
        return self.train.replace(steps=A.steps, batch_size=A.batch_size, ckpt_every=max(1, A.steps // 3), keep_steps=())


def distill_config(params: Mapping[str, Any]) -> DistillRun:
    """02_distill's parameters over its profile's sections (``STEPS``, ``TEACHER_NFE``, ``CFG_SCALE``: 0 = the
    profile's; ``STAGE2_STEPS``: -1 = the profile's ``student_stage2``, 0 = no second stage)."""
    P = profile(params["PROFILE"])
    imf_over = {k: v for k, v in {"teacher_nfe": params["TEACHER_NFE"], "cfg_scale": params["CFG_SCALE"]}.items() if v}
    steps = {"steps": params["STEPS"]} if params["STEPS"] else {}
    n = params["STEPS"] or P["student_train"]["steps"]
    s2_steps = {"steps": params["STAGE2_STEPS"]} if params["STAGE2_STEPS"] >= 0 else {}
    objective = {"objective": params["OBJECTIVE"]} if params.get("OBJECTIVE") else {}
    return DistillRun(
        profile=params["PROFILE"], teacher_run=params["TEACHER_RUN"], run_name=params["RUN_NAME"],
        stage2_run=params["STAGE2_RUN"], freeze=params["FREEZE"],
        train=TrainConfig.from_dict(P["student_train"], seed=params["SEED"], **steps,
                                keep_steps=tuple(k for k in kept_steps(P) if k <= n)),
        imf=IMFConfig.from_dict(P["imf"], **imf_over), data=DataConfig.from_dict(P["data"]),
        stage2=Stage2Config.from_dict(P["student_stage2"], **s2_steps), ablation=AblationConfig.from_dict(P["ablation"]),
        run_ablation=params["ABLATION"] and bool(P["ablation"]["teacher_nfes"]), eval=EvalConfig.from_dict(P["eval"]),
        objective=StudentObjectiveConfig.from_dict({**P["student_objective"], **objective}))


def kept_steps(P: Mapping[str, Any]) -> tuple[int, ...]:
    """The first-stage student steps whose checkpoints 02 keeps for later notebooks: 05's equal-wall step
    (``meanflow_train.imf_step``)."""
    k = MeanFlowTrainConfig.from_dict(P["meanflow_train"]).imf_step
    return (k,) if k else ()


def stitch_histories(first: list[dict[str, Any]], second: list[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    """One loss history of two consecutive runs: the second's steps shifted by ``offset`` (the first's steps)."""
    return list(first) + [dict(h, step=h["step"] + offset) for h in second]


@dataclasses.dataclass
class Ran:
    """A finished run as the sections read it (its loss log): what a torchrun-trained stage leaves here."""
    history: list[dict[str, Any]]


@dataclasses.dataclass
class Stages:
    """The trained stages: trainers and summaries (``trainer2``/``summary2`` None without a second stage)."""
    trainer: Trainer | Ran
    summary: dict[str, Any]
    trainer2: Trainer | Ran | None
    summary2: dict[str, Any] | None
    history: list[dict[str, Any]]  # both stages' loss logs, the second's steps after the first's

    @property
    def final_summary(self) -> dict[str, Any]:
        return self.summary if self.summary2 is None else self.summary2

    def table(self) -> dict[str, Any] | pd.DataFrame:
        """The summary of the only stage, or both side by side."""
        return self.summary if self.summary2 is None else pd.DataFrame({"stage 1": self.summary, "stage 2": self.summary2})


def train_stages(cfg: DistillRun, corpus, loss_png: str | Path, progress: bool = True,
                 nproc: int | None = None) -> Stages:
    """Distil the first-stage student, then (``cfg.has_stage2``) the second stage from its EMA weights with the
    whole interval (0, 1) for ``cfg.stage2.p_full`` of the samples; plot both loss logs as one to ``loss_png``.
    ``nproc`` (default ``IMF_NPROC``, ``make reproduce NPROC=N``): the rollout objective on N torchrun processes."""
    reuse = cfg.objective.objective == "trajectory"
    reuse2 = (cfg.stage2.objective or cfg.objective.objective) == "trajectory"
    nproc = default_nproc() if nproc is None else nproc
    if (reuse or (cfg.has_stage2 and reuse2)) and nproc > 1:
        raise ValueError("trajectory reuse trains in one process (its cache is read by one process); "
                         "set IMF_NPROC=1 (make reproduce NPROC=1) or student_objective.objective 'rollout'")
    cache = cfg.cache_dir(load_model(cfg.teacher_ckpt)) if reuse or reuse2 else None

    def stage(run: str, train: TrainConfig, imf: IMFConfig, p_full: float, init: Path | None,
              reuse: bool = reuse) -> tuple[Any, dict]:
        if reuse:
            return distill_trajectories(corpus, cfg.teacher_ckpt, cache, cfg.runs / run, train,
                                        cfg.trajectory.replace(p_full=p_full), cfg.data, cfg.freeze,
                                        progress=progress, init=init)
        if nproc > 1:
            history, summary = launch_train("distill", nproc, corpus.root, cfg.runs / run,
                                            {"train": train, "imf": imf, "data": cfg.data, "freeze": cfg.freeze},
                                            teacher=cfg.teacher_ckpt, init=init)
            return Ran(history), summary
        return distill(corpus, cfg.teacher_ckpt, cfg.runs / run, train, imf, cfg.data, cfg.freeze,
                       progress=progress, init=init)

    trainer, summary = stage(cfg.run_name, cfg.train, cfg.imf, cfg.trajectory.p_full, None)
    trainer2 = summary2 = None
    history, marks = trainer.history, ()
    if cfg.has_stage2:
        trainer2, summary2 = stage(cfg.stage2_run, cfg.stage2_train, cfg.stage2_imf, cfg.stage2.p_full,
                                   cfg.runs / cfg.run_name / LAST, reuse2)
        history = stitch_histories(trainer.history, trainer2.history, summary["steps"])
        marks = ((summary["steps"], f"stage 2: p_full {cfg.stage2.p_full:g}"),)
    i, how = cfg.imf, (" by trajectory reuse" if reuse else "") + (
        f", stage 2 by {'trajectory reuse' if reuse2 else 'rollout'}" if cfg.has_stage2 and reuse2 != reuse else "")
    plot_history(history, Path(loss_png), marks=marks,
                 title=f"IntMeanFlow student{how} (N={i.teacher_nfe}, w={i.cfg_scale:g}, p_full {i.p_full:g}"
                       + (f" then {cfg.stage2.p_full:g})" if cfg.has_stage2 else ")"))
    return Stages(trainer, summary, trainer2, summary2, history)


@dataclasses.dataclass
class QuickCheck:
    """The guided teacher (at the largest NFE and at 1) and the student(s) at 1 and 2 NFE on the evaluation set."""
    table: pd.DataFrame  # nfe_sweep's table; dist_ref: distance to the reference on the same noise
    reference: System  # the guided teacher (the distillation target's guidance)
    max_nfe: int  # the reference's NFE (the largest of eval.teacher_nfes)
    students: list[System]  # the first stage, then the second (the final student is the last)

    def row(self, system: str, nfe: int) -> pd.Series:
        return self.table[(self.table.system == system) & (self.table.nfe == nfe)].iloc[0]


def quick_check(cfg: DistillRun, teacher: nn.Module, es: EvalSet) -> QuickCheck:
    """Evaluate the trained student(s) against the guided teacher on ``es`` (the full curves are 03_nfe_curves')."""
    ref = System(f"teacher + CFG {cfg.imf.cfg_scale:g}", guided(teacher, cfg.imf.cfg_scale))
    max_nfe = max(cfg.eval.teacher_nfes)
    students = [System("student, stage 1" if cfg.has_stage2 else "student", load_model(cfg.runs / cfg.run_name / LAST))]
    if cfg.has_stage2:
        students.append(System("student, stage 2", load_model(cfg.runs / cfg.final_run / LAST)))
    table, _ = nfe_sweep(es, [(ref, max_nfe), (ref, 1)] + [(s, n) for s in students for n in (1, 2)],
                         reference=(ref, max_nfe), batch_size=cfg.eval.batch_size, cache=sample_cache(cfg.profile))
    return QuickCheck(table, ref, max_nfe, students)


@dataclasses.dataclass
class Ablation:
    """The teacher-NFE ablation: one row per N (empty when not run)."""
    rows: list[dict[str, Any]]  # teacher_nfe, sec_per_step, fs_ratio_1nfe, gv_ratio_1nfe, dist_ref_1nfe
    train: TrainConfig  # each student's optimisation

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def teacher_nfe_ablation(cfg: DistillRun, corpus, es: EvalSet, check: QuickCheck, out: str | Path,
                         progress: bool = True) -> Ablation:
    """One short student per teacher NFE ``N`` of ``cfg.ablation`` (same seed, data and steps; run folders
    ``ablation_N<N>``): seconds per distillation step and the 1-NFE student's quality against the quick
    check's reference. Writes ``teacher_nfe_ablation.csv`` and ``.png`` into ``out`` (nothing when
    ``cfg.run_ablation`` is False)."""
    rows: list[dict[str, Any]] = []
    if cfg.run_ablation:
        points = []
        for n in cfg.ablation.teacher_nfes:
            tr, _ = distill(corpus, cfg.teacher_ckpt, cfg.runs / f"ablation_N{n}", cfg.ablation_train,
                            cfg.imf.replace(teacher_nfe=n), cfg.data, cfg.freeze, progress=progress)
            points.append((n, pd.DataFrame(tr.history)["sec_per_step"].mean(), System(f"student N={n}", tr.ema)))
        sweep, _ = nfe_sweep(es, [(p[2], 1) for p in points], reference=(check.reference, check.max_nfe),
                             batch_size=cfg.eval.batch_size)
        for (n, sec, _), (_, r) in zip(points, sweep.iterrows()):
            rows.append({"teacher_nfe": n, "sec_per_step": sec, "fs_ratio_1nfe": r.fs_ratio,
                         "gv_ratio_1nfe": r.gv_ratio, "dist_ref_1nfe": r.dist_ref})
    ablation = Ablation(rows, cfg.ablation_train)
    if rows:
        ablation.table.to_csv(Path(out) / "teacher_nfe_ablation.csv", index=False)
        plot_teacher_nfe_ablation(ablation.table, Path(out) / "teacher_nfe_ablation.png")
    return ablation
