"""Small fakes shared by tests: a counting model, a random token/mel dataset; the notebook runs' environment."""
from __future__ import annotations

import contextlib

import pytest
import torch

from imf.flow.objectives import meanflow_target
from imf.models import Token2Mel, Token2MelConfig


class Counting(torch.nn.Module):
    """Wraps a velocity model, counting calls and rows evaluated."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.calls, self.rows = fn, 0, 0

    def forward(self, x, *, t, r=None, cond):
        self.calls += 1
        self.rows += x.shape[0]
        return self.fn(x, t=t, r=r, cond=cond)


def make_cond(b: int, n: int, n_tokens: int = 20, n_mels: int = 80, tp: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "tokens": torch.randint(1, n_tokens, (b, n), generator=g),
        "mask": torch.ones(b, n, dtype=torch.bool),
        "prompt": torch.randn(b, n_mels, tp, generator=g),
        "prompt_mask": torch.ones(b, tp, dtype=torch.bool),
    }


def tiny_model(seed: int = 0, randomize: bool = True, **kw) -> Token2Mel:
    """A small Token2Mel; ``randomize`` perturbs the zero-initialised heads so outputs are non-trivial."""
    torch.manual_seed(seed)
    cfg = dict(n_mels=8, n_tokens=20, dim=32, n_layers=2, text_layers=1, prompt_layers=1)
    cfg.update(kw)
    m = Token2Mel(Token2MelConfig(**cfg))
    if randomize:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return m


class RandomMelDataset(torch.utils.data.Dataset):
    """Items shaped like imf.data.MelTokenDataset's: mel (n_mels, T), tokens (T,), prompt."""

    def __init__(self, n: int = 32, n_mels: int = 8, n_tokens: int = 20, frames: int = 24, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            tok = torch.randint(1, n_tokens, (frames,), generator=g)
            mel = torch.sin(tok[None].float() * torch.arange(1, n_mels + 1)[:, None] / 3) + 0.1 * torch.randn(
                n_mels, frames, generator=g)
            self.items.append({"id": str(i), "z_1": mel, "tokens": tok, "speaker": i % 3,
                               "prompt": torch.randn(n_mels, 10, generator=g), "text": ""})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(items):
    return {
        "ids": [it["id"] for it in items],
        "z_1": torch.stack([it["z_1"] for it in items]),
        "tokens": torch.stack([it["tokens"] for it in items]),
        "mask": torch.ones(len(items), items[0]["tokens"].shape[0], dtype=torch.bool),
        "prompt": torch.stack([it["prompt"] for it in items]),
        "prompt_mask": torch.ones(len(items), items[0]["prompt"].shape[1], dtype=torch.bool),
        "speaker": torch.tensor([it["speaker"] for it in items]),
    }


def jvp_and_finite_differences(model, cond, channels: int, b: int = 2, n: int = 7, eps: float = 1e-6):
    """The MeanFlow target's total derivative du/dt along (v, 1) on (z, t) (one forward-mode JVP,
    recovered as ``(u_tgt - v) / (r - t)``) and central finite differences of the same, float64:
    ``(dudt, fd)``, each (b, channels, n)."""
    z = torch.randn(b, channels, n, dtype=torch.float64)
    v = torch.randn(b, channels, n, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5], dtype=torch.float64)[:b]
    r = torch.tensor([0.7, 0.9], dtype=torch.float64)[:b]
    _, u_tgt = meanflow_target(model, z, t, r, v, cond)
    dudt = (u_tgt - v) / (r - t)[:, None, None]
    f = lambda s: model(z + s * v, t=t + s, r=r, cond=cond)
    return dudt, (f(eps) - f(-eps)) / (2 * eps)



@contextlib.contextmanager
def pipeline_env(root):
    """The environment of notebook runs in the tree ``root``: IMF_RESULTS/DATA/RUNS under it, two
    threads, and the notary's signatures in ``root/jupyter`` (away from the user's). Kernels and
    servers started inside inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("IMF_RESULTS", "results"), ("IMF_DATA", "data"), ("IMF_RUNS", "runs")):
            mp.setenv(var, str(root / sub))
        mp.setenv("IMF_THREADS", "2")
        mp.setenv("JUPYTER_DATA_DIR", str(root / "jupyter"))
        yield root
