"""``torchrun ... -m tests.dist_worker`` entry points for tests/test_distributed.py (not a test module).

``train --kill-at-step K ARGS...``: ``python -m imf.train ARGS`` whose rank 0 sends SIGTERM to the
torchrun agent (its parent) when step K starts — a kill of the whole launch mid-run, at a known
step. ``eval OUT``: :func:`imf.eval.sweep.generate` of a tiny model on a fixed fake set, and
:func:`judged_sweep` (an NFE sweep judged through :class:`imf.eval.audio.AudioJudges`), saved by
rank 0 with the number of utterances each rank's judge scored.
"""
from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pandas as pd
import torch

from imf.core import distributed
from imf.eval.audio import AudioJudges
from imf.eval.judges import WER, CachedJudge
from imf.eval.sweep import generate, nfe_sweep
from imf.eval.systems import System
from imf.flow.schedules import uniform
from imf.train import trainer as trainer_module
from imf.train.__main__ import main as train_main
from tests.eval_fakes import eval_set, velocity
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


class ToneVocoder:
    """``vocode(mel (1, C, T)) -> (1, 160 T)``: a tone whose pitch and level follow the mel's mean."""

    def vocode(self, mel):
        n = torch.arange(160 * mel.shape[-1])
        return (0.2 + 0.05 * mel.mean().tanh()) * torch.sin(2 * torch.pi * (100 + 10 * mel.mean()) * n / 16000)[None]


class RMS(CachedJudge):
    """A cached judge without weights: the audio's RMS (``n_computed`` counts the utterances it scored)."""
    name, identity = "rms", "rms (test)"

    def _compute(self, items):
        return [float(np.sqrt(np.mean(it.wav.astype(np.float64) ** 2))) for it in items]


def _asr(wav: np.ndarray) -> str:
    """A stub recogniser that gets the digit wrong on quiet utterances."""
    return "text 0" if np.sqrt(np.mean(wav ** 2)) > 0.15 else "text"


def judged_sweep() -> tuple[pd.DataFrame, int]:
    """An NFE sweep of a known field on 7 fake utterances (batches of 3) with RMS on every utterance and WER on
    one voice; (table without its timing column, utterances this process's RMS judge scored)."""
    rms = RMS(progress=False)
    judges = AudioJudges(ToneVocoder(), [rms, WER(transcribe=_asr, normalizer=str.lower, progress=False)],
                         wer_speakers=["clear"])
    system = System("field", velocity)
    table, _ = nfe_sweep(eval_set(n=7), [(system, 1), (system, 2)], reference=(system, 4), judges=judges,
                         batch_size=3, progress=False)
    return table.drop(columns="seconds"), rms.n_computed


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
        table, computed = judged_sweep()
        computed = distributed.all_gather_objects(computed)
        if distributed.is_main():
            torch.save({"x": x, "table": table, "computed": computed}, args[0])
        distributed.shutdown()
    elif what == "train":
        if args[0] == "--kill-at-step":
            _kill_at(int(args[1]))
            args = args[2:]
        train_main(args)
    else:
        raise SystemExit(f"unknown entry {what!r}")
