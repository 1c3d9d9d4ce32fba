"""Notebook 01_teacher as package calls: its validated config and the teacher's NFE x guidance evaluation.

Training is :func:`train` (:func:`imf.train.token2mel.train_teacher` in the kernel, or on
``IMF_NPROC`` torchrun processes through :func:`imf.runs.launch.train`); the results section is
:func:`imf.runs.sections.teacher_results`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from torch import Tensor, nn

from imf.core.checkpoints import load_model
from imf.core.config import Config, require
from imf.data import CorpusConfig, DataConfig
from imf.data.importers import ImportConfig
from imf.eval.evalset import EvalSet, make_eval_set
from imf.eval.sweep import nfe_sweep
from imf.eval.systems import System, guided
from imf.flow.objectives import CFMConfig
from imf.models import Token2MelConfig
from imf.runs.launch import default_nproc
from imf.runs.launch import train as launch_train
from imf.runs.profiles import profile, runs_dir, sample_cache
from imf.runs.sections_config import EvalConfig
from imf.runs.splits import split_voices, sweep_split, unseen_eval_set
from imf.train.token2mel import train_teacher
from imf.train.trainer import TrainConfig
from imf.viz.plots import plot_mels, plot_metric_vs_nfe

_field = dataclasses.field


def train(cfg: "TeacherRun", corpus, nproc: int | None = None) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Train (or resume) the teacher of ``cfg``; (loss history, summary). ``nproc`` (default: ``IMF_NPROC``,
    ``make reproduce NPROC=N``): 1 trains in this process, N > 1 on N torchrun processes with the same global
    batch (the same weights up to float rounding: ``tests/test_distributed.py``)."""
    nproc = default_nproc() if nproc is None else nproc
    if nproc <= 1:
        trainer, summary = train_teacher(corpus, cfg.run_dir, cfg.model, cfg.train, cfg.cfm, cfg.data)
        return trainer.history, summary
    return launch_train("teacher", nproc, corpus.root, cfg.run_dir,
                        {"model": cfg.model, "train": cfg.train, "cfm": cfg.cfm, "data": cfg.data})


@dataclasses.dataclass(frozen=True)
class TeacherRun(Config):
    """Everything 01_teacher trains and evaluates with: the profile's sections with the notebook's overrides."""
    profile: str = "small"  # the profile the sections come from
    run_name: str = "teacher"  # run folder under runs/<profile>/
    corpus_dir: str = ""  # "": the profile's embedded corpus; else a built corpus folder or a real corpus to import
    corpus: CorpusConfig = _field(default_factory=CorpusConfig)  # the embedded corpus (when corpus_dir is "")
    corpus_import: ImportConfig = _field(default_factory=ImportConfig)  # how corpus_dir is imported (a real corpus)
    model: Token2MelConfig = _field(default_factory=Token2MelConfig)  # the network (n_tokens, n_mels: the corpus's)
    train: TrainConfig = _field(default_factory=TrainConfig)  # optimisation (its seed is the run's one seed)
    cfm: CFMConfig = _field(default_factory=CFMConfig)  # the flow-matching objective
    data: DataConfig = _field(default_factory=DataConfig)  # training crops
    eval: EvalConfig = _field(default_factory=EvalConfig)  # evaluation set and NFE grid
    cfg_scale: float = 2.0  # guidance w of the guided rows

    def validate(self) -> None:
        require(self.cfg_scale > 0, "cfg_scale", "must be > 0")

    @property
    def run_dir(self) -> Path:
        return runs_dir(self.profile) / self.run_name


def teacher_config(params: Mapping[str, Any]) -> TeacherRun:
    """01_teacher's parameters (``PROFILE, SEED, STEPS, CFG_SCALE, RUN_NAME, CORPUS_DIR``; 0 = the profile's
    default) over its profile's sections."""
    P = profile(params["PROFILE"])
    E = EvalConfig.from_dict(P["eval"])
    steps = {"steps": params["STEPS"]} if params["STEPS"] else {}
    return TeacherRun(
        profile=params["PROFILE"], run_name=params["RUN_NAME"], corpus_dir=params["CORPUS_DIR"],
        corpus=CorpusConfig.from_dict(P["corpus"]), corpus_import=ImportConfig.from_dict(P["corpus_import"]),
        model=Token2MelConfig.from_dict(P["teacher_model"]),
        train=TrainConfig.from_dict(P["teacher_train"], seed=params["SEED"], **steps),
        cfm=CFMConfig.from_dict(P["cfm"]), data=DataConfig.from_dict(P["data"]), eval=E,
        cfg_scale=float(params["CFG_SCALE"] or E.cfg_scale))


@dataclasses.dataclass
class TeacherEval:
    """What :func:`evaluate_teacher` measured: one row per (system, NFE) on identical noise."""
    teacher: nn.Module
    es: EvalSet
    table: pd.DataFrame  # nfe_sweep's table (system, nfe, fs_ratio, gv_ratio, noise_corr, dist_ref, seconds, grid)
    plain: System  # the unguided teacher
    guided: System  # the teacher with guidance cfg_scale
    kept: dict[tuple[str, int], Tensor]  # generated normalised mels by (system, nfe)
    unseen: pd.DataFrame | None = None  # the guided rows on the zero-shot split (held-out voices), None: no such split
    unseen_voices: list[str] = dataclasses.field(default_factory=list)  # its voices

    def row(self, system: str, nfe: int) -> pd.Series:
        return self.table[(self.table.system == system) & (self.table.nfe == nfe)].iloc[0]


def evaluate_teacher(cfg: TeacherRun, corpus, out: str | Path) -> TeacherEval:
    """Load the trained teacher of ``cfg.run_dir`` and sweep it, plain and guided, over ``cfg.eval.teacher_nfes``
    on the evaluation set (reference: the guided teacher at the largest NFE). Writes ``nfe_guidance.csv``,
    ``nfe_guidance.png`` and ``teacher_samples.png`` into ``out``."""
    out, E = Path(out), cfg.eval
    teacher = load_model(cfg.run_dir / "checkpoints" / "last.pt")
    es = make_eval_set(corpus, E.split, E.n_utts, E.seed, E.max_frames, cfg.data.prompt_frames)
    w, nfes = cfg.cfg_scale, list(E.teacher_nfes)
    plain, cfg_sys = System("teacher", teacher), System(f"teacher + CFG {w:g}", guided(teacher, w))
    cache = sample_cache(cfg.profile)
    df, kept = nfe_sweep(es, [(s, n) for s in (plain, cfg_sys) for n in nfes], reference=(cfg_sys, max(nfes)),
                         batch_size=E.batch_size, keep=True, cache=cache)
    df.to_csv(out / "nfe_guidance.csv", index=False)
    plot_metric_vs_nfe(df, ["fs_ratio", "gv_ratio", "dist_ref"], out / "nfe_guidance.png",
                       refs={"fs_ratio": 1.0, "gv_ratio": 1.0}, title=f"teacher on {len(es)} held-out utterances, identical noise")
    i = 0
    mels = {"real": es.real_logmel()[i]}
    for n in (1, 4, max(nfes)):
        if n in nfes:
            mels[f"{cfg_sys.name}, {n} NFE"] = corpus.denormalize(kept[(cfg_sys.name, n)][i]) * es.mask[i]
    plot_mels({k: v[:, : int(es.mask[i].sum())] for k, v in mels.items()}, out / "teacher_samples.png", title=es.ids[i])
    # zero-shot: the guided rows again on held-out voices (after everything above, under a forked RNG)
    ues = unseen_eval_set(corpus, E.zero_shot_split, E.n_utts, E.seed, E.max_frames, cfg.data.prompt_frames)
    unseen = sweep_split(ues, [(cfg_sys, n) for n in nfes], (cfg_sys, max(nfes)), E.batch_size, cache=cache)
    voices = split_voices(corpus, E.zero_shot_split) if ues is not None else []
    return TeacherEval(teacher, es, df, plain, cfg_sys, kept, unseen, voices)
