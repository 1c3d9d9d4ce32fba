"""The time convention, the path, the samplers, guidance and schedules — checked against closed forms."""
import math

import pytest
import torch

from imf.flow import schedules
from imf.flow.paths import average_velocity, interpolate, jump, sample_path, target_velocity
from imf.flow.solvers import Guided, cat_cond_with_null, guide, nfe_for, sample
from tests.helpers import Counting


def test_time_convention_sign():
    """t = 0 is noise, t = 1 is data, and the velocity points from noise to data."""
    z_0, z_1 = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(interpolate(z_0, z_1, torch.zeros(2)), z_0)
    assert torch.equal(interpolate(z_0, z_1, torch.ones(2)), z_1)
    assert torch.equal(target_velocity(z_0, z_1), z_1 - z_0)
    # one full jump with the target velocity lands on the data
    assert torch.equal(jump(z_0, target_velocity(z_0, z_1), torch.zeros(2), torch.ones(2)), z_1)


def test_closed_form_path_and_target():
    g = torch.Generator().manual_seed(0)
    z_0, z_1 = torch.randn(4, 5, 6, generator=g, dtype=torch.float64), torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    t = torch.rand(4, generator=g, dtype=torch.float64)
    z_t, v = sample_path(z_0, z_1, t)
    for i in range(4):
        assert torch.equal(z_t[i], (1 - t[i]) * z_0[i] + t[i] * z_1[i])
    assert torch.equal(v, z_1 - z_0)
    # the straight path's average velocity over any [t, r] is v
    r = t + (1 - t) * 0.5
    z_r, _ = sample_path(z_0, z_1, r)
    assert torch.allclose(average_velocity(z_t, z_r, t, r), v, atol=1e-12)


def test_path_rejects_bad_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        interpolate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def linear_field(x, *, t, r=None, cond):
    """dx/dt = a x, closed form x(1) = x(0) e^a."""
    return cond["a"][:, None] * x


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2)])
def test_solver_converges_to_closed_form(method, order):
    x0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    cond = {"a": torch.tensor([0.7, -1.3], dtype=torch.float64)}
    exact = x0 * torch.exp(cond["a"])[:, None]
    errs = []
    for n in (16, 32, 64):
        z_1, nfe = sample(linear_field, x0, schedules.uniform(n), cond, method=method)
        errs.append((z_1 - exact).abs().max().item())
        assert nfe == n * (1 if method == "euler" else 2)
    # halving the step divides the error by ~2^order
    rate = math.log2(errs[0] / errs[1])
    assert abs(rate - order) < 0.2, errs
    assert errs[-1] < (1e-2 if order == 1 else 1e-4)


def test_time_dependent_field_closed_form():
    """dx/dt = 2t integrates to x(1) = x(0) + 1 exactly with midpoint (quadratic in t)."""
    f = lambda x, *, t, r=None, cond: 2 * t[:, None].to(x) * torch.ones_like(x)
    z_1, _ = sample(f, torch.zeros(3, 1, dtype=torch.float64), schedules.sway(7), {"a": torch.zeros(3)}, "midpoint")
    assert torch.allclose(z_1, torch.ones(3, 1, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("grid", [schedules.uniform(1), schedules.uniform(5), schedules.sway(8), schedules.cosine(4),
                                  schedules.epss(6), torch.tensor([0.0, 0.1, 0.75, 1.0])])
@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_nfe_equals_model_calls(grid, method):
    model = Counting(lambda x, *, t, r=None, cond: torch.zeros_like(x))
    cond = {"tokens": torch.zeros(2, 3)}
    _, nfe = sample(model, torch.zeros(2, 3), grid, cond, method=method)
    assert nfe == model.calls == nfe_for(grid, method)
    # guidance batches conditional and unconditional rows into one call
    model.calls = 0
    _, nfe = sample(Guided(model, 2.0), torch.zeros(2, 3), grid, cond, method=method)
    assert nfe == model.calls


def test_guidance_formula():
    def model(x, *, t, r=None, cond):
        # conditional rows return 3, dropped rows return 1
        return torch.where(cond["drop"][:, None], torch.ones_like(x), 3 * torch.ones_like(x))

    cond = {"c": torch.zeros(2, 1)}
    for w in (0.0, 1.5, 2.0, 3.0):
        out = Guided(model, w)(torch.zeros(2, 4), t=torch.zeros(2), cond=cond)
        assert torch.allclose(out, torch.full((2, 4), 1 + w * 2.0))
        assert torch.allclose(out, guide(torch.full((2, 4), 3.0), torch.ones(2, 4), w))
    both = cat_cond_with_null(cond)
    assert both["drop"].tolist() == [False, False, True, True]


def test_student_jump_rule_uses_r():
    """Euler passes r = next grid point, so an exact average velocity lands exactly."""
    z_1 = torch.tensor([[2.0, -1.0]])
    # the average velocity of the straight path to z_1 from z at t over [t, r] is (z_1 - z) / (1 - t)
    u = lambda x, *, t, r, cond: (z_1 - x) / (1 - t[:, None])
    z_hat, nfe = sample(u, torch.zeros(1, 2), torch.tensor([0.0, 0.3, 1.0]), {"a": torch.zeros(1)})
    assert torch.allclose(z_hat, z_1) and nfe == 2


def test_schedules_strictly_increasing_0_to_1():
    grids = [schedules.uniform(n) for n in (1, 2, 3, 32)]
    grids += [schedules.sway(n, s) for n in (2, 5, 32) for s in (-1.0, -0.5, 0.0, 0.5)]
    grids += [schedules.cosine(n) for n in (1, 4, 16)] + [schedules.epss(n) for n in (5, 6, 7)]
    for g in grids:
        assert g[0] == 0 and g[-1] == 1 and (g[1:] > g[:-1]).all()
    assert schedules.epss(7).mul(32).tolist() == [0, 2, 4, 6, 8, 16, 24, 32]
    # sway with s < 0 puts steps near noise
    assert schedules.sway(8, -1.0)[1] < schedules.uniform(8)[1]


def test_schedule_errors_and_json_round_trip(tmp_path):
    with pytest.raises(schedules.GridError, match="strictly increasing"):
        schedules.validate_grid([0.0, 0.5, 0.5, 1.0])
    with pytest.raises(schedules.GridError, match="start at 0"):
        schedules.validate_grid([0.1, 1.0])
    with pytest.raises(schedules.GridError, match="nfe in"):
        schedules.epss(4)
    with pytest.raises(schedules.GridError, match="unknown schedule"):
        schedules.make_grid("linear", 4)
    g = torch.tensor([0.0, 0.13, 0.6, 1.0], dtype=torch.float64)
    schedules.save_grid(tmp_path / "g.json", g, source="test")
    assert torch.equal(schedules.load_grid(tmp_path / "g.json"), g)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(schedules.GridError, match="bad.json"):
        schedules.load_grid(tmp_path / "bad.json")


@pytest.mark.parametrize("content, match", [
    ("{}", r"odd\.json: no 'time_grid' key \(keys: \[\]\)"),
    ('{"grid": [0, 1]}', r"odd\.json: no 'time_grid' key \(keys: \['grid'\]\)"),
    ('["0", "0.5", "1"]', r"odd\.json: expected a sequence of numbers, got \['0', '0.5', '1'\]"),
    ('{"time_grid": [0, [0.5], 1]}', r"odd\.json: expected a sequence of numbers"),
    ('{"time_grid": 0.5}', r"odd\.json: the time grid must be a JSON list of numbers, got 0.5"),
    ("[0, 0.5]", r"odd\.json: must start at 0 and end at 1"),
])
def test_load_grid_errors_name_the_file(tmp_path, content, match):
    (tmp_path / "odd.json").write_text(content)
    with pytest.raises(schedules.GridError, match=match):
        schedules.load_grid(tmp_path / "odd.json")
