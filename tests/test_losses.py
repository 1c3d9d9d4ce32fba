"""IntMeanFlow and CFM objectives: targets against closed forms, cost, and a loss that drops."""
import pytest
import torch

from imf.flow.objectives import (CFMConfig, IMFConfig, cfm_loss, intmeanflow_loss, rollout_average_velocity,
                        sample_intervals, substep_counts)
from imf.models import student_from_teacher
from imf.flow.solvers import Guided
from tests.helpers import Counting, make_cond, tiny_model


def test_interval_sampling_fractions_and_order():
    cfg = IMFConfig(p_instant=0.3, p_full=0.2)
    t, r = sample_intervals(20000, cfg, torch.Generator().manual_seed(0))
    assert (t <= r).all() and (t >= 0).all() and (r <= 1).all()
    assert abs((t == r).float().mean() - 0.3) < 0.02
    assert abs(((t == 0) & (r == 1)).float().mean() - 0.2) < 0.02


def test_substep_counts():
    cfg = IMFConfig(teacher_nfe=16)
    t = torch.tensor([0.0, 0.5, 0.2, 0.3])
    r = torch.tensor([1.0, 0.5, 0.25, 0.3 + 3 / 16])
    assert substep_counts(t, r, cfg).tolist() == [16, 1, 1, 3]
    assert substep_counts(t, r, IMFConfig(fixed_substeps=4)).tolist() == [4, 4, 4, 4]


def test_instant_target_is_guided_teacher_velocity():
    teacher = Guided(tiny_model(0), 2.0)
    b, n = 3, 11
    cond = make_cond(b, n, n_mels=8)
    z, t = torch.randn(b, 8, n), torch.rand(b)
    u, rows = rollout_average_velocity(teacher, z, t, t, cond, substep_counts(t, t, IMFConfig()))
    assert torch.allclose(u, teacher(z, t=t, cond=cond), atol=1e-6)
    assert rows == b


def test_one_substep_target_is_guided_velocity_at_t():
    teacher = Guided(tiny_model(1), 2.5)
    b, n = 3, 9
    cond = make_cond(b, n, n_mels=8)
    z, t = torch.randn(b, 8, n), torch.rand(b) * 0.5
    r = t + 0.4
    u, _ = rollout_average_velocity(teacher, z, t, r, cond, substep_counts(t, r, IMFConfig(fixed_substeps=1)))
    assert torch.allclose(u, teacher(z, t=t, cond=cond), atol=1e-6)


def test_rollout_matches_closed_form_average_velocity():
    """For the straight-line field towards z_1, Euler is exact: u = (z_r - z_t) / (r - t)."""
    z_1 = torch.randn(4, 2, 5, dtype=torch.float64)
    field = lambda x, *, t, r=None, cond: (z_1[cond["i"]] - x) / (1 - t.view(-1, 1, 1))
    z_t = torch.randn(4, 2, 5, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.5, 0.1], dtype=torch.float64)
    r = torch.tensor([1.0, 0.7, 0.6, 0.9], dtype=torch.float64)
    u, _ = rollout_average_velocity(field, z_t, t, r, {"i": torch.arange(4)}, torch.tensor([5, 3, 1, 7]))
    # exact flow: z(s) = z_t + (s - t)/(1 - t) (z_1 - z_t); avg velocity = (z_1 - z_t)/(1 - t)
    expected = (z_1 - z_t) / (1 - t.view(-1, 1, 1))
    assert torch.allclose(u, expected, atol=1e-12)


def test_only_in_interval_samples_are_evaluated():
    counting = Counting(lambda x, *, t, r=None, cond: torch.ones_like(x))
    b = 5
    n = torch.tensor([1, 4, 2, 8, 1])
    t = torch.zeros(b)
    r = torch.full((b,), 0.5)
    z = torch.zeros(b, 3, 4)
    u, rows = rollout_average_velocity(counting, z, t, r, {"i": torch.arange(b)}, n)
    assert counting.rows == rows == int(n.sum()) < b * int(n.max())
    assert counting.calls == int(n.max())
    assert torch.allclose(u, torch.ones_like(u))


def test_cfm_loss_zero_for_exact_field():
    """A model returning z_1 - z_0 exactly has zero loss: recover z_0 from (z_t, t, z_1)."""
    z_1 = torch.randn(3, 4, 6)
    model = lambda x, *, t, r=None, cond: (z_1 - x) / (1 - t.view(-1, 1, 1))
    loss, _ = cfm_loss(model, z_1, {"c": torch.zeros(3, 1)}, None, CFMConfig(), torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8


def _train(loss_fn, model, steps=40, lr=3e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for s in range(steps):
        loss = loss_fn(torch.Generator().manual_seed(s % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tiny_distillation_lowers_loss():
    torch.manual_seed(0)
    teacher = tiny_model(0).requires_grad_(False)
    student = student_from_teacher(teacher)
    with torch.no_grad():  # start away from the teacher so there is something to learn
        for p in student.blocks.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b, n = 8, 12
    cond = make_cond(b, n, n_mels=8)
    z_1 = torch.randn(b, 8, n)
    cfg = IMFConfig(teacher_nfe=4)
    guided = Guided(teacher, 2.0)
    losses = _train(lambda g: intmeanflow_loss(student, guided, z_1, cond, None, cfg, g)[0], student)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_imf_config_rejects_bad_fractions():
    from imf.core.config import ConfigError
    with pytest.raises(ConfigError, match="p_instant"):
        IMFConfig.from_dict({"p_instant": 0.8, "p_full": 0.5})
