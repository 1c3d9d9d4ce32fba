"""Entry points that tie a corpus, a model and an objective to the trainer.

Notebooks and scripts call these; they hold no maths of their own (see :mod:`imf.flow.objectives`).
Each objective takes the trainer's ``rows`` (its shard of the global batch), so every recipe runs
data-parallel under ``torchrun`` (``python -m imf.train``) and with gradient accumulation; the
frozen teacher of :func:`distill` rolls out on every process, for that process's rows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from imf.core.checkpoints import load_checkpoint, model_from_state
from imf.core.counting import count_rows
from imf.core.distributed import resolve_device
from imf.core.runtime import seed_everything
from imf.data import Corpus, MelTokenDataset, collate
from imf.data.config import DataConfig
from imf.flow.objectives import (CFMConfig, IMFConfig, MeanFlowConfig, cfm_loss, intmeanflow_loss, meanflow_loss,
                                 take_rows)
from imf.flow.solvers import Guided
from imf.models import Token2Mel, Token2MelConfig, freeze, student_from_teacher
from imf.models.student import init_time_mix
from imf.train.trainer import TrainConfig, Trainer

COND_KEYS = ("tokens", "mask", "prompt", "prompt_mask")


def cond_of(batch: dict[str, Any]) -> dict[str, Tensor]:
    """The conditioning dict of a collated batch."""
    return {k: batch[k] for k in COND_KEYS}


def load_for_corpus(path: str | Path, corpus: Corpus, role: str = "model") -> nn.Module:
    """The model of checkpoint ``path`` (EMA, frozen), refused unless it fits ``corpus``.

    Its token vocabulary and mel bins must equal the corpus's phone inventory size and mel
    bins; if the checkpoint names the corpus it was trained on and that corpus is still on
    disk, the two phone inventories must be equal too (same size but other phones would give
    every id another meaning).
    """
    state = load_checkpoint(path, require=("model_class", "model_config", "ema"))
    model = model_from_state(state, path)
    cfg = model.config
    n_tokens, n_mels = corpus.n_tokens, corpus.mel_config.n_mels
    if getattr(cfg, "n_tokens", n_tokens) != n_tokens or getattr(cfg, "n_mels", n_mels) != n_mels:
        raise ValueError(f"{role} {path} was trained for {getattr(cfg, 'n_tokens', '?')} tokens and "
                         f"{getattr(cfg, 'n_mels', '?')} mel bins; the corpus {corpus.root} has {n_tokens} phones "
                         f"(its inventory) and {n_mels} mel bins: use a {role} trained on this corpus")
    own = (state.get("config") or {}).get("corpus")
    try:
        phones = json.loads((Path(own) / "corpus.json").read_text())["phones"] if own else None
    except (OSError, ValueError, KeyError, TypeError):
        phones = None  # its corpus is gone or unreadable: the sizes above are all we can check
    if phones is not None and list(phones) != list(corpus.phones):
        diff = [i for i, (a, b) in enumerate(zip(phones, corpus.phones)) if a != b]
        raise ValueError(f"{role} {path} was trained on the corpus {own}, whose phone inventory differs from "
                         f"{corpus.root}'s ({len(diff)} of {len(phones)} ids name another phone, first id "
                         f"{diff[0] if diff else len(corpus.phones)}): token ids would mean other phones")
    return model


def train_dataset(corpus, data_cfg: DataConfig, seed: int) -> MelTokenDataset:
    return MelTokenDataset(corpus, split="train", max_frames=data_cfg.max_frames,
                           prompt_frames=data_cfg.prompt_frames, crop="random", normalize=True, seed=seed)


def train_teacher(corpus, run_dir: str | Path, model_cfg: Token2MelConfig, train_cfg: TrainConfig,
                  cfm_cfg: CFMConfig = CFMConfig(), data_cfg: DataConfig = DataConfig(),
                  progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """Train (or resume) a conditional flow-matching token2mel teacher in ``run_dir``."""
    if model_cfg.n_tokens != corpus.n_tokens or model_cfg.n_mels != corpus.mel_config.n_mels:
        model_cfg = model_cfg.replace(n_tokens=corpus.n_tokens, n_mels=corpus.mel_config.n_mels)
    seed_everything(train_cfg.seed)
    model = Token2Mel(model_cfg)

    def objective(m, batch, g, rows=None):
        return cfm_loss(m, batch["z_1"], cond_of(batch), batch["mask"], cfm_cfg, g, rows=rows)

    trainer = Trainer(run_dir, model, objective, train_dataset(corpus, data_cfg, train_cfg.seed), collate,
                      train_cfg, extra_config={"cfm": cfm_cfg.to_dict(), "data": data_cfg.to_dict(),
                                               "corpus": str(corpus.root)},
                      progress=progress, desc="teacher (CFM)")
    return trainer, trainer.fit()


def distill(corpus, teacher_ckpt: str | Path, run_dir: str | Path, train_cfg: TrainConfig,
            imf_cfg: IMFConfig = IMFConfig(), data_cfg: DataConfig = DataConfig(), freeze_mode: str = "encoder",
            progress: bool = True, init: str | Path | None = None, teacher_rows: dict[str, int] | None = None,
            on_checkpoint: Callable[[Trainer], None] | None = None) -> tuple[Trainer, dict[str, Any]]:
    """IntMeanFlow: distil the guided teacher of ``teacher_ckpt`` into a student.

    ``init=None``: the student starts from the teacher's weights (the init strategy). A path to
    a student checkpoint: start from that student's EMA weights instead, e.g. a second stage
    with another interval mix (``imf_cfg.p_full``) after a first distillation run. A path to a
    flow-matching model's checkpoint (a teacher-like model, of any size): the init strategy applied
    to that model, so a student of another size than the teacher learns from it (the paper's
    teacher-size ablation: a small model's student distilled from a big teacher). ``teacher_rows``: a dict whose
    ``rows``/``calls`` count the teacher's evaluations (:func:`imf.core.counting.count_rows`);
    ``on_checkpoint(trainer)``: called after each checkpoint.
    """
    seed_everything(train_cfg.seed)  # crops and prompt choices draw from the global generators
    teacher = load_for_corpus(teacher_ckpt, corpus, "teacher").to(resolve_device(train_cfg.device))  # EMA, frozen
    if init is None:
        student = student_from_teacher(teacher)
    else:
        student = load_for_corpus(init, corpus, "init")
        if not hasattr(getattr(student, "config", None), "mean_flow"):
            raise ValueError(f"distill(init={str(init)!r}): its {type(student).__name__} cannot become a mean-flow "
                             "student (its config has no mean_flow); pass a flow-matching model's or a student's run")
        if not student.config.mean_flow:  # a flow-matching model, maybe of another size: the init strategy on it
            student = student_from_teacher(student.to(next(teacher.parameters()).device))
    student.train()
    params = freeze(student, freeze_mode)
    guided = Guided(teacher, imf_cfg.cfg_scale)

    def objective(m, batch, g, rows=None):
        cond = cond_of(batch)
        own = cond if rows is None else take_rows(cond, rows)
        # the frozen teacher's text/speaker encodings are computed once per batch, not per sub-step
        teacher_cond = teacher.encode_cond(own) if hasattr(teacher, "encode_cond") else own
        return intmeanflow_loss(m, guided, batch["z_1"], cond, batch["mask"], imf_cfg, g, teacher_cond=teacher_cond,
                                rows=rows)

    trainer = Trainer(run_dir, student, objective, train_dataset(corpus, data_cfg, train_cfg.seed), collate,
                      train_cfg, params=params,
                      extra_config={"imf": imf_cfg.to_dict(), "data": data_cfg.to_dict(), "freeze": freeze_mode,
                                    "teacher": str(teacher_ckpt), "corpus": str(corpus.root),
                                    **({} if init is None else {"init": str(init)})},
                      progress=progress, desc=f"student (IntMeanFlow, N={imf_cfg.teacher_nfe})",
                      on_checkpoint=on_checkpoint)
    with count_rows(teacher, {} if teacher_rows is None else teacher_rows):
        return trainer, trainer.fit()


def train_meanflow(corpus, run_dir: str | Path, train_cfg: TrainConfig, mf_cfg: MeanFlowConfig = MeanFlowConfig(),
                   data_cfg: DataConfig = DataConfig(), init: str | Path = "scratch",
                   model_cfg: Token2MelConfig | None = None, freeze_mode: str = "none",
                   progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """Vanilla MeanFlow (JVP) on the same student network.

    ``init="scratch"``: a fresh mean-flow network of ``model_cfg`` (its ``W`` also starts at
    ``[I | 0]``); otherwise a teacher checkpoint path, used through the init strategy.
    """
    seed_everything(train_cfg.seed)  # model init (scratch), crops and prompt choices
    if init == "scratch":
        if model_cfg is None:
            raise ValueError("train_meanflow(init='scratch') needs model_cfg")
        model = Token2Mel(model_cfg.replace(n_tokens=corpus.n_tokens, n_mels=corpus.mel_config.n_mels, mean_flow=True))
        init_time_mix(model.time_mix)
    else:
        model = student_from_teacher(load_for_corpus(init, corpus, "init")).train()
    params = freeze(model, freeze_mode)

    def objective(m, batch, g, rows=None):
        return meanflow_loss(m, batch["z_1"], cond_of(batch), batch["mask"], mf_cfg, g, rows=rows)

    trainer = Trainer(run_dir, model, objective, train_dataset(corpus, data_cfg, train_cfg.seed), collate,
                      train_cfg, params=params,
                      extra_config={"meanflow": mf_cfg.to_dict(), "data": data_cfg.to_dict(), "init": str(init),
                                    "freeze": freeze_mode, "corpus": str(corpus.root)},
                      progress=progress, desc=f"MeanFlow ({'scratch' if init == 'scratch' else 'from teacher'}, "
                                              f"r=t fraction {mf_cfg.p_instant:g})")
    return trainer, trainer.fit()
