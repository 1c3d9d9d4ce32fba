import torch

from imf.eval.metrics import (distance, distance_per_utterance, fine_structure, fine_structure_ratio,
                              global_variance_ratio, intrinsic_metrics, noise_correlation, paired_verdict)


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
