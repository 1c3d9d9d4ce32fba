"""Text2mel on the embedded corpus with F5-TTS's DiT: the teacher, its IntMeanFlow students, the teacher-size ablation.

Every network is the REAL ``f5_tts`` DiT through :class:`imf.models.backbones.f5.F5Backbone`, sized by the
profile's ``text2mel.model`` (the teacher) and ``text2mel.small_model`` (the smaller model of the ablation),
reading the corpus's normalised mels (``mel_dim`` = the corpus's bins) and its text as phones or characters
(:mod:`imf.data.text2mel`; ``text_num_embeds`` from the inventory). Stages, each a resumable
:class:`~imf.train.trainer.Trainer` run folder::

    teacher        F5's infilling flow matching (imf.flow.infill) on the ``text2mel.model`` DiT
    student        IntMeanFlow from the guided teacher (imf.train.f5.distill_f5), init strategy on the teacher
    small_teacher  the same recipe on the smaller ``text2mel.small_model`` DiT
    small_from_big IntMeanFlow from the BIG teacher into a student initialised from small_teacher
    small_from_own IntMeanFlow from small_teacher into a student initialised from small_teacher

The teacher-size stages run only when ``size_ablation``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from imf.core.checkpoints import load_model
from imf.core.config import Config, require
from imf.core.runtime import seed_everything
from imf.data.corpus import Corpus
from imf.data.f5_text import infill_cond, span_mask
from imf.data.text2mel import T2MDataConfig, Text2MelDataset, t2m_collate, vocab_size
from imf.flow.infill import InfillConfig, infill_loss
from imf.flow.objectives import IMFConfig
from imf.models.backbones.f5 import F5Backbone, F5Config
from imf.train.f5 import F5_IMF, F5DistillConfig, distill_f5
from imf.train.trainer import TrainConfig, Trainer

_field = dataclasses.field
STAGES = ("teacher", "student", "small_teacher", "small_from_big", "small_from_own")


def _tiny_f5(**kw: Any) -> F5Config:
    return F5Config(**{"model_name": "text2mel", "tokenizer": "custom", "dim": 192, "depth": 6, "heads": 3,
                       "dim_head": 64, "text_dim": 96, "conv_layers": 3, "ff_mult": 2, "dropout": 0.0, **kw})


@dataclasses.dataclass(frozen=True)
class T2MStagesConfig(Config):
    """The ``text2mel`` profile section's training part (the evaluation: :class:`imf.eval.text2mel.T2MEvalConfig`)."""
    data: T2MDataConfig = _field(default_factory=T2MDataConfig)  # text kind, utterance length, span fractions
    model: F5Config = _field(default_factory=_tiny_f5)  # the teacher DiT (mel_dim, text_num_embeds: from the corpus)
    small_model: F5Config = _field(default_factory=lambda: _tiny_f5(dim=96, depth=4, heads=2, dim_head=48, text_dim=48,
                                                                    conv_layers=2))  # the ablation's smaller DiT
    infill: InfillConfig = _field(default_factory=InfillConfig)  # F5's loss: span-only, audio / audio+text drop
    teacher_train: TrainConfig = _field(default_factory=TrainConfig)  # the teacher (and the small teacher's optimiser)
    small_train: TrainConfig = _field(default_factory=TrainConfig)  # the small teacher of the ablation
    imf: IMFConfig = F5_IMF  # IntMeanFlow targets: N sub-steps, guidance w (= F5's s + 1)
    student_train: TrainConfig = _field(default_factory=TrainConfig)  # the student of the teacher
    size_train: TrainConfig = _field(default_factory=TrainConfig)  # each student of the teacher-size ablation
    size_ablation: bool = True  # run the teacher-size ablation (small teacher + two small students)

    def validate(self) -> None:
        require(self.imf.cfg_scale >= 1.0, "imf.cfg_scale", "guidance w must be >= 1 (F5's s = w - 1 >= 0)")


def model_config(corpus: Corpus, model: F5Config, data: T2MDataConfig) -> F5Config:
    """``model`` fitted to the corpus: ``mel_dim`` = its bins, ``text_num_embeds`` = its vocabulary of ``data.text``."""
    return model.replace(mel_dim=corpus.mel_config.n_mels, text_num_embeds=vocab_size(corpus, data.text),
                         mean_flow=False)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def infill_objective(cfg: InfillConfig, data: T2MDataConfig):
    """``objective(model, batch, generator, rows=None) -> (loss, logs)``: F5's infilling loss on a
    :func:`~imf.data.text2mel.t2m_collate` batch; the span (``data.frac_min``..``frac_max`` of each
    utterance) is drawn from the trainer's generator before the loss's own draws."""

    def objective(m, batch, g, rows=None):
        device = next(m.parameters()).device
        span = span_mask(batch["lengths"], (data.frac_min, data.frac_max), batch["z_1"].shape[-1], g)
        batch = _to(dict(batch, span=span), device)
        span = batch["span"] & batch["mask"]
        cond = infill_cond(batch["z_1"], batch["text"], batch["mask"], span)
        return infill_loss(m, batch["z_1"], cond, span, cfg, g, rows=rows)

    return objective


def train_text2mel_teacher(corpus: Corpus, run_dir: str | Path, model: F5Config, train_cfg: TrainConfig,
                           data: T2MDataConfig = T2MDataConfig(), infill: InfillConfig = InfillConfig(),
                           progress: bool = True, desc: str = "text2mel teacher (F5 infilling)"):
    """Train (or resume) an F5 DiT of ``model``'s size on the corpus's train split. -> (trainer, summary)."""
    seed_everything(train_cfg.seed)
    net = F5Backbone(model_config(corpus, model, data))
    trainer = Trainer(run_dir, net, infill_objective(infill, data), Text2MelDataset(corpus, "train", data),
                      t2m_collate, train_cfg, progress=progress, desc=desc,
                      extra_config={"infill": infill.to_dict(), "t2m_data": data.to_dict(), "corpus": str(corpus.root)})
    return trainer, trainer.fit()


def distill_text2mel(corpus: Corpus, teacher_ckpt: str | Path, run_dir: str | Path, train_cfg: TrainConfig,
                     imf_cfg: IMFConfig = F5_IMF, data: T2MDataConfig = T2MDataConfig(),
                     init_ckpt: str | Path | None = None, progress: bool = True):
    """IntMeanFlow student of the teacher at ``teacher_ckpt`` (:func:`imf.train.f5.distill_f5`), on the
    same infilling task. ``init_ckpt``: a flow-matching model of ANOTHER size to start the student from
    (the init strategy then applies to it). -> (trainer, summary)."""
    teacher = load_model(teacher_ckpt)
    init = None if init_ckpt is None else load_model(init_ckpt)
    f5 = F5DistillConfig(frac_min=data.frac_min, frac_max=data.frac_max)
    return distill_f5(teacher, Text2MelDataset(corpus, "train", data), t2m_collate, run_dir, train_cfg, imf_cfg, f5,
                      progress=progress, teacher_ref=str(teacher_ckpt), student_init=init,
                      student_init_ref="" if init_ckpt is None else str(init_ckpt))


def train_text2mel(corpus: Corpus, cfg: T2MStagesConfig, runs: dict[str, Path], progress: bool = True) -> dict[str, dict]:
    """Every stage of the module doc in order, into ``runs[stage]`` (run folders). -> stage -> summary."""
    ckpt = {k: Path(v) / "checkpoints" / "last.pt" for k, v in runs.items()}
    out = {"teacher": train_text2mel_teacher(corpus, runs["teacher"], cfg.model, cfg.teacher_train, cfg.data,
                                             cfg.infill, progress)[1]}
    out["student"] = distill_text2mel(corpus, ckpt["teacher"], runs["student"], cfg.student_train, cfg.imf, cfg.data,
                                      progress=progress)[1]
    if cfg.size_ablation:
        out["small_teacher"] = train_text2mel_teacher(corpus, runs["small_teacher"], cfg.small_model, cfg.small_train,
                                                      cfg.data, cfg.infill, progress, "text2mel small teacher")[1]
        for stage, teacher in (("small_from_big", "teacher"), ("small_from_own", "small_teacher")):
            out[stage] = distill_text2mel(corpus, ckpt[teacher], runs[stage], cfg.size_train, cfg.imf, cfg.data,
                                          init_ckpt=ckpt["small_teacher"], progress=progress)[1]
    return out
