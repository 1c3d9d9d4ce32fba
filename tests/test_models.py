"""The token2mel backbone and IntMeanFlow's init strategy."""
import pytest
import torch

from imf.core.config import ConfigError
from imf.models import Token2Mel, Token2MelConfig, freeze, student_from_teacher
from imf.core.checkpoints import build_model
from tests.helpers import make_cond, tiny_model


def test_shapes_and_padding_is_ignored():
    m = tiny_model()
    b, n = 3, 17
    cond = make_cond(b, n, n_mels=8)
    x = torch.randn(b, 8, n)
    v = m(x, t=torch.rand(b), cond=cond)
    assert v.shape == (b, 8, n)
    # padded frames produce zeros and do not change valid frames
    cond2 = dict(cond, mask=cond["mask"].clone())
    cond2["mask"][:, 12:] = False
    x2 = x.clone()
    x2[:, :, 12:] = 100.0
    v2 = m(x2, t=torch.zeros(b) + 0.3, cond=cond2)
    v3 = m(torch.cat([x[:, :, :12], torch.zeros(b, 8, 5)], -1), t=torch.zeros(b) + 0.3, cond=cond2)
    assert torch.all(v2[:, :, 12:] == 0)
    assert torch.allclose(v2, v3, atol=1e-5)


def test_wrong_token_shape_is_named():
    m = tiny_model()
    cond = make_cond(2, 10, n_mels=8)
    with pytest.raises(ValueError, match="tokens"):
        m(torch.randn(2, 8, 11), t=torch.rand(2), cond=cond)


@pytest.mark.parametrize("seed", [0, 1])
def test_fresh_student_equals_teacher_bit_for_bit(seed):
    teacher = tiny_model(seed)
    student = student_from_teacher(teacher)
    b, n = 4, 13
    cond = make_cond(b, n, n_mels=8, seed=seed)
    x, t = torch.randn(b, 8, n), torch.rand(b)
    v = teacher(x, t=t, cond=cond)
    for r in (None, t, torch.rand(b), torch.ones(b), torch.zeros(b)):
        assert torch.equal(student(x, t=t, r=r, cond=cond), v)
    # also with dropped conditioning (guidance rows)
    cond["drop"] = torch.tensor([True, False, True, False])
    assert torch.equal(student(x, t=t, r=torch.rand(b), cond=cond), teacher(x, t=t, cond=cond))


def test_student_uses_teacher_time_modules_and_r_matters_after_training():
    teacher = tiny_model()
    student = student_from_teacher(teacher)
    assert student.config.mean_flow and student.time_mix.bias is None
    d = student.config.dim
    assert torch.equal(student.time_mix.weight, torch.cat([torch.eye(d), torch.zeros(d, d)], 1))
    # r shares the time embedding (no new module besides the mix)
    new = set(student.state_dict()) - set(teacher.state_dict())
    assert new == {"time_mix.weight"}
    with torch.no_grad():
        student.time_mix.weight[:, d:] += 0.1
    cond = make_cond(2, 9, n_mels=8)
    x, t = torch.randn(2, 8, 9), torch.rand(2)
    assert not torch.equal(student(x, t=t, r=t + 0.1, cond=cond), student(x, t=t, r=t + 0.5, cond=cond))


def test_student_from_student_and_freeze():
    s = student_from_teacher(tiny_model())
    with pytest.raises(ValueError, match="already"):
        student_from_teacher(s)
    trainable = freeze(s, "encoder")
    names = {n for n, p in s.named_parameters() if p.requires_grad}
    assert "time_mix.weight" in names and "blocks.0.pw1.weight" in names
    assert not any(n.startswith(("token_embed", "text_encoder", "prompt_encoder")) for n in names)
    assert len(trainable) == len(names)
    assert len(freeze(s, "none")) == len(list(s.parameters()))
    with pytest.raises(ValueError, match="freeze"):
        freeze(s, "all")


def test_config_validation_names_parameter():
    with pytest.raises(ConfigError, match="'dim'"):
        Token2MelConfig.from_dict({"dim": "192"})
    with pytest.raises(ConfigError, match="unknown parameter.*'depth'"):
        Token2MelConfig.from_dict({"depth": 4})
    with pytest.raises(ConfigError, match="'n_layers'"):
        Token2MelConfig.from_dict({"n_layers": 0})
    m = build_model("Token2Mel", Token2MelConfig(n_tokens=10, dim=16, n_layers=1).to_dict())
    assert isinstance(m, Token2Mel)


def test_cached_condition_encodings_give_identical_output():
    from imf.flow.solvers import Guided
    m = tiny_model(3)
    cond = make_cond(4, 11, n_mels=8)
    x, t = torch.randn(4, 8, 11), torch.rand(4)
    cached = m.encode_cond(cond)
    assert torch.equal(m(x, t=t, cond=cached), m(x, t=t, cond=cond))
    drop = torch.tensor([True, False, False, True])
    assert torch.equal(m(x, t=t, cond={**cached, "drop": drop}), m(x, t=t, cond={**cond, "drop": drop}))
    g = Guided(m, 2.5)
    assert torch.equal(g(x, t=t, cond=cached), g(x, t=t, cond=cond))
    idx = torch.tensor([2, 0])
    sub = {k: v[idx] for k, v in cached.items()}
    # rows selected after caching: the encoders ran at another batch size, so equal up to rounding
    assert torch.allclose(m(x[idx], t=t[idx], cond=sub), m(x[idx], t=t[idx], cond={k: v[idx] for k, v in cond.items()}),
                          atol=1e-6)
