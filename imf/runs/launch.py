"""A notebook's training step on N processes: :func:`train` runs a token2mel recipe in the kernel
(``nproc <= 1``, the default) or as a ``torchrun`` subprocess (``nproc > 1``).

A notebook kernel is one process and torchrun needs N fresh ones, so with ``nproc > 1`` the
resolved configs go to ``<run_dir>/launch.json`` and the kernel runs::

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m imf.train <recipe> --corpus C --run-dir RUN --config RUN/launch.json [--teacher T] [--init I]

streaming its output and waiting for it. Either way the run folder is the same
(:class:`imf.train.trainer.Trainer`'s, identical weights up to float rounding since the
configs' ``batch_size`` is the global batch), so what follows in the notebook loads the model
from the run folder as it always does. In a notebook, with ``NPROC`` a parameter (or
:func:`default_nproc`, the ``IMF_NPROC`` environment variable)::

    history, summary = launch.train("teacher", NPROC, corpus.root, cfg.run_dir,
                                    {"model": cfg.model, "train": cfg.train, "cfm": cfg.cfm, "data": cfg.data})

Several nodes are beyond a notebook: run ``torchrun --nnodes ... -m imf.train`` on each node
(see ``python -m imf.train --help``), then open the run folder in the notebook.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from imf.core.config import Config
from imf.core.runtime import atomic_write_json, repo_root
from imf.train import __main__ as train_cli


def default_nproc() -> int:
    """``IMF_NPROC`` (default 1): processes a notebook's training step may use."""
    return int(os.environ.get("IMF_NPROC", "1") or 1)


def command(recipe: str, nproc: int, corpus_dir: str | Path, run_dir: str | Path, config: str | Path,
            teacher: str | Path | None = None, init: str | Path | None = None, stage: str | None = None,
            vae: str | Path | None = None) -> list[str]:
    """The torchrun command line of :func:`train` (one node, ``nproc`` processes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "imf.train", recipe, "--corpus", str(corpus_dir), "--run-dir", str(run_dir), "--config", str(config),
           "--no-progress"]
    cmd += ["--teacher", str(teacher)] if teacher else []
    cmd += ["--init", str(init)] if init else []
    cmd += ["--stage", stage] if stage else []
    cmd += ["--vae", str(vae)] if vae else []
    return cmd


def train(recipe: str, nproc: int, corpus_dir: str | Path, run_dir: str | Path, configs: Mapping[str, Any],
          teacher: str | Path | None = None, init: str | Path | None = None, progress: bool = True,
          stage: str | None = None, vae: str | Path | None = None) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Train (or resume) ``recipe`` of ``python -m imf.train`` in ``run_dir``; (loss history, summary).
    ``stage`` / ``vae``: a Token2Wav stage (recipe ``token2wav``) and the VAE checkpoint it reads.

    ``configs``: the keys of :data:`imf.train.__main__.CONFIG_KEYS` (Config objects or dicts) and
    ``freeze``. ``nproc > 1``: a torchrun subprocess (module docstring); a failure raises with
    the command and the end of its output.
    """
    run_dir = Path(run_dir)
    config = run_dir / "launch.json"
    atomic_write_json(config, {k: v.to_dict() if isinstance(v, Config) else v for k, v in configs.items()})
    if nproc <= 1:
        summary = train_cli.run(recipe, corpus_dir, run_dir, config, teacher, init, progress=progress, stage=stage,
                                vae=vae)
    else:
        cmd = command(recipe, nproc, corpus_dir, run_dir, config, teacher, init, stage, vae)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")]))
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {out.returncode}:\n"
                               f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        summary = json.loads(out.stdout.strip().splitlines()[-1])
    history = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["history"]
    return history, summary
