"""Listening comparisons (imf.eval.listen): identical noise, caching, the widget panel driven
programmatically (no browser), the static HTML form. Tiny random models, a stub vocoder and
stub judges: no corpus, no pretrained weights."""
import base64
import io
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from imf.flow import schedules
from imf.eval.evalset import EvalSet
from imf.eval.systems import guided
from imf.eval.listen import (COPY, TRUTH, ListeningPanel, nfe_grids, render_comparison, static_comparison,
                             wav_bytes)
from tests.helpers import Counting, make_cond, tiny_model

HOP, SR, C = 256, 16_000, 8


class FakeCorpus:
    """What the listening code needs of a corpus: (de)normalisation and real recordings."""
    sample_rate = SR

    def __init__(self, ids, frames):
        self.wavs = {}
        for k, (i, t) in enumerate(zip(ids, frames)):
            n = (t - 1) * HOP
            self.wavs[i] = (0.2 * torch.sin(2 * torch.pi * (150 + 40 * k) * torch.arange(n) / SR)).float()

    def normalize(self, mel):
        return (mel + 4.0) / 2.0

    def denormalize(self, x):
        return x * 2.0 - 4.0

    def load_wav(self, ident):
        return self.wavs[ident].clone()


class SineVocoder:
    """``vocode(mel (B, C, T)) -> (B, (T - 1) * hop)``: a 220 Hz sine whose per-frame amplitude
    follows the frame's mean log-mel, so equal mels give equal audio and different mels differ."""

    def __init__(self):
        self.calls = 0

    def vocode(self, mel):
        self.calls += 1
        b, _, t = mel.shape
        amp = torch.sigmoid(mel.mean(dim=1))[:, :-1].repeat_interleave(HOP, dim=1) * 0.5  # (B, (T-1) hop)
        n = torch.arange((t - 1) * HOP)
        return amp * torch.sin(2 * torch.pi * 220 * n / SR)


class RMS:
    """Stub judge: RMS of the audio (higher is better), counting the items it scored."""
    name, higher_is_better = "rms", True

    def __init__(self):
        self.n_scored = 0

    def score(self, items):
        self.n_scored += len(items)
        return [float(np.sqrt(np.mean(it.wav ** 2))) for it in items]


class Chars:
    """Stub judge needing the transcript; lower is better."""
    name, higher_is_better = "chars", False

    def score(self, items):
        return [float(len(it.text)) for it in items]


@pytest.fixture
def es():
    torch.manual_seed(0)
    ids, frames, t = ["u0", "u1", "u2"], [24, 20, 16], 24
    corpus = FakeCorpus(ids, frames)
    mask = torch.zeros(3, t, dtype=torch.bool)
    for i, n in enumerate(frames):
        mask[i, :n] = True
    x1 = corpus.normalize(torch.randn(3, C, t) - 3.0) * mask[:, None]
    cond = make_cond(3, t, n_mels=C)
    cond["mask"] = mask
    g = torch.Generator().manual_seed(7)
    z_0 = torch.randn(3, C, t, generator=g) * mask[:, None]
    return EvalSet(ids, x1, mask, cond, z_0, corpus, ["hello there", "a second one", "third"], None, ["u1", "u2", "u0"])


@pytest.fixture
def models():
    return tiny_model(seed=0), tiny_model(seed=1)


def wav_of(data: bytes):
    a, sr = sf.read(io.BytesIO(data), dtype="float32")
    return a, sr


def test_identical_noise_same_model_same_audio(es, models):
    teacher, student = models
    comp = render_comparison(es, {"a": (teacher, schedules.uniform(2)), "b": (teacher, schedules.uniform(2)),
                                  "c": (student, schedules.uniform(2))}, SineVocoder(), progress=False)
    for i in range(len(es)):
        assert torch.equal(comp.wav("a", 2, i), comp.wav("b", 2, i))
        assert torch.equal(comp.mel("a", 2, i), comp.mel("b", 2, i))
        assert not torch.equal(comp.wav("a", 2, i), comp.wav("c", 2, i))
        assert comp.mel("a", 2, i).shape == (C, int(es.mask[i].sum()))
        assert comp.wav("a", 2, i).shape == ((int(es.mask[i].sum()) - 1) * HOP,)


def test_references_and_tables(es, models):
    teacher, student = models
    comp = render_comparison(es, {"teacher": (guided(teacher, 2.0), nfe_grids("1,4")),
                                  "student": (student, nfe_grids([1, 2]))}, SineVocoder(), [RMS(), Chars()],
                             default_nfe={"teacher": 4}, progress=False)
    assert comp.names == [TRUTH, COPY, "teacher", "student"]
    assert comp.nfes("teacher") == [1, 4] and comp.nfes(TRUTH) == []
    assert comp.default_nfe == {"teacher": 4, "student": 1}
    for i, uid in enumerate(es.ids):
        assert torch.equal(comp.wav(TRUTH, None, i), es.corpus.load_wav(uid))  # the real recording itself
        assert comp.scores(TRUTH, None, uid)["fs_ratio"] == pytest.approx(1.0)
        assert comp.scores("student", 1, uid)["chars"] == len(es.texts[i])
    table = comp.table()
    assert len(table) == len(comp.points()) * len(es) == 6 * 3
    assert {"system", "nfe", "id", "rms", "chars", "fs_ratio", "gv_ratio"} <= set(table.columns)
    assert set(table[table.system == TRUTH].nfe) == {0}
    means = comp.mean_scores()
    assert list(zip(means.system, means.nfe)) == comp.points()
    assert np.isfinite(means[["rms", "fs_ratio"]].to_numpy()).all()


def test_panel_builds_and_reacts_without_browser(es, models):
    teacher, student = models
    t_count, s_count = Counting(guided(teacher, 2.0)), Counting(student)
    rms = RMS()
    comp = render_comparison(es, {"teacher": (t_count, nfe_grids("1,4")), "student": (s_count, nfe_grids("1,2"))},
                             SineVocoder(), [rms], default_nfe={"teacher": 4}, progress=False)
    calls, scored = (t_count.calls, s_count.calls), rms.n_scored
    panel = ListeningPanel(comp)
    assert set(panel.players) == {TRUTH, COPY, "teacher", "student"} and set(panel.nfe) == {"teacher", "student"}
    assert panel.nfe["teacher"].value == 4 and panel.nfe["student"].value == 1
    for name in comp.names:
        a, sr = wav_of(panel.players[name].value)
        assert sr == SR and len(a) == len(comp.wav(name, panel.current_nfe(name), 0))
        assert panel.images[name].value[:4] == b"\x89PNG"
        assert "rms" in panel.scores[name].value and "fs_ratio" in panel.scores[name].value
    assert "u0" in panel.caption.value and "hello there" in panel.caption.value
    assert panel._repr_mimebundle_()  # displayable

    before = {n: (panel.players[n].value, panel.scores[n].value, panel.images[n].value) for n in comp.names}
    panel.utterance.value = 1
    for n in comp.names:
        assert panel.players[n].value != before[n][0]
        assert panel.scores[n].value != before[n][1]
        assert panel.images[n].value != before[n][2]
    assert "u1" in panel.caption.value

    # an NFE change redraws that column only, from the cache
    student_before, teacher_before = panel.players["student"].value, panel.players["teacher"].value
    panel.nfe["student"].value = 2
    assert panel.players["student"].value != student_before
    assert panel.players["teacher"].value == teacher_before
    assert wav_of(panel.players["student"].value)[0] == pytest.approx(comp.wav("student", 2, 1).numpy(), abs=1e-4)
    panel.nfe["student"].value = 1
    assert panel.players["student"].value == student_before
    assert (t_count.calls, s_count.calls) == calls and rms.n_scored == scored  # nothing recomputed


def test_lazy_renders_once_per_nfe(es, models):
    student = Counting(models[1])
    comp = render_comparison(es, {"student": (student, nfe_grids("1,2"))}, SineVocoder(), eager=False)
    panel = ListeningPanel(comp)
    assert student.calls == 1 and not comp.is_rendered("student", 2)
    panel.nfe["student"].value = 2
    assert student.calls == 1 + 2 and comp.is_rendered("student", 2)
    panel.nfe["student"].value = 1
    panel.nfe["student"].value = 2
    panel.utterance.value = 2
    assert student.calls == 3


def test_static_comparison_html(es, models, tmp_path):
    teacher, student = models
    comp = render_comparison(es, {"teacher": (guided(teacher, 2.0), nfe_grids("1,4")),
                                  "student": (student, nfe_grids("1"))}, SineVocoder(), [RMS()],
                             copy_synthesis=False, default_nfe={"teacher": 4}, progress=False)
    out = static_comparison(comp, utts=["u0", "u2"], points=[TRUTH, ("teacher", 4), "student"],
                            max_seconds=0.2, figure_path=tmp_path / "cmp.png")
    data = out.data
    assert data.count("<audio") == 6 and "teacher · 4 NFE" in data and "rms" in data
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG" and "data:image/png;base64," in data
    b64 = re.search(r'data:audio/wav;base64,([A-Za-z0-9+/=]+)"', data).group(1)
    info = sf.info(io.BytesIO(base64.b64decode(b64)))
    assert info.samplerate == SR and info.subtype == "PCM_16" and info.frames == int(0.2 * SR)
    # default: every row, as many utterances as the player budget allows
    assert static_comparison(comp, max_players=6).data.count("<audio") == 6
    with pytest.raises(ValueError, match="max_players"):
        static_comparison(comp, utts=[0, 1, 2], max_players=6)


def test_wav_bytes_not_normalised():
    x = 0.1 * torch.sin(torch.arange(1600) / 5.0)
    a, sr = wav_of(wav_bytes(x, SR))
    assert sr == SR and np.abs(a).max() == pytest.approx(0.1, abs=1e-3)
    assert sf.info(io.BytesIO(wav_bytes(2 * x))).subtype == "PCM_16"


def test_bad_inputs(es, models):
    with pytest.raises(ValueError, match="NFE"):
        nfe_grids("1,0")
    with pytest.raises(ValueError, match="comma-separated"):
        nfe_grids("1;2")
    with pytest.raises(ValueError, match="reserved"):
        render_comparison(es, {TRUTH: (models[0], schedules.uniform(1))}, SineVocoder(), eager=False)
    with pytest.raises(ValueError, match="default NFE"):
        render_comparison(es, {"s": (models[0], nfe_grids("1,2"))}, SineVocoder(), default_nfe={"s": 3}, eager=False)
    comp = render_comparison(es, {"s": (models[0], nfe_grids("1,2"))}, SineVocoder(), eager=False)
    with pytest.raises(KeyError, match="no grid for 3 NFE"):
        comp.render("s", 3)
    with pytest.raises(KeyError, match="not in the eval set"):
        comp.wav(TRUTH, None, "nope")
