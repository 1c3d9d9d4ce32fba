"""O3S figures: the convexity curves of the paper's Fig. 2 (metric vs one step's position)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from imf.flow.schedules import validate_grid


def plot_scans(
    scans: dict[int, tuple[Tensor, Tensor]],
    time_grid: Tensor | Sequence[float] | None = None,
    score: float | None = None,
    ax: Any = None,
    title: str | None = None,
    ylabel: str = "metric",
):
    """Draw one curve per interior position: x = position of ``t_i``, y = metric (Fig. 2).

    ``scans``: :func:`imf.flow.o3s.scan_all`'s ``{i: (positions (n,), scores (n,))}``.
    ``time_grid`` (K+1,), if given, marks each current ``t_i`` with a dotted vertical line, and
    ``score`` (the metric at ``time_grid``) with a hollow marker there. Draws into ``ax`` or a
    new figure; returns the figure (save it with :func:`imf.viz.plots.save_fig`).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    else:
        fig = ax.figure
    g = None if time_grid is None else validate_grid(time_grid)
    for i, (positions, scores) in sorted(scans.items()):
        (line,) = ax.plot(torch.as_tensor(positions).tolist(), torch.as_tensor(scores).tolist(),
                          marker=".", label=f"$t_{{{i}}}$")
        if g is not None and i < g.numel() - 1:
            ax.axvline(float(g[i]), color=line.get_color(), ls=":", lw=1)
            if score is not None:
                ax.plot([float(g[i])], [score], marker="o", mfc="none", color=line.get_color())
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("position of step $t_i$ (0 = noise, 1 = data)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if scans:
        ax.legend(fontsize="small")
    return fig
