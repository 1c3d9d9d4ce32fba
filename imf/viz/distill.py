"""Figures of the distillation notebook (02_distill): the teacher-NFE ablation; cost against quality of the recipes."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from imf.viz.plots import save_fig


def plot_teacher_nfe_ablation(ablation: pd.DataFrame, path: str | Path) -> Path:
    """Seconds per distillation step and the 1-NFE student's distance to the reference, against the teacher
    NFE ``N`` (log2 axis). ``ablation``: columns ``teacher_nfe``, ``sec_per_step``, ``dist_ref_1nfe``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.3))
    ax[0].plot(ablation.teacher_nfe, ablation.sec_per_step, "o-")
    ax[0].set_xlabel("teacher NFE N")
    ax[0].set_ylabel("s / distillation step")
    ax[1].plot(ablation.teacher_nfe, ablation.dist_ref_1nfe, "o-")
    ax[1].set_xlabel("teacher NFE N")
    ax[1].set_ylabel("1-NFE student: dist to teacher@max")
    for a in ax:
        a.set_xscale("log", base=2)
        a.grid(alpha=0.3)
    return save_fig(fig, path)


def plot_cost_vs_quality(df: pd.DataFrame, path: str | Path, target: float | None = None) -> Path:
    """Students' 1-NFE and 2-NFE distance to the guided 32-NFE teacher against the teacher forward passes
    (rows of the teacher network, log axis) and against training wall seconds, one line per run.

    ``df``: columns ``name``, ``teacher_rows``, ``wall_s``, ``dist_ref_1``, ``dist_ref_2`` (one row per
    evaluated checkpoint, :mod:`imf.runs.traj_bench`); ``target``: a horizontal line (the 1-NFE goal)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for k, (name, d) in enumerate(df.groupby("name", sort=False)):
        color = f"C{k}"
        for a, x in zip(ax, ("teacher_rows", "wall_s")):
            a.plot(d[x].clip(lower=1), d.dist_ref_1, "o-", color=color, ms=3, label=f"{name}, 1 NFE")
            a.plot(d[x].clip(lower=1), d.dist_ref_2, "--", color=color, alpha=0.6, label=f"{name}, 2 NFE")
    ax[0].set_xscale("log")
    ax[0].set_xlabel("teacher forward passes (network rows, cumulative)")
    ax[1].set_xlabel("training wall seconds (evaluation excluded)")
    ax[0].set_ylabel("student dist_ref (to guided 32-NFE teacher)")
    for a in ax:
        if target is not None:
            a.axhline(target, color="k", lw=0.8, ls=":", label=f"target {target:g}")
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=7)
    return save_fig(fig, path)
