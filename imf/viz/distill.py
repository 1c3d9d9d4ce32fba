"""Figures of the distillation notebook (02_distill): the teacher-NFE ablation."""
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
