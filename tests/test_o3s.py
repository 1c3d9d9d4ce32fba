"""O3S: the search finds known optima of synthetic metrics, respects its constraints and budget."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from imf.core.config import ConfigError
from imf.flow.o3s import HISTORY_COLUMNS, O3SConfig, O3SError, O3SResult, o3s_search, scan_all, scan_position
from imf.flow.schedules import GridError, load_grid, save_grid, uniform
from imf.runs.eval_o3s import search_grids
from imf.runs.profiles import profile

torch.set_num_threads(1)


def separable(target):
    """m(g) = -sum_i (t_i - target_i)^2: maximum at t = target, separable in the positions."""
    target = torch.tensor(target, dtype=torch.float64)

    def metric(g):
        return -float(((g[1:-1] - target) ** 2).sum())

    return metric


def coupled_quadratic(c, A):
    """m(g) = -(t - c)^T A (t - c) with A SPD and off-diagonal terms: maximum at t = c."""
    c, A = torch.tensor(c, dtype=torch.float64), torch.tensor(A, dtype=torch.float64)

    def metric(g):
        d = g[1:-1] - c
        return -float(d @ A @ d)

    return metric


def log_spacing(g):
    """m(g) = sum_k log(t_{k+1} - t_k): coupled; maximum at the uniform grid (AM-GM, sum of gaps = 1)."""
    return float(torch.log(g[1:] - g[:-1]).sum())


def check_grid(grid, K, min_gap):
    g = torch.as_tensor(grid, dtype=torch.float64)
    assert g.shape == (K + 1,)
    assert g[0].item() == 0.0 and g[-1].item() == 1.0
    assert ((g[1:] - g[:-1]) > min_gap).all(), g.tolist()


# (a) separable concave metric: known optimum, both bracket searches, default budget


@pytest.mark.parametrize("method", ["golden", "ternary"])
def test_separable_optimum(method):
    target = [0.1, 0.45, 0.8]
    cfg = O3SConfig(method=method, tol=1e-6)
    res = o3s_search(separable(target), uniform(4), cfg, progress=False)
    assert res.n_evals <= cfg.max_evals
    assert torch.allclose(res.best_grid[1:-1], torch.tensor(target, dtype=torch.float64), atol=1e-2)
    assert res.best_score > res.init_score
    assert res.stopped == "converged"


def test_no_snapping_with_round_to_zero():
    cfg = O3SConfig(round_to=0.0, tol=0.0)
    res = o3s_search(separable([0.1, 0.45, 0.8]), uniform(4), cfg, progress=False)
    assert torch.allclose(res.best_grid[1:-1], torch.tensor([0.1, 0.45, 0.8], dtype=torch.float64), atol=1e-2)
    assert res.stopped == "converged"  # tol = 0 still stops once a sweep moves nothing
    for h in res.history:
        check_grid(h["time_grid"], 4, cfg.min_gap)


def test_separable_optimum_precise_with_more_iterations():
    target = [0.1234, 0.5678]
    cfg = O3SConfig(ternary_iters=20, tol=0.0, max_evals=500)
    res = o3s_search(separable(target), uniform(3), cfg, progress=False)
    assert torch.allclose(res.best_grid[1:-1], torch.tensor(target, dtype=torch.float64), atol=2e-4)


def test_optimum_outside_feasible_region_lands_on_the_gap_boundary():
    # target t_1 = 0 is infeasible; the best feasible t_1 is just above min_gap
    cfg = O3SConfig(min_gap=0.05, ternary_iters=20, tol=0.0, max_evals=500)
    res = o3s_search(separable([0.0, 0.5]), uniform(3), cfg, progress=False)
    assert res.best_grid[1].item() > 0.05
    assert res.best_grid[1].item() == pytest.approx(0.05, abs=2e-3)
    check_grid(res.best_grid, 3, 0.05)


# (b) coupled positions


def test_coupled_quadratic_optimum():
    c = [0.2, 0.5, 0.7]
    A = [[2.0, 0.9, 0.3], [0.9, 2.0, 0.9], [0.3, 0.9, 2.0]]  # SPD, strongly coupled
    cfg = O3SConfig(ternary_iters=14, tol=1e-9, max_evals=1000, max_sweeps=30)
    res = o3s_search(coupled_quadratic(c, A), uniform(4), cfg, progress=False)
    assert torch.allclose(res.best_grid[1:-1], torch.tensor(c, dtype=torch.float64), atol=1e-2)


def test_log_spacing_converges_to_uniform():
    init = torch.tensor([0.0, 0.03, 0.06, 0.09, 1.0], dtype=torch.float64)
    cfg = O3SConfig(ternary_iters=14, tol=1e-8, max_evals=1000, max_sweeps=30)
    res = o3s_search(log_spacing, init, cfg, progress=False)
    assert torch.allclose(res.best_grid, uniform(4), atol=1e-2)
    assert res.best_score == pytest.approx(4 * math.log(0.25), abs=1e-3)


# (c) every evaluated grid is valid; the metric sees float64 (K+1,)


def test_history_grids_valid():
    seen = []

    def metric(g):
        assert g.dtype == torch.float64 and g.shape == (6,)
        seen.append(g.tolist())
        return log_spacing(g) - 5 * float((g[1] - 0.3) ** 2)

    cfg = O3SConfig(min_gap=0.1)
    init = torch.tensor([0.0, 0.12, 0.3, 0.5, 0.88, 1.0], dtype=torch.float64)
    res = o3s_search(metric, init, cfg, progress=False)
    assert len(res.history) == res.n_evals == len(seen)
    for h in res.history:
        check_grid(h["time_grid"], 5, cfg.min_gap)
        assert set(h) == {"eval", "sweep", "position", "time_grid", "score", "best_so_far"}
    check_grid(res.best_grid, 5, cfg.min_gap)
    assert [h["eval"] for h in res.history] == list(range(1, res.n_evals + 1))
    assert res.history[0]["sweep"] == 0 and res.history[0]["position"] == 0
    assert res.history[0]["time_grid"] == init.tolist()  # the initial grid is evaluated as given
    assert all(1 <= h["position"] <= 4 for h in res.history[1:])
    # best_so_far is the running maximum and ends at best_score
    running = -math.inf
    for h in res.history:
        running = max(running, h["score"])
        assert h["best_so_far"] == running
    assert res.best_score == running


# (d) never worse than the initial grid, even for a metric that is not unimodal


def test_never_worse_than_init():
    def bumpy(g):  # many local maxima per coordinate: bracket search gets lost, must not lose ground
        return float(torch.sin(40 * g[1:-1]).sum() + torch.cos(17 * g[1:-1]).prod())

    for init in (uniform(3), uniform(5), torch.tensor([0.0, 0.05, 0.5, 1.0], dtype=torch.float64)):
        res = o3s_search(bumpy, init, O3SConfig(max_evals=60), progress=False)
        assert res.best_score >= res.init_score
        assert res.best_score == pytest.approx(bumpy(res.best_grid), abs=0)
        assert res.best_score == max(h["score"] for h in res.history)


def test_init_already_optimal_is_kept():
    res = o3s_search(log_spacing, uniform(4), O3SConfig(), progress=False)
    assert torch.equal(res.best_grid, uniform(4))
    assert res.best_score == res.init_score
    assert res.stopped == "converged" and res.n_sweeps == 1


# (e) deterministic


def test_deterministic_history():
    cfg = O3SConfig(max_evals=80)
    r1 = o3s_search(log_spacing, [0.0, 0.05, 0.1, 0.9, 1.0], cfg, progress=False)
    r2 = o3s_search(log_spacing, [0.0, 0.05, 0.1, 0.9, 1.0], cfg, progress=False)
    assert r1.history == r2.history
    assert torch.equal(r1.best_grid, r2.best_grid)


# (f) budget


def test_budget_respected_and_reported():
    calls = []

    def metric(g):
        calls.append(1)
        return log_spacing(g)

    res = o3s_search(metric, [0.0, 0.05, 0.1, 0.9, 1.0], O3SConfig(max_evals=5), progress=False)
    assert res.stopped == "budget"
    assert res.n_evals == len(calls) == len(res.history) == 5
    assert res.best_score >= res.init_score
    check_grid(res.best_grid, 4, 0.02)


def test_budget_of_one_evaluates_only_init():
    res = o3s_search(log_spacing, uniform(3), O3SConfig(max_evals=1), progress=False)
    assert res.stopped == "budget" and res.n_evals == 1
    assert torch.equal(res.best_grid, uniform(3))


def test_max_sweeps_reported():
    cfg = O3SConfig(max_sweeps=1, tol=0.0, max_evals=1000)
    res = o3s_search(log_spacing, [0.0, 0.05, 0.1, 0.9, 1.0], cfg, progress=False)
    assert res.stopped == "max_sweeps" and res.n_sweeps == 1
    assert {h["sweep"] for h in res.history} == {0, 1}


def test_nfe_one_returns_init_with_one_evaluation():
    res = o3s_search(lambda g: 0.5, uniform(1), progress=False)
    assert torch.equal(res.best_grid, uniform(1))
    assert res.n_evals == 1 and res.best_score == res.init_score == 0.5
    assert res.stopped == "converged" and res.n_sweeps == 0


# (g) metric failures


def test_metric_raising_names_the_grid():
    def metric(g):
        if g[1] != 0.5:
            raise ValueError("dev set exploded")
        return 0.0

    with pytest.raises(O3SError) as info:
        o3s_search(metric, [0.0, 0.5, 1.0], progress=False)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert isinstance(err.__cause__, ValueError)
    assert "dev set exploded" in str(err)
    assert str(err.time_grid) in str(err)
    assert err.time_grid[1] != 0.5 and len(err.history) == 1  # init succeeded, first probe failed


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_is_an_error(bad):
    with pytest.raises(O3SError, match=r"non-finite.*\[0\.0, 0\.25, 0\.5, 0\.75, 1\.0\]"):
        o3s_search(lambda g: bad, uniform(4), progress=False)


def test_invalid_init_grid_and_config():
    with pytest.raises(GridError):
        o3s_search(log_spacing, [0.0, 0.6, 0.5, 1.0], progress=False)
    with pytest.raises(GridError, match="min gap"):
        o3s_search(log_spacing, [0.0, 0.01, 1.0], progress=False)  # gap below the default 0.02
    with pytest.raises(GridError, match="1-D"):
        o3s_search(log_spacing, uniform(3)[None], progress=False)
    with pytest.raises(ConfigError, match="max_evals"):
        O3SConfig.from_dict({"max_evals": 0})
    with pytest.raises(ConfigError, match="method"):
        O3SConfig.from_dict({"method": "bisect"})
    with pytest.raises(ConfigError, match="min_gap"):
        o3s_search(log_spacing, uniform(3), O3SConfig(min_gap=-0.1), progress=False)
    assert O3SConfig.from_dict({"max_evals": 50, "tol": 0}).tol == 0.0


# (h) the result as data: its grid through save_grid / load_grid, its history as a table


def test_grid_meta_round_trips_through_save_grid(tmp_path):
    res = o3s_search(separable([0.2, 0.6]), uniform(3), O3SConfig(max_evals=30), progress=False)
    save_grid(tmp_path / "grid.json", res.best_grid, **res.grid_meta())
    assert torch.equal(load_grid(tmp_path / "grid.json"), res.best_grid)
    meta = json.loads((tmp_path / "grid.json").read_text())
    assert meta["score"] == res.best_score and meta["init_score"] == res.init_score
    assert meta["n_evals"] == res.n_evals and meta["nfe"] == 3 and meta["stopped"] == res.stopped
    assert meta["init_grid"] == uniform(3).tolist() and meta["config"]["max_evals"] == 30
    df = res.history_frame()
    assert tuple(df.columns) == HISTORY_COLUMNS
    assert len(df) == res.n_evals and df["best_so_far"].iloc[-1] == res.best_score
    assert df["best_so_far"].is_monotonic_increasing


def test_search_module_writes_and_draws_nothing(tmp_path, monkeypatch):
    import imf.flow.o3s as o3s

    assert not hasattr(o3s, "plot_scans") and not hasattr(O3SResult, "save")  # now imf.viz.o3s / imf.runs
    assert not {n for n in vars(o3s) if n.startswith(("atomic_", "save_"))}
    monkeypatch.chdir(tmp_path)
    o3s_search(log_spacing, uniform(3), O3SConfig(max_evals=10), progress=False)
    scan_all(log_spacing, uniform(3), n_points=3)
    assert list(tmp_path.iterdir()) == []


# (i) convexity scans


def test_scan_position_interval_and_argmax():
    target = [0.3, 0.55]
    grid = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=torch.float64)
    positions, scores = scan_position(separable(target), grid, 1, n_points=41, min_gap=0.02)
    assert positions.shape == scores.shape == (41,)
    assert ((positions > 0.0 + 0.02) & (positions < 0.7 - 0.02)).all()
    assert (positions[1:] > positions[:-1]).all()
    assert positions[scores.argmax()].item() == pytest.approx(0.3, abs=(0.66 / 42))

    scans = scan_all(separable(target), grid, n_points=21)
    assert sorted(scans) == [1, 2]
    p2, s2 = scans[2]
    assert ((p2 > 0.2 + 0.02) & (p2 < 1.0 - 0.02)).all()
    assert p2[s2.argmax()].item() == pytest.approx(0.55, abs=0.76 / 22)
    assert scan_all(separable([]), uniform(1)) == {}
    with pytest.raises(ValueError, match="interior"):
        scan_position(separable(target), grid, 0)
    with pytest.raises(O3SError, match="non-finite"):
        scan_position(lambda g: math.nan, grid, 1)


# (j) cache


def test_cache_never_repeats_a_grid():
    seen = {}

    def metric(g):
        key = tuple(g.tolist())
        seen[key] = seen.get(key, 0) + 1
        return log_spacing(g) - 3 * float((g[2] - 0.6) ** 2)

    # converges in a few sweeps: later sweeps re-propose earlier grids, which must hit the cache
    res = o3s_search(metric, [0.0, 0.1, 0.2, 0.9, 1.0], O3SConfig(tol=0.0, max_evals=1000), progress=False)
    assert max(seen.values()) == 1
    assert len(seen) == res.n_evals
    assert res.n_cache_hits > 0
    # positions are snapped to round_to = 1e-4, so the grids stay short in JSON
    for h in res.history[1:]:
        for t in h["time_grid"]:
            assert round(t, 4) == t


def test_result_is_a_dataclass_with_documented_fields():
    res = o3s_search(lambda g: 1.0, uniform(2), progress=False)
    assert isinstance(res, O3SResult)
    assert res.best_grid.dtype == torch.float64
    assert res.stopped in {"converged", "budget", "max_sweeps"}


def test_a_search_that_converges_early_ends_its_notebook_bar_full(monkeypatch):
    """The executed 04 showed "4/4" in text but a widget at 4 of 6: a converged search resizes its bar."""
    import tqdm.auto
    import tqdm.notebook

    bars = []

    class Recording(tqdm.notebook.tqdm):
        def __init__(self, *a, **kw):
            super().__init__(*a, **{**kw, "disable": False})
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    res = o3s_search(lambda grid: -float((grid[1] - 0.5) ** 2), torch.tensor([0.0, 0.3, 1.0]),
                     O3SConfig(max_evals=50, ternary_iters=2), progress=True)
    assert res.n_evals < 50 and bars
    progress = bars[0].container.children[1]
    assert progress.value == progress.max == res.n_evals


def test_04s_empty_nfe_lists_take_the_profiles_o3s_section(tmp_path):
    """04's `STUDENT_NFES = []` / `TEACHER_NFES = []` search what the profile's `o3s` section names (small: the
    student at 2 NFE and the teacher at 5); an explicit list wins; the convexity plot follows what was searched."""
    class Study:  # the objective is a smooth bowl around the uniform grid: any search converges at once
        wb = SimpleNamespace(P=profile("small"), out=tmp_path)
        o3s_config = O3SConfig(max_evals=4, ternary_iters=1, tol=1e-4)

        def objective(self, who):
            return lambda g: -float(((g - torch.linspace(0, 1, len(g))) ** 2).sum())

    _, found = search_grids(Study(), [], [], progress=False)
    assert sorted(found) == [("student", 2), ("teacher", 5)]
    _, found = search_grids(Study(), [3], [], progress=False)
    assert sorted(found) == [("student", 3), ("teacher", 5)]
    with pytest.raises(TypeError, match="student_nfes"):
        search_grids(Study(), ["2"], [], progress=False)
