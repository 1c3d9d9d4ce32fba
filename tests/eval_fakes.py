"""Small fakes for evaluation tests: an eval set whose mels are log-mels already, a known velocity."""
from __future__ import annotations

import torch

from imf.eval.evalset import EvalSet


class FakeCorpus:
    """Identity (de)normalisation; ``load_wav`` gives a short tone per utterance; two speakers."""

    speakers = ["clear", "robotic"]

    @staticmethod
    def denormalize(x):
        return x

    @staticmethod
    def load_wav(utt_id):
        k = int(utt_id[1:]) + 1
        return 0.1 * torch.sin(torch.arange(1600) * 0.05 * k)


def eval_set(n: int = 3, c: int = 8, t: int = 12, seed: int = 0) -> EvalSet:
    """``n`` utterances ``u0..``, (n, c, t) mels; utterance 1 has 9 valid frames; speakers alternate."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, t, dtype=torch.bool)
    mask[1, 9:] = False
    z_1 = torch.randn(n, c, t, generator=g) * mask[:, None]
    ids = [f"u{i}" for i in range(n)]
    return EvalSet(ids, z_1, mask, {"mask": mask}, torch.randn(n, c, t, generator=g), FakeCorpus(),
                   texts=[f"text {i}" for i in range(n)], speakers=torch.arange(n) % 2, prompt_ids=list(ids))


def velocity(x, *, t, r=None, cond):
    """A known field: Euler sampling shrinks the noise by a fixed factor per unit time."""
    return -0.7 * x
