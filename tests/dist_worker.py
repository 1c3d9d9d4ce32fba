"""``torchrun ... -m tests.dist_worker`` entry points for tests/test_distributed.py (not a test module).

``train --kill-at-step K ARGS...``: ``python -m imf.train ARGS`` whose rank 0 sends SIGTERM to the
torchrun agent (its parent) when step K starts — a kill of the whole launch mid-run, at a known
step. ``eval OUT``: :func:`imf.eval.sweep.generate` of a tiny model on a fixed fake set, saved
by rank 0.
"""
from __future__ import annotations

import os
import signal
import sys
import time

import torch

from imf.core import distributed
from imf.eval.sweep import generate
from imf.flow.schedules import uniform
from imf.train import trainer as trainer_module
from imf.train.__main__ import main as train_main
from tests.helpers import make_cond, tiny_model


class FakeEvalSet:
    """What :func:`generate` reads of an EvalSet: ``z_0`` (N, C, T), ``cond``, ``mask`` (N, T)."""

    def __init__(self, n: int = 7, frames: int = 16):
        g = torch.Generator().manual_seed(5)
        self.cond = make_cond(n, frames, n_mels=8, seed=4)
        self.mask = torch.arange(frames)[None] < torch.randint(frames // 2, frames + 1, (n, 1), generator=g)
        self.cond["mask"] = self.mask
        self.z_0 = torch.randn(n, 8, frames, generator=g)

    def __len__(self) -> int:
        return self.z_0.shape[0]


def eval_outputs(batch_size: int = 3) -> torch.Tensor:
    x, _, _ = generate(tiny_model(0), FakeEvalSet(), uniform(4), batch_size=batch_size)
    return x


def _kill_at(step: int) -> None:
    lr_at = trainer_module.lr_at

    def hooked(s, cfg):
        if s == step and distributed.is_main():
            os.kill(os.getppid(), signal.SIGTERM)  # the torchrun agent: it stops every worker
            time.sleep(120)
        return lr_at(s, cfg)

    trainer_module.lr_at = hooked


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "eval":
        distributed.init()
        x = eval_outputs()
        if distributed.is_main():
            torch.save(x, args[0])
    elif what == "train":
        if args[0] == "--kill-at-step":
            _kill_at(int(args[1]))
            args = args[2:]
        train_main(args)
    else:
        raise SystemExit(f"unknown entry {what!r}")
