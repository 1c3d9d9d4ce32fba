"""Train a token2mel recipe or a Token2Wav stage from a JSON config, in one process or data-parallel under ``torchrun``.

::

    python -m imf.train teacher  --corpus DIR --run-dir RUN --config cfg.json
    python -m imf.train distill  --corpus DIR --run-dir RUN --config cfg.json --teacher TEACHER/checkpoints/last.pt
    python -m imf.train meanflow --corpus DIR --run-dir RUN --config cfg.json [--init TEACHER_CKPT]
    python -m imf.train token2wav --stage vae|fm|meanflow|imf|decoder_ft|joint_ft --corpus DIR --run-dir RUN \
        --config cfg.json [--vae VAE_CKPT] [--teacher FM_CKPT] [--init GENERATOR_OR_DECFT_CKPT]

    torchrun --nproc_per_node 8 -m imf.train teacher ...             # one node, 8 processes
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 --rdzv_id RUN -m imf.train ...  # several nodes

``cfg.json`` holds the recipe's configs as dicts (unknown keys are refused): ``train``
(:class:`~imf.train.trainer.TrainConfig`: ``batch_size`` is the GLOBAL batch, split over
processes and ``grad_accum``), ``data`` (:class:`~imf.data.config.DataConfig`), ``model``
(:class:`~imf.models.Token2MelConfig`, teacher and scratch MeanFlow), ``cfm`` / ``imf`` /
``meanflow`` (the objective's config), ``freeze`` (a string) and, for ``token2wav``, ``token2wav``
(:class:`~imf.train.token2wav.T2WStagesConfig`: every stage's configs; ``--stage`` picks one, its
checkpoint inputs are :data:`~imf.train.token2wav.STAGE_NEEDS`). A notebook or the pipeline
writes the resolved file (``imf.runs.launch``) and starts this entry point when it has more
than one process to use. Re-running the same command resumes the run folder (with any number
of processes). Rank 0 prints the summary as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from imf.core import distributed
from imf.data import load_corpus
from imf.data.config import DataConfig
from imf.flow.objectives import CFMConfig, IMFConfig, MeanFlowConfig
from imf.models import Token2MelConfig
from imf.train.token2mel import distill, train_meanflow, train_teacher
from imf.train.token2wav import STAGE_TRAIN, TRAIN_STAGES, T2WStagesConfig, train_stage
from imf.train.trainer import TrainConfig

RECIPES = ("teacher", "distill", "meanflow", "token2wav")
CONFIG_KEYS = {"train": TrainConfig, "data": DataConfig, "model": Token2MelConfig, "cfm": CFMConfig,
               "imf": IMFConfig, "meanflow": MeanFlowConfig, "token2wav": T2WStagesConfig}


def read_config(path: str | Path) -> dict[str, Any]:
    """The configs of ``path`` (a JSON object): ``{key: Config}`` for :data:`CONFIG_KEYS`, ``freeze`` as given."""
    raw = json.loads(Path(path).read_text())
    unknown = sorted(set(raw) - set(CONFIG_KEYS) - {"freeze"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(CONFIG_KEYS) + ['freeze']}")
    out: dict[str, Any] = {k: cls.from_dict(raw.get(k) or {}, prefix=f"{k}.") for k, cls in CONFIG_KEYS.items()}
    out["freeze"] = raw.get("freeze")
    return out


def run(recipe: str, corpus_dir: str | Path, run_dir: str | Path, config: str | Path, teacher: str | None = None,
        init: str | None = None, steps: int | None = None, progress: bool = True, stage: str | None = None,
        vae: str | None = None) -> dict[str, Any]:
    """Train ``recipe`` (one of :data:`RECIPES`; ``token2wav``: its ``stage`` with the ``vae`` / ``teacher`` /
    ``init`` checkpoints it reads); the trainer's summary."""
    cfg = read_config(config)
    train = cfg["train"] if steps is None else cfg["train"].replace(steps=steps)
    corpus = load_corpus(corpus_dir)
    if recipe == "teacher":
        _, summary = train_teacher(corpus, run_dir, cfg["model"], train, cfg["cfm"], cfg["data"], progress=progress)
    elif recipe == "distill":
        if not teacher:
            raise ValueError("python -m imf.train distill: --teacher CHECKPOINT is required")
        _, summary = distill(corpus, teacher, run_dir, train, cfg["imf"], cfg["data"], cfg["freeze"] or "encoder",
                             progress=progress, init=init)
    elif recipe == "meanflow":
        _, summary = train_meanflow(corpus, run_dir, train, cfg["meanflow"], cfg["data"], init=init or "scratch",
                                    model_cfg=cfg["model"], freeze_mode=cfg["freeze"] or "none", progress=progress)
    elif recipe == "token2wav":
        if stage not in TRAIN_STAGES:
            raise ValueError(f"python -m imf.train token2wav: --stage must be one of {list(TRAIN_STAGES)}, "
                             f"got {stage!r}")
        t2w = cfg["token2wav"]
        if steps is not None:
            t2w = t2w.replace(**{STAGE_TRAIN[stage]: getattr(t2w, STAGE_TRAIN[stage]).replace(steps=steps)})
        _, summary = train_stage(stage, corpus, t2w, run_dir, vae=vae, teacher=teacher, init=init, progress=progress)
    else:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {list(RECIPES)}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m imf.train", description=__doc__.split("\n")[0])
    ap.add_argument("recipe", choices=RECIPES)
    ap.add_argument("--corpus", required=True, help="corpus folder (imf.data.load_corpus)")
    ap.add_argument("--run-dir", required=True, help="run folder (re-running resumes it)")
    ap.add_argument("--config", required=True, help="JSON file with train/data/model/cfm/imf/meanflow/freeze/token2wav")
    ap.add_argument("--teacher", help="teacher checkpoint (distill; token2wav imf: the flow-matching generator)")
    ap.add_argument("--init", help="distill: a student checkpoint to start from; meanflow: a teacher checkpoint; "
                                   "token2wav decoder_ft: the MeanFlow generator, joint_ft: the decoder-FT system")
    ap.add_argument("--stage", choices=TRAIN_STAGES, help="token2wav: the stage to train")
    ap.add_argument("--vae", help="token2wav (every stage after vae): the VAE checkpoint")
    ap.add_argument("--steps", type=int, help="override train.steps")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on rank 0")
    a = ap.parse_args(argv)
    distributed.init()
    summary = run(a.recipe, a.corpus, a.run_dir, a.config, a.teacher, a.init, a.steps, a.progress, a.stage, a.vae)
    if distributed.is_main():
        print(json.dumps(summary), file=sys.stdout, flush=True)
    distributed.shutdown()
    return summary


if __name__ == "__main__":
    main()
