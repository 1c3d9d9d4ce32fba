"""Profiles are validated section by section: a typo, a wrong type or a bad value anywhere names ``section.key``."""
import copy

import pytest
import torch

from imf.core.config import ConfigError
from imf.runs.profiles import PROFILES, profile, profile_config, student_run, validate_profile
from imf.runs.sections_config import (MEANFLOW_RUNS, EvalConfig, O3SSection, ProfileConfig, Stage2Config,
                                      section_classes)

SECTIONS = sorted(section_classes())  # every (nested) section with a config class, e.g. "token2wav.vae"


def _get(sections: dict, path: str) -> dict:
    d = sections
    for part in path.split("."):
        d = d.setdefault(part, {})  # a section the profile leaves to its defaults (vocoder.loss) is created
    return d


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_validates_and_loads_unchanged(name):
    P = profile(name)
    assert P == PROFILES[name] and P is not PROFILES[name]  # the dicts as written (a deep copy), not defaults
    cfg = profile_config(name)
    assert isinstance(cfg, ProfileConfig)
    assert cfg.eval.n_utts == P["eval"]["n_utts"] and list(cfg.eval.teacher_nfes) == P["eval"]["teacher_nfes"]
    assert cfg.token2wav.vae.latent_dim == P["token2wav"]["vae"]["latent_dim"]
    assert cfg.vocoder.train.steps == P["vocoder"]["train"]["steps"]


def test_the_schema_covers_every_section_of_every_profile():
    assert {"eval", "ablation", "student_stage2", "meanflow_train", "vocoder", "vocoder.model", "vocoder.train",
            "vocoder.loss", "token2wav.eval", "token2wav.data", "token2wav.wave_loss"} <= set(SECTIONS)
    for P in PROFILES.values():
        for top, value in P.items():
            assert top in SECTIONS
            if top in ("vocoder", "token2wav"):
                assert all(f"{top}.{k}" in SECTIONS or not isinstance(v, dict) for k, v in value.items())


@pytest.mark.parametrize("path", SECTIONS)
def test_a_typo_in_any_section_is_an_error_naming_it(path):
    P = copy.deepcopy(PROFILES["tiny"])
    _get(P, path)["n_utz"] = 3
    with pytest.raises(ConfigError, match=rf"section '{path}'.*'{path}\.n_utz'"):
        validate_profile(P, "tiny")


@pytest.mark.parametrize("path, key, value, message", [
    ("eval", "n_utts", "4", r"'eval\.n_utts': expected int, got str"),
    ("ablation", "teacher_nfes", "2,4", r"'ablation\.teacher_nfes': expected a sequence"),
    ("student_stage2", "lr", None, r"'student_stage2\.lr'"),
    ("token2wav.eval", "fm_cfg", True, r"'token2wav\.eval\.fm_cfg': expected float, got bool"),
    ("vocoder", "seg_seconds", "1", r"'vocoder\.seg_seconds': expected float"),
    ("vocoder.train", "steps", 1.5, r"'vocoder\.train\.steps': expected int, got float"),
])
def test_a_wrong_type_is_an_error_naming_section_and_key(path, key, value, message):
    P = copy.deepcopy(PROFILES["tiny"])
    _get(P, path)[key] = value
    with pytest.raises(ConfigError, match=message):
        validate_profile(P, "tiny")


@pytest.mark.parametrize("path, key, value", [
    ("student_stage2", "steps", -1), ("eval", "teacher_nfes", []), ("meanflow_train", "steps", 0),
    ("token2wav.vae", "latent_dim", 0), ("vocoder", "per_voice", 0), ("ablation", "teacher_nfes", [0]),
])
def test_a_value_out_of_range_names_its_section(path, key, value):
    P = copy.deepcopy(PROFILES["tiny"])
    _get(P, path)[key] = value
    with pytest.raises(ConfigError, match=rf"profile 'tiny', section '{path}': parameter '{key}'"):
        validate_profile(P, "tiny")


def test_an_unknown_or_missing_section_is_an_error():
    P = copy.deepcopy(PROFILES["small"])
    P["evals"] = {}
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['evals'\]"):
        validate_profile(P, "small")
    del P["evals"], P["ablation"]
    with pytest.raises(ConfigError, match=r"missing section\(s\) \['ablation'\]"):
        validate_profile(P, "small")
    P["ablation"] = [2, 4]
    with pytest.raises(ConfigError, match="section 'ablation': expected a mapping"):
        validate_profile(P, "small")


def test_profile_rejects_an_unknown_name_and_validates_what_it_returns(monkeypatch):
    with pytest.raises(KeyError, match="tiny"):
        profile("tinny")
    broken = copy.deepcopy(PROFILES["tiny"])
    broken["eval"]["n_utz"] = 4
    monkeypatch.setitem(PROFILES, "tiny", broken)
    with pytest.raises(ConfigError, match=r"eval\.n_utz"):
        profile("tiny")


def test_section_configs_check_their_ranges_and_keep_their_defaults():
    assert EvalConfig().teacher_nfes == (1, 2, 4, 8, 16, 32) and Stage2Config(steps=0).steps == 0
    with pytest.raises(ConfigError, match="p_full"):
        Stage2Config(p_full=1.5)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


BUDGETED = {  # the keys in which small (the <= 60-minute default, issue 17) differs from small-long
    "data.max_frames", "eval.teacher_nfes", "eval.speed_repeats", "vocoder.train.steps", "vocoder.per_voice", "student_objective.objective", "student_train.lr",
    "teacher_model.dim", "teacher_model.n_layers", "teacher_model.prompt_layers", "meanflow_train.imf_step",
    "student_stage2.steps", "ablation.teacher_nfes", "ablation.steps", "meanflow_train.steps", "meanflow_train.runs",
    "meanflow_train.budget", "eval.judged_teacher_nfes", "eval.judged_student_nfes", "o3s.metric", "o3s.student_nfes",
    "o3s.teacher_nfes", "o3s.max_evals", "o3s.iters", "o3s.objectives", "token2wav.eval.n_utts",
    *(f"token2wav.{k}.steps" for k in ("vae_train", "fm_train", "mf_train", "imf_train", "decft_train", "joint_train")),
    # 08 in small: the 30-minute text2mel budget (issue 15)
    *(f"text2mel.{m}.{k}" for m in ("model", "small_model") for k in ("dim", "depth", "text_dim",
                                                                      "conv_layers")), "text2mel.model.heads",
    "text2mel.small_model.dim_head",
    *(f"text2mel.{k}.steps" for k in ("small_train", "student_train", "size_train")),
    "text2mel.imf.teacher_nfe", "text2mel.eval.n_utts", "text2mel.eval.teacher_nfes", "text2mel.eval.judged_teacher_nfes",
    "text2mel.eval.judged_student_nfes", "text2mel.eval.rtf_repeats", "text2mel.o3s.objectives",
    "text2mel.o3s.student_nfes", "text2mel.o3s.teacher_nfes", "text2mel.o3s.max_evals", "text2mel.o3s.iters"}


def test_small_long_keeps_the_long_recipe_and_small_differs_only_in_its_budgeted_keys():
    """small-long is the recipe of results/small-long (5400 distillation steps, 3 x 3000 MeanFlow steps, 192-frame
    crops); small differs from it in exactly the budgeted keys (among them the teacher's size: 2.26 M parameters, not
    3.93 M), so nothing else (the teacher's steps, the corpus, the evaluation utterances and noise) drifts between the two."""
    small, long = _flat(PROFILES["small"]), _flat(PROFILES["small-long"])
    assert {k for k in small.keys() | long.keys() if small.get(k) != long.get(k)} == BUDGETED
    assert (long["vocoder.train.steps"], long["vocoder.per_voice"], long["ablation.teacher_nfes"]) == (1500, 10, [2, 4, 8, 16, 32])
    assert (long["student_train.steps"], long["student_stage2.steps"], long["meanflow_train.steps"]) == (3000, 2400, 3000)
    assert small["teacher_train.steps"] == long["teacher_train.steps"] == 1500
    assert (small["teacher_model.dim"], long["teacher_model.dim"]) == (160, 192)
    assert small["student_train.steps"] == 3000 and small["meanflow_train.imf_step"] <= small["student_train.steps"]
    assert (small["data.max_frames"], long["data.max_frames"]) == (128, 192)
    assert small["ablation.teacher_nfes"] == [] and long["eval.teacher_nfes"] == [1, 2, 4, 8, 16, 32]
    assert small["student_objective.objective"] == "trajectory" and student_run("small") == "student"
    assert student_run("small-long") == "student_stage2"
    assert PROFILES["paper"]["vocoder"]["per_voice"] == 10  # paper starts from the long recipe (then sets its own sizes)
    long_cfg = profile_config("small-long")
    assert long_cfg.meanflow_train.runs == tuple(MEANFLOW_RUNS)
    assert long_cfg.o3s.replace(objectives=O3SSection().objectives) == O3SSection()  # the SIM search, 2/3 and 5/6/7 NFE


@pytest.mark.parametrize("path, key, value, message", [
    ("eval", "judged_teacher_nfes", [3], r"judged_teacher_nfes.*among teacher_nfes"),
    ("eval", "judged_student_nfes", [9], r"judged_student_nfes.*among student_nfes"),
    ("meanflow_train", "runs", ["MF from nowhere"], r"runs.*MF from teacher, r=t 0.75"),
    ("meanflow_train", "budget", "flops", r"budget.*'steps' or 'wall'"),
    ("o3s", "teacher_nfes", [1], r"teacher_nfes.*>= 2"),
])
def test_budget_keys_are_checked_when_the_profile_loads(path, key, value, message):
    sections = copy.deepcopy(PROFILES["small"])
    _get(sections, path)[key] = value
    with pytest.raises(ConfigError, match=message):
        validate_profile(sections, "small")


# -- the paper profile's networks (imf/runs/paper.py) --------------------------------------------------------
def test_paper_models_have_the_papers_sizes():
    """Full-depth parameter counts on the meta device: F5-TTS v1 base ~336 M, token2mel ~100 M (CosyVoice2's
    flow module), Token2Wav's DiT-1D 768 x 12, a Vocos-size vocoder."""
    from imf.runs.paper import count_parameters, paper_models

    M = paper_models()
    n = {k: count_parameters(m) / 1e6 for k, m in M.items()}
    assert 330 < n["f5_text2mel"] < 345 and M["f5_text2mel"].n_layers == 22
    assert 90 < n["token2mel"] < 110
    assert 100 < n["token2wav_dit"] < 130 and 10 < n["vocoder"] < 20
    assert count_parameters(M["f5_text2mel"], 2) < n["f5_text2mel"] * 1e6 / 4  # depth is what the reduced test cuts


@pytest.mark.parametrize("name", ["token2mel", "f5_text2mel", "token2wav_dit", "vocoder", "token2wav_vae"])
def test_paper_models_take_one_forward_backward_step_at_full_width(name):
    """Each paper network at its REAL width but 1 layer (CPU), batch 2 x 24 frames: one CFM (flow models)
    or output-energy (vocoder, VAE) forward/backward reaches every parameter with a finite gradient."""
    from imf.flow.objectives import CFMConfig, cfm_loss
    from imf.runs.paper import paper_models

    m = paper_models()[name]
    torch.manual_seed(0)
    net = m.build(1)
    z_1, cond, mask = m.batch(2, 24)
    if m.velocity:
        loss, _ = cfm_loss(net, z_1, cond, mask, CFMConfig(p_drop=0.0), generator=torch.Generator().manual_seed(0))
    else:
        out = net(z_1)
        loss = sum(o.pow(2).mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_flop_fit_recovers_counted_flops_at_another_length_and_depth():
    """The estimator's per-sample fit (quadratic in T, linear in layers) predicts a count it was not fitted on."""
    from torch.utils.flop_counter import FlopCounterMode

    from imf.runs.paper import PaperModel, _step, paper_models, per_sample_flops

    base = paper_models()["token2wav_dit"]  # attention: the T^2 term matters
    small = PaperModel("dit", lambda L: type(base.build(1))(base.build(1).config.replace(dim=64, n_heads=2, n_layers=L)),
                       base.batch, 3)
    f = per_sample_flops(small, "cfm", lengths=(8, 16, 24))
    with FlopCounterMode(display=False) as fc:
        _step(small, small.build(3), 2, 40, "cfm")()
    assert f(3, 40) == pytest.approx(fc.get_total_flops() / 2, rel=1e-6)
