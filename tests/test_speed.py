"""Speed tables on Systems: which calls are timed, in which order, and what the columns mean
(never the timings themselves)."""
import math
from types import SimpleNamespace

import pytest
import torch

from imf.models.features import MelConfig
from imf.eval.evalset import EvalSet
from imf.eval.speed import default_rtf_systems, rtf_table, speed_table, speed_view
from imf.eval.systems import System, waveforms
from imf.flow.solvers import Guided
from tests.helpers import Counting, make_cond, tiny_model

B, N = 3, 12


def mel_eval_set():
    cond = make_cond(B, N, n_mels=8)
    cond["mask"][1, 9:] = False
    corpus = SimpleNamespace(mel_config=MelConfig(), sample_rate=16000)
    return EvalSet([f"u{i}" for i in range(B)], torch.zeros(B, 8, N), cond["mask"], cond,
                   torch.randn(B, 8, N, generator=torch.Generator().manual_seed(0)), corpus)


class Log:
    """Records the order of timed calls."""

    def __init__(self):
        self.calls = []

    def model(self, name, fn):
        def f(x, *, t, r=None, cond):
            self.calls.append(name)
            return fn(x, t=t, r=r, cond=cond)
        return f


class CountingVocoder:
    def __init__(self):
        self.frames = []

    def vocode(self, mel):
        self.frames.append(mel.shape[-1])
        return torch.zeros(mel.shape[-1] * 256)


def test_rtf_table_on_mel_systems_with_a_vocoder():
    es = mel_eval_set()
    log = Log()
    m = tiny_model(0)
    a = System("a", log.model("a", m))
    b = System("b", log.model("b", m))
    voc = CountingVocoder()
    df = rtf_table([(a, 4), (a, 2), (b, 1)], es, vocoder=voc, repeats=2)
    assert list(df["system"]) == ["a", "a", "b"] and list(df["nfe"]) == [4, 2, 1]
    # warm-up: one model call per point (the first step of its grid), then 2 interleaved rounds of
    # a@4, a@2, b@1 — never all rounds of one row in a row
    one_round = ["a"] * 4 + ["a"] * 2 + ["b"]
    assert log.calls == ["a", "a", "b"] + one_round * 2
    # each utterance vocoded alone over its valid frames, every round, every point; in the first round each
    # point's decoder warms up on its first utterance
    assert voc.frames == ([N] + [N, 9, N]) * 3 + [N, 9, N] * 3
    assert {"flow_s", "decode_s", "total_s", "rtf_flow", "rtf_e2e", "speedup_flow", "speedup_e2e"} <= set(df)
    seconds = es.audio_seconds
    assert seconds == pytest.approx((N + 9 + N) * 256 / 16000)
    assert df["rtf_flow"].tolist() == pytest.approx((df["flow_s"] / seconds).tolist())
    assert df["total_s"].tolist() == pytest.approx((df["flow_s"] + df["decode_s"]).tolist())
    assert df["rtf_e2e"].tolist() == pytest.approx((df["total_s"] / seconds).tolist())
    assert df["speedup_flow"].tolist() == pytest.approx((df["flow_s"].iloc[0] / df["flow_s"]).tolist())
    assert df["speedup_e2e"].iloc[0] == 1.0
    by_name = rtf_table([(a, 4), (b, 1)], es, repeats=1, reference="b")
    assert "decode_s" not in by_name and by_name["speedup_flow"].iloc[1] == 1.0
    assert by_name["speedup_flow"].iloc[0] == pytest.approx(by_name["flow_s"].iloc[1] / by_name["flow_s"].iloc[0])
    with pytest.raises(KeyError, match="not a system"):
        rtf_table([(a, 1)], es, repeats=1, reference="zzz")


def test_rtf_table_on_waveform_systems_and_a_reference_row():
    es = mel_eval_set()
    es.n_samples, es.wavs = [100, 80, 120], [torch.zeros(120)] * 3
    decoded = []

    def decode(x):
        decoded.append(x.clone())
        return torch.zeros(x.shape[0], x.shape[-1] * 10)

    recon = []
    oracle = System("oracle", None, reconstruct=lambda e: recon.append(1) or torch.zeros(B, 120))
    gen = System("gen", tiny_model(1), decode=decode)
    df = rtf_table([(oracle, 0), (gen, 3)], es, repeats=2)
    assert list(df["nfe"]) == [0, 3] and len(recon) == 3  # warm-up + 2 rounds
    assert math.isnan(df["flow_s"].iloc[0]) and df["total_s"].iloc[0] == df["decode_s"].iloc[0]
    assert es.audio_seconds == pytest.approx(300 / 16000)
    # the decoder sees the masked latent, the same every round
    assert [d.shape[0] for d in decoded] == [1, B, B]  # its warm-up on the first utterance, then 2 rounds
    assert all(torch.equal(d, decoded[1]) for d in decoded[1:]) and torch.all(decoded[1][1, :, 9:] == 0)
    assert torch.equal(decoded[0], decoded[1][:1])
    wavs = waveforms([(oracle, 0), (gen, 3)], es)
    assert [w.numel() for w in wavs["gen"]] == es.n_samples
    with pytest.raises(ValueError, match="names must differ"):
        waveforms([(gen, 1), (gen, 2)], es)


def test_a_system_needs_a_model_or_a_reconstruction():
    with pytest.raises(ValueError, match="reconstruct"):
        System("nothing", None)
    assert System("s", tiny_model(0), "sway").grid(3).shape == (4,)


def test_default_rtf_points_and_speed_table_extras():
    teacher, student = tiny_model(0), tiny_model(1)
    points = default_rtf_systems(teacher, student, 2.0)
    assert [(s.name, n) for s, n in points] == [("teacher + CFG 2", 32), ("teacher + CFG 2", 16), ("teacher + CFG 2", 4),
                                                ("IntMeanFlow student", 1), ("IntMeanFlow student", 2),
                                                ("IntMeanFlow student", 4)]
    assert isinstance(points[0][0].model, Guided) and points[3][0].model is student
    cond = make_cond(2, 6, n_mels=8)
    extra = Counting(student)
    df = speed_table(teacher, student, torch.randn(2, 8, 6), cond, teacher_nfe=4, student_nfes=(1, 2), repeats=1,
                     extra=[System("extra", extra)])
    assert list(df["system"]) == ["teacher + CFG 2", "teacher (no CFG)"] + ["IntMeanFlow student"] * 2 + ["extra"] * 2
    assert extra.calls == 2 * (1 + 2)  # warm-up + 1 repeat at NFE 1 and 2
    assert df["speedup"].iloc[0] == 1.0


def test_the_speed_view_is_the_rtf_tables_flow_timings():
    teacher, student = tiny_model(0), tiny_model(1)
    points = default_rtf_systems(teacher, student, 2.0, (8, 4), (1, 2), unguided=True)
    assert [(s.name, n) for s, n in points] == [("teacher + CFG 2", 8), ("teacher + CFG 2", 4), ("teacher (no CFG)", 8),
                                                ("IntMeanFlow student", 1), ("IntMeanFlow student", 2)]
    rtf = rtf_table(points, mel_eval_set(), repeats=1, progress=False)
    view = speed_view(rtf)
    assert list(view["system"]) == ["teacher + CFG 2", "teacher (no CFG)", "IntMeanFlow student", "IntMeanFlow student"]
    assert list(view["nfe"]) == [8, 8, 1, 2]
    assert view["seconds"].tolist() == rtf["flow_s"].iloc[[0, 2, 3, 4]].tolist()
    assert view["speedup"].tolist() == pytest.approx((rtf["flow_s"].iloc[0] / view["seconds"]).tolist())
