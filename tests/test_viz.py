"""Figures: each plot draws what it says (curves per position, panels per system, runs per panel)."""
import pandas as pd
import torch

from imf.flow.o3s import scan_all
from imf.flow.schedules import uniform
from imf.viz.o3s import plot_scans
from imf.viz.plots import plot_samples, plot_stability
from tests.eval_fakes import eval_set as _eval_set


def log_spacing(g):
    return float(torch.log(g[1:] - g[:-1]).sum())


def test_plot_scans_draws_one_curve_per_position():
    import matplotlib.pyplot as plt

    grid = uniform(4)
    scans = scan_all(log_spacing, grid, n_points=7)
    fig = plot_scans(scans, grid, score=log_spacing(grid), title="log spacing")
    ax = fig.axes[0]
    assert len([ln for ln in ax.get_lines() if len(ln.get_xdata()) == 7]) == 3
    assert [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":"] == [0.25, 0.5, 0.75]
    assert ax.get_title() == "log spacing"
    plt.close(fig)


def test_plot_samples_one_panel_per_system_over_the_valid_frames(tmp_path):
    import matplotlib.pyplot as plt

    es = _eval_set()
    fig = plot_samples(es, {"a": es.z_0, "b": -es.z_0}, index=1)
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == ["real", "a", "b"]
    assert all(ax.get_images()[0].get_array().shape == (8, 9) for ax in axes)  # utterance 1 has 9 valid frames
    plt.close(fig)
    assert plot_samples(es, {"a": es.z_0}, tmp_path / "s.png").exists()


def test_plot_stability_panels_and_reference(tmp_path):
    import matplotlib.pyplot as plt

    h = [{"step": s, "mse": 1.0 / s, "grad_norm": 2.0, "nonfinite": int(s == 2)} for s in (1, 2, 3)]
    ref = pd.DataFrame({"step": [1, 2, 3, 4], "loss": [1.0, 0.5, 0.4, 0.3], "grad_norm": [1.0] * 4})
    fig = plot_stability({"run a": h, "run b": h}, ref, mark_step=2)
    loss, grad, nonfinite = fig.axes
    assert [ln.get_label() for ln in loss.get_lines() if ln.get_linestyle() != ":"] == ["run a", "run b", "IntMeanFlow"]
    assert list(nonfinite.get_lines()[0].get_ydata()) == [0, 1, 1]  # cumulative
    assert len(nonfinite.get_lines()) == 2  # no reference there, no stage mark there
    assert any(ln.get_linestyle() == ":" for ln in grad.get_lines())  # the second stage's start
    plt.close(fig)
    assert plot_stability({"run a": h}, None, tmp_path / "st.png").exists()
