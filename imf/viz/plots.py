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


def plot_samples(es, outputs: Mapping[str, Tensor], path: str | Path | None = None, index: int = 0):
    """Utterance ``index`` of an evaluation set, real then each system's output on the SAME noise.

    ``es``: :class:`imf.eval.evalset.EvalSet`; ``outputs``: label -> normalised mel (N, C, T) generated
    on ``es``. Each panel shows the utterance's valid frames as log-mel (:func:`plot_mels`).
    """
    n_i = int(es.mask[index].sum())
    mels = {"real": es.real_logmel()[index, :, :n_i]}
    for label, x in outputs.items():
        mels[label] = es.corpus.denormalize(x[index])[:, :n_i]
    return plot_mels(mels, path, title=f"{es.ids[index]} — same noise for every row")


def plot_stability(histories: Mapping[str, Sequence[dict]], reference: pd.DataFrame | None = None,
                   path: str | Path | None = None, reference_label: str = "IntMeanFlow", mark_step: int | None = None,
                   loss: str = "mse"):
    """Training stability side by side: loss, gradient norm and cumulative non-finite steps per run.

    ``histories``: label -> a trainer history (rows with ``step``, ``loss`` column ``loss``, ``grad_norm``,
    ``nonfinite``); ``reference``: a history drawn dashed in black (columns ``step``, ``loss``,
    ``grad_norm``), e.g. IntMeanFlow's; ``mark_step``: a dotted vertical line (where its second stage
    starts). Returns the saved path, or the figure without ``path``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.4))
    for label, history in histories.items():
        h = pd.DataFrame(history)
        ax[0].plot(h.step, h[loss], label=label)
        ax[1].plot(h.step, h.grad_norm, label=label)
        ax[2].plot(h.step, h.nonfinite.cumsum(), label=label)
    if reference is not None:
        ax[0].plot(reference.step, reference["loss"], "k--", label=reference_label)
        ax[1].plot(reference.step, reference.grad_norm, "k--", label=reference_label)
    for a, name in zip(ax, ["loss (unweighted MSE to the target)", "gradient norm (before clipping)",
                            "non-finite steps (cumulative)"]):
        a.set_title(name, fontsize=9)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    if mark_step is not None:
        for a in ax[:2]:
            a.axvline(mark_step, color="k", ls=":", lw=1)
    ax[0].set_yscale("log")
    ax[1].set_yscale("log")
    ax[0].legend(fontsize=7)
    return save_fig(fig, path) if path else fig


def plot_alignment_study(table: pd.DataFrame, path: str | Path | None = None, title: str = ""):
    """Per recipe (``table.recipe``): the text and the noise effect (± 2 ``effect_se``: the SE of their paired
    difference) and, with ``wer_true`` / ``wer_shuffled``, the WER of the outputs given the true vs a shuffled text."""
    import matplotlib.pyplot as plt
    import numpy as np

    wer = "wer_true" in table
    fig, axes = plt.subplots(1, 2 if wer else 1, figsize=(5.2 * (2 if wer else 1), 3.4), squeeze=False)
    x, w = np.arange(len(table)), 0.38
    ax = axes[0, 0]
    ax.bar(x - w / 2, table.text_effect, w, yerr=2 * table.effect_se, capsize=3, label="text swapped")
    ax.bar(x + w / 2, table.noise_effect, w, label="noise swapped")
    ax.set_ylabel("mean |log-mel change|")
    ax.set_title("does the text move the output? (error bar: 2 SE of text - noise)", fontsize=9)
    if wer:
        ax = axes[0, 1]
        ax.bar(x - w / 2, table.wer_true, w, yerr=2 * table.wer_gain_se, capsize=3, label="given the true text")
        ax.bar(x + w / 2, table.wer_shuffled, w, label="given a shuffled text")
        ax.set_ylabel("WER against the true text")
        ax.set_title("does it say the text it was given? (2 SE of the WER gap)", fontsize=9)
    for ax in axes[0]:
        ax.set_xticks(x, list(table.recipe), rotation=20)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_fig(fig, path) if path else fig
