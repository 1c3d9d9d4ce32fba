"""The token2mel backbone and IntMeanFlow's init strategy."""
import pytest
import torch

from imf.core.config import ConfigError
from imf.models import Token2Mel, Token2MelConfig, freeze, student_from_teacher
from imf.models.checks import InputError, disabled
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
    for r in (None, t, t + torch.rand(b) * (1 - t), torch.ones(b)):  # any r in [t, 1]
        assert torch.equal(student(x, t=t, r=r, cond=cond), v)
    # also with dropped conditioning (guidance rows)
    cond["drop"] = torch.tensor([True, False, True, False])
    assert torch.equal(student(x, t=t, r=t + torch.rand(b) * (1 - t), cond=cond), teacher(x, t=t, cond=cond))


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
    x, t = torch.randn(2, 8, 9), 0.5 * torch.rand(2)
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


# --- inputs are checked at the entry point, errors name the tensor -----------------------------

def _inputs(b=4, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, n, generator=g), torch.rand(b, generator=g), make_cond(b, n, n_mels=8, seed=seed)


def _bad_x(x, t, r, c):
    x[1, 2, 3] = float("nan")
    x[0, 0, :2] = float("inf")


def _bad_prompt(x, t, r, c):
    c["prompt"][2, 0, :5] = float("nan")


def _set(name, value):
    def f(x, t, r, c):
        c[name] = value(c)
    return f


BAD = {  # case -> (edit of the inputs, the message)
    "nan x": (_bad_x, r"^x: 3 non-finite values \(1 NaN, 2 inf\) of 320$"),
    "nan prompt": (_bad_prompt, r"^cond\['prompt'\]: 5 non-finite values"),
    "t > 1": (lambda x, t, r, c: t.__setitem__(0, 3.0), r"^t: must lie in \[0, 1\], got min .*, max 3$"),
    "t < 0": (lambda x, t, r, c: t.__setitem__(2, -0.5), r"^t: must lie in \[0, 1\], got min -0.5"),
    "nan t": (lambda x, t, r, c: t.__setitem__(1, float("nan")), r"^t: 1 non-finite value "),
    "r < t": (lambda x, t, r, c: r.copy_(t - 0.01), r"^r: must be >= t .* in row 0$"),
    "r > 1": (lambda x, t, r, c: r.__setitem__(3, 1.5), r"^r: must lie in \[t, 1\], got max 1.5$"),
    "token id": (lambda x, t, r, c: c["tokens"].__setitem__((1, 4), 57),
                 r"^cond\['tokens'\]: id 57 out of range \[0, 20\)"),
    "negative id": (lambda x, t, r, c: c["tokens"].__setitem__((0, 0), -1), r"^cond\['tokens'\]: id -1 out of range"),
    "mask shape": (_set("mask", lambda c: c["mask"][:, :-1]), r"^cond\['mask'\]: expected shape \(B, T\) = \(4, 10\)"),
    "float tokens": (_set("tokens", lambda c: c["tokens"].float()), r"^cond\['tokens'\]: expected integer ids"),
    "prompt channels": (_set("prompt", lambda c: c["prompt"][:, :5]), r"^cond\['prompt'\]: expected shape \(B, 8, Tp\)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_naming_the_tensor(case):
    student = student_from_teacher(tiny_model())
    x, t, cond = _inputs()
    r = torch.maximum(t, torch.full_like(t, 0.9))
    student(x, t=t, r=r, cond=cond)  # the unedited inputs are fine
    edit, match = BAD[case]
    edit(x, t, r, cond)
    with pytest.raises(InputError, match=match):
        student(x, t=t, r=r, cond=cond)
    if "r" not in case.split():
        with pytest.raises(InputError, match=match):  # the teacher checks the same (it ignores r)
            tiny_model()(x, t=t, r=r, cond=cond)


@pytest.mark.parametrize("shape, match", [((4, 1), r"^t: expected shape \(B,\) = \(4,\), got \(4, 1\)$"),
                                          ((), r"^t: expected shape \(B,\) = \(4,\), got \(\)$"),
                                          ((3,), r"^t: expected shape \(B,\) = \(4,\), got \(3,\)$")])
def test_wrongly_shaped_t_is_named(shape, match):
    x, _, cond = _inputs()
    with pytest.raises(InputError, match=match):
        tiny_model()(x, t=torch.full(shape, 0.5), cond=cond)
    with pytest.raises(InputError, match=r"^r: expected shape"):
        student_from_teacher(tiny_model())(x, t=torch.full((4,), 0.5), r=torch.full(shape, 0.5), cond=cond)
    with pytest.raises(InputError, match=r"^x: expected shape \(B, 8, T\), got \(4, 9, 10\)"):
        tiny_model()(torch.randn(4, 9, 10), t=torch.rand(4), cond=cond)


def test_teacher_ignores_r_and_cached_encodings_are_checked():
    teacher = tiny_model()
    x, t, cond = _inputs()
    assert torch.equal(teacher(x, t=t, r=t - 1, cond=cond), teacher(x, t=t, cond=cond))  # r means nothing here
    cond["tokens"][0, 0] = 20
    with pytest.raises(InputError, match=r"cond\['tokens'\]: id 20 out of range \[0, 20\)"):
        teacher.encode_cond(cond)


def test_float64_teacher_gives_float64_student_equal_bit_for_bit():
    teacher = tiny_model(2).double()
    student = student_from_teacher(teacher)
    assert all(p.dtype == torch.float64 for p in student.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k  # not rounded through float32
    x, t, cond = _inputs()
    x, cond["prompt"] = x.double(), cond["prompt"].double()
    t = t.double()
    v = teacher(x, t=t, cond=cond)
    assert v.dtype == torch.float64
    assert torch.equal(student(x, t=t, r=t + (1 - t) / 3, cond=cond), v)


def test_huge_finite_inputs_pass_and_the_samplers_and_dit_are_covered():
    from imf.flow.schedules import uniform
    from imf.flow.solvers import sample
    from imf.models import DiT1D, DiTConfig

    m = tiny_model()
    x, t, cond = _inputs()
    x[:, :, :2] = 3e38  # the sum the cheap check reduces overflows, yet nothing is wrong
    assert m(x, t=t, cond=cond).shape == x.shape
    x[0, 0, 5] = float("nan")  # NaN noise into a sampler
    with pytest.raises(InputError, match=r"^x: 1 non-finite value \(1 NaN\)"):
        sample(student_from_teacher(m), x, uniform(2), cond)
    dit = DiT1D(DiTConfig(latent_dim=8, n_tokens=20, dim=16, n_layers=1, n_heads=2, token_layers=1, mean_flow=True))
    x, t, cond = _inputs()
    with pytest.raises(InputError, match=r"^r: must be >= t"):
        dit(x, t=t, r=t / 2, cond=cond)
    cond["prompt"][0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=r"^cond\['prompt'\]: 1 non-finite value \(1 inf\)"):
        dit(x, t=t, cond=cond)
    with disabled():  # to time the bare network: the inf goes through unnoticed
        assert not torch.isfinite(dit(x, t=t, cond=cond)).all()
    with pytest.raises(InputError):
        dit(x, t=t, cond=cond)


@pytest.mark.parametrize("cond_dim", [None, 24])
def test_convnext_block_channels_last_equals_the_conv1d_form(cond_dim):
    """The block's channels-last GEMM path (its speed-up) computes exactly the (B, C, T) Conv1d block:
    dwconv -> LayerNorm over C -> modulation -> 1x1 conv -> GELU -> 1x1 conv -> gate -> residual -> mask."""
    from imf.models.layers import ConvNeXtBlock
    torch.manual_seed(0)
    blk = ConvNeXtBlock(16, 7, 4, cond_dim=cond_dim).double()
    for p in blk.parameters():  # the adaLN projection is zero at init: make every path non-trivial
        torch.nn.init.normal_(p, std=0.3)
    x, c = torch.randn(3, 16, 11, dtype=torch.float64), torch.randn(3, 24, dtype=torch.float64)
    mask = (torch.arange(11)[None, None] < torch.tensor([11, 7, 3])[:, None, None]).double()

    h = blk.norm(blk.dwconv(x))  # the reference: every layer in (B, C, T) with the modules' own Conv1d calls
    if cond_dim is not None:
        shift, scale, gate = blk.ada(c)[:, :, None].chunk(3, dim=1)
        h = h * (1 + scale) + shift
    h = blk.pw2(torch.nn.functional.gelu(blk.pw1(h)))
    if cond_dim is not None:
        h = h * gate
    want = (x + h) * mask
    got = blk(x, c if cond_dim is not None else None, mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
