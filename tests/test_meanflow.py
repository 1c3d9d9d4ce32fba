"""MeanFlow: JVP vs finite differences, the sign of the identity, r = t, a loss that drops."""
import pytest
import torch

from imf.flow import objectives
from imf.flow.objectives import MeanFlowConfig, meanflow_loss, meanflow_target
from imf.models import student_from_teacher
from tests.helpers import jvp_and_finite_differences, make_cond, tiny_model


def test_jvp_matches_finite_differences_float64():
    model = student_from_teacher(tiny_model(0)).double()
    with torch.no_grad():
        model.time_mix.weight.add_(0.1 * torch.randn_like(model.time_mix.weight))
    b, n = 2, 7
    cond = make_cond(b, n, n_mels=8)
    cond["prompt"] = cond["prompt"].double()
    dudt, fd = jvp_and_finite_differences(model, cond, 8, b, n)
    assert torch.allclose(dudt, fd, rtol=1e-5, atol=1e-7)


def test_r_equals_t_target_is_instantaneous_velocity():
    model = student_from_teacher(tiny_model(1))
    cond = make_cond(3, 5, n_mels=8)
    z, v, t = torch.randn(3, 8, 5), torch.randn(3, 8, 5), torch.rand(3)
    _, u_tgt = meanflow_target(model, z, t, t, v, cond)
    assert torch.equal(u_tgt, v)


def test_sign_pinned_by_closed_form_average_velocity():
    """For the linear field v(z, s) = a z, the flow is z(s) = z_t e^{a (s - t)} and the exact
    average velocity is u(z, t, r) = z (e^{a (r - t)} - 1) / (r - t). It must satisfy
    u = v + (r - t) du/dt along the flow — the sign our convention fixes."""
    a = 0.8

    def u_exact(z, *, t, r, cond):
        h = (r - t)[:, None]
        return z * torch.expm1(a * h) / h

    z = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    t = torch.tensor([0.1, 0.3], dtype=torch.float64)
    r = torch.tensor([0.6, 0.9], dtype=torch.float64)
    v = a * z  # the instantaneous velocity at (z, t)
    u, u_tgt = meanflow_target(u_exact, z, t, r, v, {})
    assert torch.allclose(u_tgt, u, atol=1e-12)
    # the published (reversed-time) sign would be wrong here
    dudt = (u_tgt - v) / (r - t)[:, None]
    assert not torch.allclose(v - (r - t)[:, None] * dudt, u, atol=1e-3)


def test_tiny_meanflow_training_lowers_loss():
    """The self-bootstrapped target moves with the model, so the check is a held-out loss on
    fixed noise draws before and after 100 steps (the default adaptive weighting)."""
    torch.manual_seed(0)
    model = student_from_teacher(tiny_model(0, randomize=False))
    b, n = 8, 10
    cond = make_cond(b, n, n_mels=8)
    z_1 = torch.sin(torch.arange(8.0)[None, :, None] + torch.arange(n)[None, None] / 3).expand(b, 8, n).clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = MeanFlowConfig()

    def held_out():
        return sum(meanflow_loss(model, z_1, cond, None, cfg, torch.Generator().manual_seed(100 + k))[1]["mse"]
                   for k in range(4))

    before = held_out()
    for s in range(100):
        loss, _ = meanflow_loss(model, z_1, cond, None, cfg, torch.Generator().manual_seed(s))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out() < 0.85 * before


def _spy_on_target(monkeypatch) -> dict:
    """Capture the (u, u_tgt) that meanflow_loss weights (u keeps its gradient)."""
    seen = {}
    real = objectives.meanflow_target

    def spy(*args, **kw):
        u, u_tgt = real(*args, **kw)
        u.retain_grad()
        seen.update(u=u, u_tgt=u_tgt)
        return u, u_tgt

    monkeypatch.setattr(objectives, "meanflow_target", spy)
    return seen


@pytest.mark.parametrize("p, c, cfg_scale", [(1.0, 1e-3, 1.0), (1.0, 1e-3, 2.0), (0.5, 1e-2, 1.0), (0.0, 1e-3, 1.0)])
def test_adaptive_weight_is_the_papers_form_with_a_stop_gradient(monkeypatch, p, c, cfg_scale):
    """loss = mean_b sg(w_b) ||D_b||^2 with w_b = 1 / (||D_b||^2 + c)^p, D = u - u_tgt and the squared
    norm SUMMED over the sample's valid elements (MeanFlow paper and official code), recomputed
    here from the captured u and u_tgt; the weight carries no gradient: d loss / d u = 2 w D / B."""
    model = student_from_teacher(tiny_model(0))
    b, n, ch = 4, 6, 8
    cond = make_cond(b, n, n_mels=ch)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    cond["mask"] = mask
    seen = _spy_on_target(monkeypatch)
    cfg = MeanFlowConfig(adaptive_p=p, adaptive_c=c, cfg_scale=cfg_scale)
    loss, logs = meanflow_loss(model, torch.randn(b, ch, n), cond, mask, cfg, torch.Generator().manual_seed(0))
    u, u_tgt = seen["u"], seen["u_tgt"]
    d = (u - u_tgt).detach() * mask[:, None]  # padded frames do not count
    sq = d.pow(2).sum((1, 2))
    w = 1.0 / (sq + c) ** p
    assert torch.allclose(loss, (w * sq).mean(), rtol=1e-6, atol=0)
    loss.backward()
    assert torch.allclose(u.grad, 2 * w[:, None, None] * d / b, rtol=1e-5, atol=1e-12)
    assert logs["mse"] == pytest.approx((sq / (mask.sum(1) * ch)).mean().item(), rel=1e-6)
    assert logs["loss"] == loss.item()

