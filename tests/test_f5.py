"""F5-TTS as a foreign backbone, checked against the REAL ``f5_tts`` package (the ``f5`` extra).

Tiny random DiTs are built with F5's own class; every reference number comes from F5's own code
(``DiT.forward``, ``CFM.sample``, ``get_epss_timesteps``, ``load_checkpoint``), never from a
re-implementation. Nothing downloads.
"""
from __future__ import annotations

import copy

import pytest
import torch

f5_model = pytest.importorskip("f5_tts.model", reason="F5-TTS not installed: pip install -e '.[f5]'")
from f5_tts.model import CFM  # noqa: E402
from f5_tts.model import utils as f5_utils  # noqa: E402

from imf.core.checkpoints import load_model  # noqa: E402
from imf.flow import schedules  # noqa: E402
from imf.flow.objectives import IMFConfig, MeanFlowConfig, intmeanflow_loss, meanflow_loss  # noqa: E402
from imf.flow.solvers import Guided, sample  # noqa: E402
from imf.models.backbones import (F5Backbone, F5Config, dit_state_dict_of, load_f5_weights, make_student,  # noqa: E402
                                  read_f5_state_dict)
from imf.models.student import student_from_teacher  # noqa: E402

C, N, NT, V = 8, 24, 10, 12  # mel bins, frames, text length, vocab size
TINY = dict(model_name="tiny", dim=32, depth=2, heads=2, dim_head=16, ff_mult=2, mel_dim=C, text_num_embeds=V,
            text_dim=16, conv_layers=1)


def tiny_f5(seed: int = 0, dtype=torch.float64, **kw) -> F5Backbone:
    """A tiny F5 DiT with every weight perturbed (F5 zero-initialises its output layers)."""
    torch.manual_seed(seed)
    m = F5Backbone(F5Config(**{**TINY, **kw}))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.to(dtype).eval()


def f5_cond(b: int = 3, dtype=torch.float64, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, V, (b, NT), generator=g)
    text[0, 6:] = -1  # batch padding, as F5's list_str_to_idx pads
    lengths = torch.tensor([N, N - 5, N - 2][:b])
    mask = torch.arange(N)[None] < lengths[:, None]
    cond_mel = torch.randn(b, C, N, generator=g, dtype=dtype) * (torch.arange(N) < 9).to(dtype)  # prompt: 9 frames
    return {"cond_mel": cond_mel, "text": text, "mask": mask}


def reference(m: F5Backbone, x, t, cond, audio: bool = False, text: bool = False):
    """F5's own DiT.forward in its layout (B, N, mel), transposed back."""
    return m.net(x=x.transpose(1, 2), cond=cond["cond_mel"].transpose(1, 2), text=cond["text"], time=t,
                 mask=cond.get("mask"), drop_audio_cond=audio, drop_text=text).transpose(1, 2)


# -- 1. adapter == F5's DiT.forward -----------------------------------------------------------
@pytest.mark.parametrize("flags, audio, text", [({}, False, False), ({"drop_audio": True}, True, False),
                                                ({"drop": True}, True, True), ({"drop_text": True}, False, True)])
def test_adapter_equals_f5_forward(flags, audio, text):
    m = tiny_f5()
    x, t = torch.randn(3, C, N, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    cond = f5_cond()
    ours = m(x, t=t, cond={**cond, **{k: torch.full((3,), v) for k, v in flags.items()}})
    ref = reference(m, x, t, cond, audio, text)
    assert ours.shape == x.shape and ref.abs().mean() > 1e-3  # a non-trivial network
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def test_per_row_drop_equals_f5_per_row():
    """Rows with different drop flags in one batch each equal F5's forward with that flag."""
    m = tiny_f5()
    x, t, cond = torch.randn(3, C, N, dtype=torch.float64), torch.rand(3, dtype=torch.float64), f5_cond()
    out = m(x, t=t, cond={**cond, "drop": torch.tensor([False, True, False]),
                          "drop_audio": torch.tensor([False, False, True])})
    for i, (a, tx) in enumerate([(False, False), (True, True), (True, False)]):
        torch.testing.assert_close(out[i], reference(m, x, t, cond, a, tx)[i], rtol=0, atol=1e-10)
    # a subset of short rows (F5 alone would fail: its text embedding is sized by the longest row)
    sub = m(x[1:], t=t[1:], cond={k: v[1:] for k, v in cond.items()})
    torch.testing.assert_close(sub, reference(m, x, t, cond)[1:], rtol=0, atol=1e-10)
    # and the flags matter (the test can fail)
    assert (out[1] - m(x, t=t, cond=cond)[1]).abs().max() > 1e-4


def test_state_dict_is_f5s_own():
    m = tiny_f5()
    assert list(m.state_dict()) == list(m.net.state_dict())
    fresh = f5_model.DiT(**m.config.dit_kwargs()).double()
    fresh.load_state_dict(m.state_dict())  # F5's own class takes it as it is
    s = make_student(m)
    assert set(s.state_dict()) == set(m.net.state_dict()) | {"time_mix.weight"}


# -- 2. the student -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fresh_student_equals_teacher_bit_for_bit(dtype):
    teacher = tiny_f5(dtype=dtype)
    student = make_student(teacher)
    assert next(student.parameters()).dtype == dtype and student.time_mix.weight.shape == (32, 64)
    x, t, cond = torch.randn(3, C, N, dtype=dtype), torch.rand(3, dtype=dtype), f5_cond(dtype=dtype)
    v = teacher(x, t=t, cond=cond)
    for seed in range(3):
        r = t + (1 - t) * torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        assert torch.equal(student(x, t=t, r=r, cond=cond), v)
    assert torch.equal(student(x, t=t, cond=dict(cond, drop=torch.tensor([1, 0, 1]).bool())),
                       teacher(x, t=t, cond=dict(cond, drop=torch.tensor([1, 0, 1]).bool())))


def test_student_from_teacher_of_imf_models_works_unchanged():
    teacher = tiny_f5(dtype=torch.float32)
    student = student_from_teacher(teacher).eval()
    x, t, cond = torch.randn(2, C, N), torch.rand(2), f5_cond(2, torch.float32)
    assert torch.equal(student(x, t=t, r=torch.ones(2), cond=cond), teacher(x, t=t, cond=cond))


def test_student_reads_r_through_f5s_time_embedding():
    """Once W moves, u depends on r; r=None means r=t; an EMA copy (deepcopy) has its own W."""
    student = make_student(tiny_f5())
    with torch.no_grad():
        student.time_mix.weight.add_(0.2 * torch.randn_like(student.time_mix.weight))
    x, t, cond = torch.randn(2, C, N, dtype=torch.float64), torch.rand(2, dtype=torch.float64) * 0.5, f5_cond(2)
    u1 = student(x, t=t, r=t + 0.1, cond=cond)
    assert (u1 - student(x, t=t, r=t + 0.4, cond=cond)).abs().max() > 1e-4
    assert torch.equal(student(x, t=t, cond=cond), student(x, t=t, r=t, cond=cond))
    ema = copy.deepcopy(student)
    with torch.no_grad():
        ema.time_mix.weight.zero_()
    assert torch.equal(student(x, t=t, r=t + 0.1, cond=cond), u1)
    assert not torch.equal(ema(x, t=t, r=t + 0.1, cond=cond), u1)


def test_solvers_and_objectives_run_on_the_f5_student():
    teacher = tiny_f5(dtype=torch.float32)
    student = make_student(teacher).train()
    cond, z_1 = f5_cond(2, torch.float32), torch.randn(2, C, N)
    x, nfe = sample(Guided(teacher, 3.0), torch.randn(2, C, N), schedules.epss_f5(5), cond)
    assert nfe == 5 and torch.isfinite(x).all()
    loss, logs = intmeanflow_loss(student, Guided(teacher, 3.0), z_1, cond, cond["mask"], IMFConfig(teacher_nfe=4),
                                  torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and student.time_mix.weight.grad.abs().sum() > 0
    student.zero_grad()
    loss, _ = meanflow_loss(student, z_1, cond, cond["mask"], MeanFlowConfig(), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and student.time_mix.weight.grad is not None


# -- 3. checkpoints -----------------------------------------------------------------------------
def _write_f5_files(m: F5Backbone, tmp_path):
    """The two formats users have, written the way F5-TTS writes them (CFM keys: ``transformer.``)."""
    from safetensors.torch import save_file

    sd = {f"transformer.{k}": v.float().clone() for k, v in m.net.state_dict().items()}
    noisy = {k: v + 1.0 for k, v in sd.items()}  # online weights differ from the EMA
    pt = tmp_path / "model_last.pt"
    torch.save({"model_state_dict": noisy, "optimizer_state_dict": {}, "update": 7,
                "ema_model_state_dict": {"initted": torch.tensor(True), "step": torch.tensor(7),
                                         **{f"ema_model.{k}": v for k, v in sd.items()}}}, pt)
    st = tmp_path / "model_1250000.safetensors"
    save_file({f"ema_model.{k}": v.contiguous() for k, v in sd.items()}, str(st))
    return pt, st, sd


def test_trainer_format_and_safetensors_load_to_the_same_weights(tmp_path):
    src = tiny_f5(dtype=torch.float32)
    pt, st, sd = _write_f5_files(src, tmp_path)
    a, b = F5Backbone(src.config), F5Backbone(src.config)
    load_f5_weights(a, pt)
    load_f5_weights(b, st)
    for k, v in src.net.state_dict().items():
        assert torch.equal(a.net.state_dict()[k], v) and torch.equal(b.net.state_dict()[k], v), k
    online = read_f5_state_dict(pt, ema=False)
    assert torch.equal(online["proj_out.weight"], sd["transformer.proj_out.weight"] + 1.0)
    # F5-TTS's own loader reads the same files to the same weights
    from f5_tts.infer.utils_infer import load_checkpoint

    for path in (pt, st):
        cfm = CFM(transformer=f5_model.DiT(**src.config.dit_kwargs()), num_channels=C)
        cfm = load_checkpoint(cfm, str(path), "cpu", use_ema=True)
        assert all(torch.equal(cfm.transformer.state_dict()[k], v) for k, v in src.net.state_dict().items())


def test_wrong_or_missing_keys_are_errors_naming_them(tmp_path):
    from safetensors.torch import save_file

    src = tiny_f5(dtype=torch.float32)
    sd = {f"transformer.{k}": v.float().contiguous() for k, v in src.net.state_dict().items()}
    bad = dict(sd)
    bad["transformer.proj_out.wieght"] = bad.pop("transformer.proj_out.weight")
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(KeyError, match=r"proj_out\.weight.*proj_out\.wieght"):
        load_f5_weights(F5Backbone(src.config), tmp_path / "bad.safetensors")
    torch.save({"model_state_dict": sd}, tmp_path / "no_ema.pt")
    with pytest.raises(KeyError, match="ema_model_state_dict"):
        load_f5_weights(F5Backbone(src.config), tmp_path / "no_ema.pt")
    with pytest.raises(ValueError, match=r"time_embed\.time_mlp\.0\.weight"):
        load_f5_weights(F5Backbone(src.config.replace(dim=48)), tmp_path / "no_ema.pt", ema=False)


def test_student_checkpoint_loads_with_our_loader_and_f5s_dit(tmp_path):
    student = make_student(tiny_f5(dtype=torch.float32))
    with torch.no_grad():
        student.time_mix.weight.add_(0.1)
    state = {"model": student.state_dict(), "ema": student.state_dict(), "model_class": "F5Backbone",
             "model_config": student.config.to_dict(), "step": 1}
    torch.save(state, tmp_path / "last.pt")
    loaded = load_model(tmp_path / "last.pt")
    x, t, cond = torch.randn(2, C, N), torch.rand(2), f5_cond(2, torch.float32)
    assert torch.equal(loaded(x, t=t, r=t + 0.2, cond=cond), student.eval()(x, t=t, r=t + 0.2, cond=cond))
    f5_model.DiT(**student.config.dit_kwargs()).load_state_dict(dit_state_dict_of(state["ema"]))  # strict


# -- 4. schedules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("nfe", sorted(schedules.F5_EPSS))
def test_epss_raw_equals_f5(nfe):
    ref = f5_utils.get_epss_timesteps(nfe, device="cpu", dtype=torch.float64)
    assert torch.equal(schedules.epss_raw(nfe), ref)
    if nfe in (5, 6, 7):
        assert torch.equal(schedules.epss(nfe), ref)  # the existing epss keeps its outputs


def _f5_sampler_grid(nfe: int, sway: float | None, monkeypatch) -> torch.Tensor:
    """The time grid F5-TTS's CFM.sample integrates on (odeint intercepted)."""
    import f5_tts.model.cfm as cfm_mod

    seen = {}

    def fake_odeint(fn, y0, t, **kw):
        seen["t"] = t.clone()
        return torch.stack([y0, y0])

    monkeypatch.setattr(cfm_mod, "odeint", fake_odeint)
    m = tiny_f5()
    cfm = CFM(transformer=m.net, num_channels=C).double()
    cfm.sample(torch.zeros(1, 4, C, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.long), 8, steps=nfe,
               cfg_strength=2.0, sway_sampling_coef=sway)
    return seen["t"]


@pytest.mark.parametrize("nfe", sorted(schedules.F5_EPSS) + [3, 32])
def test_epss_f5_equals_f5s_sampler_grid(nfe, monkeypatch):
    torch.testing.assert_close(schedules.epss_f5(nfe), _f5_sampler_grid(nfe, -1.0, monkeypatch), rtol=0, atol=1e-15)
    torch.testing.assert_close(schedules.epss_f5(nfe, sway=None), _f5_sampler_grid(nfe, None, monkeypatch),
                               rtol=0, atol=1e-15)


def test_f5_real_seven_step_grid():
    want = [0, .0048, .0192, .0431, .0761, .2929, .6173, 1]
    torch.testing.assert_close(schedules.epss_f5(7), torch.tensor(want, dtype=torch.float64), rtol=0, atol=5e-5)


# -- 5. guided sampling == F5's CFM.sample --------------------------------------------------------
@pytest.mark.parametrize("steps, s, sway", [(7, 2.0, -1.0), (16, 2.0, -1.0), (32, 2.0, -1.0), (5, 0.0, None)])
def test_guided_sample_equals_f5_cfm_sample(steps, s, sway):
    m = tiny_f5()
    cfm = CFM(transformer=m.net, num_channels=C).double()
    g = torch.Generator().manual_seed(3)
    b, n_p, dur = 2, 7, N
    prompt = torch.randn(b, n_p, C, generator=g, dtype=torch.float64)  # F5 layout (B, N, mel)
    lens = torch.tensor([n_p, 5])
    text = torch.randint(0, V, (b, NT), generator=g)
    text[1, 7:] = -1
    duration = torch.tensor([dur, dur - 4])
    out, traj = cfm.sample(prompt, text, duration, lens=lens, steps=steps, cfg_strength=s, sway_sampling_coef=sway,
                           seed=11)
    # the same condition, our layout: the prompt frames (per row), zeros elsewhere; F5's frame mask
    cond_mel = torch.zeros(b, C, dur, dtype=torch.float64)
    for i in range(b):
        cond_mel[i, :, : lens[i]] = prompt[i, : lens[i]].T
    cond = {"cond_mel": cond_mel, "text": text, "mask": torch.arange(dur)[None] < duration[:, None]}
    x_0 = traj[0].transpose(1, 2)
    ours, nfe = sample(Guided(m, s + 1.0), x_0, schedules.epss_f5(steps, sway=sway), cond)
    assert nfe == steps
    torch.testing.assert_close(ours, traj[-1].transpose(1, 2), rtol=0, atol=1e-10)
    kept = torch.where(cond["cond_mel"] != 0, cond["cond_mel"], ours)  # F5 pastes the prompt back
    torch.testing.assert_close(kept, out.transpose(1, 2), rtol=0, atol=1e-10)


def test_freeze_encoder_keeps_f5s_text_encoder():
    from imf.models.student import freeze

    student = make_student(tiny_f5(dtype=torch.float32))
    params = freeze(student, "encoder")
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in student.named_parameters() if n.startswith("net.text_embed.")} and frozen
    assert any(p is student.time_mix.weight for p in params)
