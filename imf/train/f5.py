"""IntMeanFlow distillation of an F5-TTS DiT (text2mel with masked infilling).

The task is F5's own: per utterance a random span of 70-100 % of the frames is to be generated
from the rest of the mel (the prompt, ``cond_mel``) and the full transcript (``text``). The
frozen teacher, guided as F5 guides it (``Guided(teacher, w)`` with ``w = s + 1``: F5's default
``s = 2`` is ``w = 3``), is rolled out over ``[t, r]`` and the student ``u(z_t, t, r)`` — F5's
DiT plus ``W = [I | 0]`` after its time MLP — regresses the average velocity, on the span only
(:func:`imf.flow.objectives.intmeanflow_loss`). The run folder is :class:`~imf.train.trainer.Trainer`'s:
``checkpoints/last.pt`` holds the student as F5's DiT state dict + ``time_mix.weight`` and a
config naming the F5 model and vocab, so :func:`imf.core.checkpoints.load_model` rebuilds it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from imf.core.config import Config, require
from imf.core.distributed import is_main, resolve_device
from imf.core.runtime import seed_everything
from imf.data.f5_text import F5Dataset, F5Text, infill_cond, make_collate, span_mask
from imf.flow.objectives import IMFConfig, intmeanflow_loss
from imf.flow.schedules import F5_CFG_STRENGTH
from imf.flow.solvers import Guided
from imf.models.backbones.adapter import make_student
from imf.models.backbones.f5 import F5Backbone
from imf.models.student import freeze
from imf.train.trainer import TrainConfig, Trainer

# F5's default guidance s = 2 written our way: w = s + 1
F5_IMF = IMFConfig(teacher_nfe=16, cfg_scale=F5_CFG_STRENGTH + 1.0, p_instant=0.2, p_full=0.1)


@dataclasses.dataclass(frozen=True)
class F5DistillConfig(Config):
    frac_min: float = 0.7  # smallest fraction of an utterance to infill (F5's training: 0.7)
    frac_max: float = 1.0  # largest fraction (F5: 1.0)
    freeze: str = "none"  # "none": train the whole DiT; "encoder": keep F5's text encoder frozen
    max_frames: int = 0  # crop utterances to this many mel frames (0: keep whole)

    def validate(self) -> None:
        require(0.0 < self.frac_min <= self.frac_max <= 1.0, "frac_min", "need 0 < frac_min <= frac_max <= 1")
        require(self.freeze in ("none", "encoder"), "freeze", "none | encoder")
        require(self.max_frames >= 0, "max_frames", "must be >= 0")


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def f5_objective(teacher: Any, imf_cfg: IMFConfig, cfg: F5DistillConfig = F5DistillConfig()):
    """``objective(student, batch, generator) -> (loss, logs)`` for :class:`Trainer`.

    ``teacher``: the guided frozen teacher (e.g. ``Guided(f5_teacher, 3.0)``). ``batch``:
    :func:`imf.data.f5_text.make_collate`'s. Spans are drawn from the trainer's generator.
    Takes the trainer's ``rows`` (data parallel: ``torchrun ... -m imf.train.f5 ...``).
    """

    def objective(student, batch, g, rows=None):  # rows: this process's shard (spans drawn for the whole batch)
        device = next(student.parameters()).device
        span = span_mask(batch["lengths"], (cfg.frac_min, cfg.frac_max), batch["z_1"].shape[-1], g)
        batch = _to(dict(batch, span=span), device)
        span = batch["span"] & batch["mask"]
        cond = infill_cond(batch["z_1"], batch["text"], batch["mask"], span)
        loss, logs = intmeanflow_loss(student, teacher, batch["z_1"], cond, span, imf_cfg, g, rows=rows)
        own = span if rows is None else span[rows]
        return loss, {**logs, "span_frac": own.float().sum().item() / batch["mask"].float().sum().item()}

    return objective


def distill_f5(teacher: F5Backbone, dataset, collate, run_dir: str | Path, train_cfg: TrainConfig,
               imf_cfg: IMFConfig = F5_IMF, cfg: F5DistillConfig = F5DistillConfig(), progress: bool = True,
               teacher_ref: str = "", student_init: F5Backbone | None = None,
               student_init_ref: str = "") -> tuple[Trainer, dict[str, Any]]:
    """Distil ``teacher`` (an :class:`F5Backbone`) into a few-step student in ``run_dir`` (resumable).

    ``dataset`` / ``collate``: :class:`~imf.data.f5_text.F5Dataset` and
    :func:`~imf.data.f5_text.make_collate` (or anything yielding the same batch keys).
    ``imf_cfg.cfg_scale`` is OUR ``w``: F5's ``cfg_strength`` s is ``w - 1`` (default ``w = 3``).
    ``teacher_ref``: where the teacher came from, recorded in the run's config.

    ``student_init``: a student whose size differs from the teacher's (the paper's teacher-size
    ablation): another pretrained F5 flow-matching model (same mel bins and text vocabulary, any
    width/depth); the init strategy applies to IT (:func:`make_student` of ``student_init``: at
    init the student equals ``student_init``, not the teacher). None: the teacher's own weights.
    """
    if not isinstance(teacher, F5Backbone) or teacher.config.mean_flow:
        raise TypeError(f"distill_f5: teacher must be an F5Backbone teacher, got {type(teacher).__name__}")
    seed_everything(train_cfg.seed)
    teacher = teacher.eval().requires_grad_(False)
    student = make_student(teacher if student_init is None else check_student_init(teacher, student_init)).train()
    params = freeze(student, cfg.freeze)
    objective = f5_objective(Guided(teacher, imf_cfg.cfg_scale), imf_cfg, cfg)
    extra = {"imf": imf_cfg.to_dict(), "f5": cfg.to_dict(), "teacher": teacher_ref or teacher.config.model_name,
             "f5_cfg_strength": imf_cfg.cfg_scale - 1.0}
    if student_init is not None:  # only then: runs without it keep their recorded config (resume check)
        extra["student_init"] = student_init_ref or student_init.config.model_name
    trainer = Trainer(run_dir, student, objective, dataset, collate, train_cfg, params=params, extra_config=extra,
                      progress=progress, desc=f"F5 student (IntMeanFlow, N={imf_cfg.teacher_nfe}, "
                                              f"w={imf_cfg.cfg_scale:g} = F5 s={imf_cfg.cfg_scale - 1:g})")
    return trainer, trainer.fit()


def check_student_init(teacher: F5Backbone, init: F5Backbone) -> F5Backbone:
    """``init`` if it can be a student of ``teacher``: an F5Backbone flow-matching model (not a student)
    reading the same mel bins and text vocabulary; its sizes may differ. Otherwise an error naming the field."""
    if not isinstance(init, F5Backbone) or init.config.mean_flow:
        raise TypeError(f"distill_f5(student_init=...): needs an F5Backbone flow-matching model (not a student), "
                        f"got {type(init).__name__}")
    for field in ("mel_dim", "text_num_embeds"):
        a, b = getattr(teacher.config, field), getattr(init.config, field)
        if a != b:
            raise ValueError(f"distill_f5(student_init=...): {field} = {b}, the teacher's is {a}: the student must "
                             "read the teacher's mels and text")
    return init.eval()


def distill_f5_files(checkpoint: str | Path, vocab: str | Path, manifest: str | Path, run_dir: str | Path,
                     train_cfg: TrainConfig, model: str = "F5TTS_v1_Base", imf_cfg: IMFConfig = F5_IMF,
                     cfg: F5DistillConfig = F5DistillConfig(), ema: bool = True, device: str = "cpu",
                     progress: bool = True, overrides: dict[str, Any] | None = None) -> tuple[Trainer, dict[str, Any]]:
    """The whole recipe from paths: an F5-TTS checkpoint (``.pt`` or ``.safetensors``) of model config
    ``model`` with its ``vocab.txt``, and a CSV/TSV ``manifest`` (columns ``audio_path``, ``text``).
    ``overrides``: F5Config fields that differ from the named config (a custom-sized DiT)."""
    device = resolve_device(device) if device in ("cuda", "auto") else device  # cuda:LOCAL_RANK under torchrun
    teacher = F5Backbone.from_f5(checkpoint, model, vocab, ema=ema, **(overrides or {})).to(device)
    data = F5Dataset.from_manifest(manifest, teacher.config, max_frames=cfg.max_frames)
    collate = make_collate(F5Text(vocab, teacher.config.tokenizer))
    return distill_f5(teacher, data, collate, run_dir, train_cfg, imf_cfg, cfg, progress, teacher_ref=str(checkpoint))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m imf.train.f5 --checkpoint ... --vocab ... --manifest ... --run-dir ...`` (see docs/distil_your_own_model.md)."""
    import argparse

    d, t = F5DistillConfig(), TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m imf.train.f5", description=distill_f5_files.__doc__)
    ap.add_argument("--checkpoint", required=True, help="F5-TTS checkpoint: trainer .pt or released .safetensors")
    ap.add_argument("--vocab", required=True, help="the checkpoint's vocab.txt")
    ap.add_argument("--manifest", required=True, help="CSV/TSV with columns audio_path,text")
    ap.add_argument("--run-dir", required=True, help="run folder (re-running resumes it)")
    ap.add_argument("--model", default="F5TTS_v1_Base", help="F5-TTS model config name (F5TTS_v1_Base, F5TTS_Small, ...)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=t.steps)
    ap.add_argument("--batch-size", type=int, default=t.batch_size, help="the GLOBAL batch (over torchrun processes)")
    ap.add_argument("--grad-accum", type=int, default=t.grad_accum, help="micro-batches per step and process")
    ap.add_argument("--lr", type=float, default=2e-5, help="AdamW peak lr (2e-5: fine-tuning a big pretrained DiT)")
    ap.add_argument("--warmup", type=int, default=t.warmup)
    ap.add_argument("--ema-decay", type=float, default=t.ema_decay)
    ap.add_argument("--ckpt-every", type=int, default=t.ckpt_every)
    ap.add_argument("--seed", type=int, default=t.seed)
    ap.add_argument("--teacher-nfe", type=int, default=F5_IMF.teacher_nfe, help="N: Euler sub-steps of the teacher over [0, 1]")
    ap.add_argument("--cfg-w", type=float, default=F5_IMF.cfg_scale,
                    help="teacher guidance, OUR w = F5's cfg_strength s + 1 (F5's default s = 2 -> w = 3)")
    ap.add_argument("--max-frames", type=int, default=d.max_frames, help="crop utterances (0: whole)")
    ap.add_argument("--freeze", default=d.freeze, choices=["none", "encoder"])
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override an F5Config field of the named model config, e.g. --set depth=18 (JSON values)")
    a = ap.parse_args(argv)
    overrides = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected FIELD=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    train_cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, ema_decay=a.ema_decay,
                            ckpt_every=a.ckpt_every, seed=a.seed, grad_accum=a.grad_accum)
    imf_cfg = F5_IMF.replace(teacher_nfe=a.teacher_nfe, cfg_scale=a.cfg_w)
    _, summary = distill_f5_files(a.checkpoint, a.vocab, a.manifest, a.run_dir, train_cfg, a.model, imf_cfg,
                                  F5DistillConfig(max_frames=a.max_frames, freeze=a.freeze), device=a.device,
                                  overrides=overrides)
    if is_main():
        print(summary)
    return summary


if __name__ == "__main__":
    main()
