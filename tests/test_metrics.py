import dataclasses
import math

import pytest
import torch

from imf.eval.audio import AudioJudges
from imf.eval.metrics import (HIGHER_IS_BETTER, beats, distance, distance_per_utterance, fine_structure,
                              fine_structure_ratio, global_variance_ratio, higher_is_better, intrinsic_metrics,
                              intrinsic_per_utterance, noise_correlation, objective_column, objective_score,
                              paired_verdict)
from imf.eval.sweep import generate, grid_metric, judge_table, nfe_sweep, utterance_scores
from imf.eval.systems import System
from tests.helpers import Counting
from imf.flow.schedules import uniform
from tests.eval_fakes import eval_set as _eval_set, velocity as _velocity


def harmonic_mel(b=2, c=80, t=50, amp=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.arange(c).float()
    envelope = -f / 20
    ripple = amp * torch.sin(2 * torch.pi * f / 4)  # period-4 "harmonics" along frequency
    return envelope[None, :, None] + ripple[None, :, None] + 0.05 * torch.randn(b, c, t, generator=g)


def test_fine_structure_of_smooth_signal_is_zero():
    lin = torch.arange(80).float()[None, :, None].expand(1, 80, 10) * 0.3
    assert fine_structure(lin)[:, 3:-3].abs().max() < 1e-5  # edges use replicate padding


def test_blur_lowers_fine_structure_ratio_and_identity_is_one():
    real = harmonic_mel()
    assert abs(fine_structure_ratio(real, real) - 1) < 1e-12
    blurred = harmonic_mel(amp=0.3)
    r = fine_structure_ratio(blurred, real)
    assert 0.05 < r < 0.2  # (0.3)^2 ~ 0.09 plus the noise floor


def test_global_variance_ratio_and_mask():
    real = torch.randn(2, 8, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(global_variance_ratio(2 * real, real) - 4) < 1e-9
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[:, 20:] = False
    gen = real.clone()
    gen[:, :, 20:] = 1e3  # padding must not count
    m = intrinsic_metrics(gen, real, mask, ref=real)
    assert abs(m["gv_ratio"] - 1) < 1e-9 and m["dist_ref"] == 0.0
    assert abs(distance(real + 0.5, real) - 0.5) < 1e-9


def test_noise_correlation_signs():
    g = torch.Generator().manual_seed(3)
    z_0 = torch.randn(2, 80, 40, generator=g)
    flat = torch.full_like(z_0, -4.0)  # no fine structure of its own
    assert abs(noise_correlation(flat - 0.7 * z_0, z_0) + 1) < 1e-9  # an inverted copy of the noise
    assert abs(noise_correlation(flat + 2.0 * z_0, z_0) - 1) < 1e-9
    assert abs(noise_correlation(harmonic_mel(2, 80, 40, seed=5), z_0)) < 0.05  # unrelated structure


def test_table_md_keeps_ints_and_escapes_pipes():
    import pandas as pd

    from imf.runs.report import table_md

    md = table_md(pd.DataFrame({"nfe": [1, 32], "verdict": ["a | b", "c"], "x": [0.5, 1.25]}))
    lines = md.splitlines()
    assert lines[0] == "| nfe | verdict | x |"
    assert lines[2] == "| 1 | a \\| b | 0.500 |" and lines[3] == "| 32 | c | 1.250 |"
    assert all(line.replace("\\|", "").count("|") == 4 for line in lines)  # 3 columns on every row


def test_distance_per_utterance_uses_each_utterances_own_frames():
    gen, ref = torch.zeros(2, 4, 6), torch.zeros(2, 4, 6)
    gen[0] += 1.0  # utterance 0 off by 1 everywhere
    gen[1, :, 3:] += 5.0  # utterance 1 off only on its padded frames
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    assert distance_per_utterance(gen, ref, mask).tolist() == [1.0, 0.0]
    assert distance_per_utterance(gen, ref).tolist() == [1.0, 2.5]


def test_paired_verdict_closed_form():
    d = torch.tensor([0.1, 0.3, 0.2, 0.4, float("nan")], dtype=torch.float64)  # the NaN (an unscored utterance) is dropped
    v = paired_verdict(d, "A better", "B better")
    se = torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=torch.float64).std().item() / 2
    assert abs(v["gain"] - 0.25) < 1e-12 and abs(v["gain_se"] - se) < 1e-12
    assert v["n"] == 4 and v["wins"] == 4 and v["verdict"] == "A better"  # 0.25 > 2 x 0.065
    assert paired_verdict(-d, "A better", "B better")["verdict"] == "B better"
    assert paired_verdict(torch.tensor([0.1, -0.1, 0.12, -0.1]), "A", "B")["verdict"] == "within noise"


# --- the one sign table and what reads it -------------------------------------------------------


def test_sign_table_directions():
    assert higher_is_better("sim") and higher_is_better("mos") and higher_is_better("pesq") and higher_is_better("stoi")
    assert not higher_is_better("wer") and not higher_is_better("dist_ref")
    assert HIGHER_IS_BETTER["fs_ratio"] is None and HIGHER_IS_BETTER["gv_ratio"] is None
    with pytest.raises(ValueError, match="no better direction"):
        higher_is_better("fs_ratio")
    with pytest.raises(KeyError, match="HIGHER_IS_BETTER"):
        higher_is_better("my_judge")
    assert higher_is_better("my_judge", default=False) is False  # a plug-in judge's own attribute


def test_objective_score_signs_follow_the_table():
    assert objective_score("sim", 0.8) == 0.8 and objective_score("mos", 3.0) == 3.0
    assert objective_score("wer", 0.25) == -0.25 and objective_score("neg_wer", 0.25) == -0.25
    assert objective_score("neg_dist_ref", 0.1) == -0.1 and objective_score("dist_ref", 0.1) == -0.1
    assert objective_score("fs_closeness", 1.0) == 0.0
    assert objective_score("fs_closeness", 2.0) == objective_score("fs_closeness", 0.5) == -math.log(2.0)
    assert [objective_column(k) for k in ("neg_dist_ref", "fs_closeness", "sim", "neg_wer")] == \
        ["dist_ref", "fs_ratio", "sim", "wer"]
    assert objective_score("my_judge", 2.0) == 2.0 and objective_score("neg_my_judge", 2.0) == -2.0  # plug-ins
    with pytest.raises(ValueError, match="higher-is-better"):
        objective_score("neg_sim", 0.8)  # would minimise similarity
    with pytest.raises(ValueError, match="no better direction"):
        objective_score("fs_ratio", 1.0)
    with pytest.raises(ValueError, match="not a ratio"):
        objective_column("sim_closeness")


def test_beats_by_direction_or_closeness():
    assert beats("sim", 0.9, 0.8) and not beats("sim", 0.8, 0.9)
    assert beats("wer", 0.1, 0.2) and beats("dist_ref", 0.1, 0.2) and not beats("dist_ref", 0.2, 0.1)
    assert beats("fs_ratio", 0.9, 1.2) and not beats("fs_ratio", 0.9, 1.05)  # closer to 1
    assert beats("gv_ratio", 1.4, 1.0, target=1.5)  # closer to a reference's own ratio


def _judges(es, x):
    return {"wer": float(x.abs().mean()), "sim": float(x.mean())}


def test_grid_metric_signs_come_from_the_table():
    es, grid = _eval_set(), uniform(2)
    x, _, _ = generate(_velocity, es, grid)
    raw = _judges(es, x)
    assert grid_metric(_velocity, es, "wer", judges=_judges)(grid) == -raw["wer"]  # lower is better: negated
    assert grid_metric(_velocity, es, "neg_wer", judges=_judges)(grid) == -raw["wer"]
    assert grid_metric(_velocity, es, "sim", judges=_judges)(grid) == raw["sim"]
    ref = es.z_1
    d = grid_metric(_velocity, es, "neg_dist_ref", reference=ref)(grid)
    assert d == -distance(x * es.mask[:, None], ref, es.mask) < 0
    with pytest.raises(ValueError, match="higher-is-better"):
        grid_metric(_velocity, es, "neg_sim", judges=_judges)
    with pytest.raises(ValueError, match="needs judges"):
        grid_metric(_velocity, es, "mos")
    with pytest.raises(ValueError, match="reference"):
        grid_metric(_velocity, es, "dist_ref")


def test_a_sweep_samples_its_reference_point_once():
    es = _eval_set()
    counted = Counting(_velocity)
    ref, other = System("ref", counted), System("other", _velocity)
    table, kept = nfe_sweep(es, [(other, 2), (ref, 4)], reference=(ref, 4), progress=False, keep=True)
    assert counted.calls == 4  # one 4-step sampling: the reference, reused as its own row
    assert table.set_index("system").loc["ref", "dist_ref"] == 0.0
    x, _, _ = generate(_velocity, es, uniform(4))
    assert torch.equal(kept[("ref", 4)], x)
    # a reference not in the points, or another System object of the same name, is sampled apart
    nfe_sweep(es, [(System("ref", counted), 4)], reference=(ref, 4), progress=False)
    assert counted.calls == 4 + 8


def test_per_utterance_metrics_equal_the_set_metric_of_each_utterance():
    es = _eval_set()
    x, _, _ = generate(_velocity, es, uniform(1))
    gen, real = x * es.mask[:, None], es.real_logmel()
    per = intrinsic_per_utterance(gen, real, es.mask, ref=real)
    for i in range(len(es)):
        one = intrinsic_metrics(gen[i:i + 1], real[i:i + 1], es.mask[i:i + 1], real[i:i + 1])
        assert per["fs_ratio"][i].item() == one["fs_ratio"] and per["gv_ratio"][i].item() == one["gv_ratio"]
        assert per["dist_ref"][i].item() == one["dist_ref"]
    assert torch.equal(utterance_scores(es, x, "dist_ref", reference=es.z_1), per["dist_ref"])
    assert torch.equal(utterance_scores(es, x, "fs_ratio"), per["fs_ratio"])
    with pytest.raises(ValueError, match="reference"):
        utterance_scores(es, x, "dist_ref")


class _Vocoder:
    @staticmethod
    def vocode(mel):  # (1, C, T) -> (1, T * 100): any deterministic audio of the mel
        return torch.tanh(mel.mean(1)).repeat_interleave(100, dim=-1)


class _StubJudge:
    def __init__(self, name, fn):
        self.name, self.higher_is_better, self.fn, self.seen = name, name != "wer", fn, []

    def score(self, items):
        self.seen += [it.id for it in items]
        return [self.fn(it) for it in items]


def test_judge_table_per_utterance_and_wer_only_on_reliable_voices():
    es = _eval_set()
    x, _, _ = generate(_velocity, es, uniform(1))
    sim = _StubJudge("sim", lambda it: float(it.wav.mean()))
    wer = _StubJudge("wer", lambda it: float(len(it.text)))
    aj = AudioJudges(_Vocoder(), [sim, wer], wer_speakers=["clear"])  # utterances u0, u2 speak "clear"
    table = judge_table(aj, es, x)
    assert list(table.index) == ["u0", "u1", "u2"] and wer.seen == ["u0", "u2"]
    assert table["wer"].isna().tolist() == [False, True, False]
    wavs = aj.wavs(es, x)
    assert table["sim"].tolist() == [float(w.numpy().mean()) for w in wavs]
    assert aj(es, x)["sim"] == pytest.approx(table["sim"].mean())  # the summary the sweep records
    scores = utterance_scores(es, x, "sim", judges=aj)
    assert scores.dtype == torch.float64 and scores.tolist() == table["sim"].tolist()
    with pytest.raises(KeyError, match="mos"):
        utterance_scores(es, x, "mos", judges=aj)


def test_the_same_output_is_judged_once_and_another_text_or_output_again():
    """AudioJudges keep each generated output's table: a sweep row, a paired verdict and an alignment check on the
    same mels judge them once; the same mels scored against other texts, or other mels, are judged again."""
    es = _eval_set()
    x, _, _ = generate(_velocity, es, uniform(1))
    sim = _StubJudge("sim", lambda it: float(it.wav.mean()))
    aj = AudioJudges(_Vocoder(), [sim])
    first = judge_table(aj, es, x)
    assert aj(es, x)["sim"] == pytest.approx(first["sim"].mean()) and len(sim.seen) == 3
    first.loc["u0", "sim"] = 99.0  # a caller's edit does not reach the kept table
    assert judge_table(aj, es, x).loc["u0", "sim"] != 99.0 and len(sim.seen) == 3
    judge_table(aj, dataclasses.replace(es, texts=list(reversed(es.texts))), x)
    judge_table(aj, es, x + 0.5)
    assert len(sim.seen) == 9


def test_a_sweep_judges_only_the_judged_points():
    """nfe_sweep(judged=...) runs the audio judges on the listed (system, NFE) points only; every row keeps its
    intrinsic metrics. imf.eval.text2mel.judged_points names them from the profile (None: every point)."""
    from imf.eval.text2mel import T2MEvalConfig, judged_points

    es = _eval_set()
    sim = _StubJudge("sim", lambda it: float(it.wav.mean()))
    aj = AudioJudges(_Vocoder(), [sim])
    a, b = System("a", _velocity), System("b", _velocity)
    table, _ = nfe_sweep(es, [(a, 1), (a, 2), (b, 1)], judges=aj, progress=False, judged={("a", 2)})
    assert table["sim"].notna().tolist() == [False, True, False] and table["fs_ratio"].notna().all()
    assert len(sim.seen) == len(es)
    assert judged_points(T2MEvalConfig(), a) is None
    cfg = T2MEvalConfig(judged_teacher_nfes=(8, 32), judged_student_nfes=(3,))
    assert judged_points(cfg, a) == {("a", 8), ("a", 32), ("student", 3)}
