"""Figures used by several notebooks (saved atomically as PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from torch import Tensor

from imf.core.runtime import atomic_path


def save_fig(fig, path: str | Path, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def plot_mels(mels: Mapping[str, Tensor], path: str | Path | None = None, title: str = ""):
    """One log-mel panel per entry, same colour scale. mels: name -> (C, T)."""
    import matplotlib.pyplot as plt

    vmin = min(float(m.min()) for m in mels.values())
    vmax = max(float(m.max()) for m in mels.values())
    fig, axes = plt.subplots(len(mels), 1, figsize=(8, 1.9 * len(mels)), squeeze=False, sharex=True)
    for ax, (name, m) in zip(axes[:, 0], mels.items()):
        ax.imshow(m.detach().cpu().numpy(), origin="lower", aspect="auto", vmin=max(vmin, vmax - 12), vmax=vmax,
                  cmap="magma", interpolation="nearest")
        ax.set_ylabel("mel bin")
        ax.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("frame (16 ms)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_fig(fig, path) if path else fig


def plot_metric_vs_nfe(df: pd.DataFrame, metrics: Sequence[str], path: str | Path | None = None,
                       hue: str = "system", refs: Mapping[str, float] | None = None, title: str = ""):
    """One panel per metric, one line per ``hue`` value, NFE on a log2 axis."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, g in df.groupby(hue, sort=False):
            g = g.sort_values("nfe")
            ax.plot(g["nfe"], g[metric], marker="o", label=str(name))
        if refs and metric in refs:
            ax.axhline(refs[metric], color="k", ls=":", lw=1, label="real speech")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_fig(fig, path) if path else fig


def plot_history(history: list[dict[str, float]], path: Path, title: str = "", keys=("loss", "grad_norm"),
                 marks: tuple[tuple[float, str], ...] = ()) -> Path | None:
    """Loss curves of a run (log scale) as a PNG at ``path``; ``marks``: (step, label) vertical lines."""
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = pd.DataFrame(history)
    keys = [k for k in keys if k in df]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(df["step"], df[k])
        ax.set_xlabel("step"), ax.set_ylabel(k), ax.set_yscale("log")
        ax.grid(alpha=0.3)
        for step, label in marks:
            ax.axvline(step, color="k", ls=":", lw=1)
            ax.annotate(label, (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
