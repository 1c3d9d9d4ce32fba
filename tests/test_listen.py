"""Listening comparisons: the rendering data (imf.eval.listen: identical noise, caching, systems
as imf.eval.systems.System) and its views (imf.viz.listen: the widget panel driven
programmatically, no browser; the static HTML form). Tiny random models, a stub vocoder and
stub judges: no corpus, no pretrained weights."""
import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from imf.flow import schedules
from imf.eval.evalset import EvalSet
from imf.eval.listen import COPY, TRUTH, nfe_grids, render_comparison
from imf.eval.systems import System, guided
from imf.viz.listen import ListeningPanel, static_comparison, wav_bytes
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
    z_1 = corpus.normalize(torch.randn(3, C, t) - 3.0) * mask[:, None]
    cond = make_cond(3, t, n_mels=C)
    cond["mask"] = mask
    g = torch.Generator().manual_seed(7)
    z_0 = torch.randn(3, C, t, generator=g) * mask[:, None]
    return EvalSet(ids, z_1, mask, cond, z_0, corpus, ["hello there", "a second one", "third"], None, ["u1", "u2", "u0"])


@pytest.fixture
def models():
    return tiny_model(seed=0), tiny_model(seed=1)


def wav_of(data: bytes):
    a, sr = sf.read(io.BytesIO(data), dtype="float32")
    return a, sr


def pcm16(data: bytes) -> np.ndarray:
    """The int16 samples of a WAV file's bytes (asserting 16 kHz PCM16)."""
    info = sf.info(io.BytesIO(data))
    assert info.samplerate == SR and info.subtype == "PCM_16" and info.channels == 1
    return sf.read(io.BytesIO(data), dtype="int16")[0]


def assert_is_pcm16_of(data: bytes, wav: torch.Tensor) -> None:
    """``data`` is a WAV file of exactly ``wav`` (S,), quantised to 16 bits (within one step)."""
    a = pcm16(data)
    assert a.shape == wav.shape
    assert np.abs(a / 32768.0 - wav.clamp(-1, 1).numpy()).max() <= 1 / 32768 + 1e-7


def test_identical_noise_same_model_same_audio(es, models):
    teacher, student = models
    systems = [System("a", teacher), System("b", teacher), System("c", student)]
    comp = render_comparison(es, systems, SineVocoder(), nfes=[2], progress=False)
    for i in range(len(es)):
        assert torch.equal(comp.wav("a", 2, i), comp.wav("b", 2, i))
        assert torch.equal(comp.mel("a", 2, i), comp.mel("b", 2, i))
        assert not torch.equal(comp.wav("a", 2, i), comp.wav("c", 2, i))
        assert comp.mel("a", 2, i).shape == (C, int(es.mask[i].sum()))
        assert comp.wav("a", 2, i).shape == ((int(es.mask[i].sum()) - 1) * HOP,)


def test_references_and_tables(es, models):
    teacher, student = models
    systems = [System("teacher", guided(teacher, 2.0), grids=nfe_grids([1, 4])),
               System("student", student, grids=nfe_grids([2, 1]))]
    comp = render_comparison(es, systems, SineVocoder(), [RMS(), Chars()], default_nfe={"teacher": 4}, progress=False)
    assert comp.names == [TRUTH, COPY, "teacher", "student"]
    assert comp.nfes("teacher") == [1, 4] and comp.nfes("student") == [1, 2] and comp.nfes(TRUTH) == []
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


def test_system_grids_schedule_and_method_are_used(es, models):
    """``nfes`` takes each grid from ``System.grid`` (its explicit grid, else its schedule), and the
    system's solver ``method`` samples it: midpoint costs two model calls per step."""
    student = Counting(models[1])
    custom = torch.tensor([0.0, 0.1, 1.0])
    systems = [System("cos", student, schedule="cosine"), System("own", student, grids={2: custom}),
               System("mid", student, method="midpoint")]
    comp = render_comparison(es, systems, SineVocoder(), nfes=[2, 3], eager=False)
    assert torch.equal(comp.grids["cos"][3], schedules.make_grid("cosine", 3))
    assert torch.equal(comp.grids["own"][2], custom) and torch.equal(comp.grids["own"][3], schedules.uniform(3))
    comp.render("mid", 3)
    assert student.calls == 2 * 3 and comp.render("mid", 3).calls == 6


def test_panel_builds_and_reacts_without_browser(es, models):
    teacher, student = models
    t_count, s_count = Counting(guided(teacher, 2.0)), Counting(student)
    rms = RMS()
    systems = [System("teacher", t_count, grids=nfe_grids([1, 4])), System("student", s_count, grids=nfe_grids([1, 2]))]
    comp = render_comparison(es, systems, SineVocoder(), [rms], default_nfe={"teacher": 4}, progress=False)
    calls, scored = (t_count.calls, s_count.calls), rms.n_scored
    panel = ListeningPanel(comp)
    assert set(panel.players) == {TRUTH, COPY, "teacher", "student"} and set(panel.nfe) == {"teacher", "student"}
    assert panel.nfe["teacher"].value == 4 and panel.nfe["student"].value == 1
    for name in comp.names:
        assert panel.players[name].value == wav_bytes(comp.wav(name, panel.current_nfe(name), 0), SR)
        assert_is_pcm16_of(panel.players[name].value, comp.wav(name, panel.current_nfe(name), 0))
        assert panel.images[name].value[:4] == b"\x89PNG"
        assert "rms" in panel.scores[name].value and "fs_ratio" in panel.scores[name].value
    assert "u0" in panel.caption.value and "hello there" in panel.caption.value
    # displaying the panel displays its whole widget (not, e.g., the utterance dropdown alone)
    view = panel._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == panel.widget.model_id

    before = {n: (panel.players[n].value, panel.scores[n].value, panel.images[n].value) for n in comp.names}
    panel.utterance.value = 1
    for n in comp.names:
        assert panel.players[n].value == wav_bytes(comp.wav(n, panel.current_nfe(n), 1), SR) != before[n][0]
        assert panel.scores[n].value != before[n][1]
        assert panel.images[n].value != before[n][2]
    assert "u1" in panel.caption.value

    # an NFE change swaps that column's audio to the render of the new NFE, from the cache
    student_before, teacher_before = panel.players["student"].value, panel.players["teacher"].value
    panel.nfe["student"].value = 2
    assert panel.players["student"].value == wav_bytes(comp.wav("student", 2, 1), SR) != student_before
    assert_is_pcm16_of(panel.players["student"].value, comp.wav("student", 2, 1))
    assert panel.players["teacher"].value == teacher_before
    panel.nfe["teacher"].value = 1
    assert_is_pcm16_of(panel.players["teacher"].value, comp.wav("teacher", 1, 1))
    panel.nfe["student"].value = 1
    assert panel.players["student"].value == student_before
    assert (t_count.calls, s_count.calls) == calls and rms.n_scored == scored  # nothing recomputed


def test_lazy_panel_computes_each_utterance_once_on_demand(es, models):
    """A lazy panel computes nothing until shown; then each (utterance, system, NFE) point once, the
    utterance alone (a batch of one: the model's call count is the NFE), never twice."""
    student = Counting(models[1])
    comp = render_comparison(es, [System("student", student, grids=nfe_grids([1, 2]))], SineVocoder(), eager=False)
    panel = ListeningPanel(comp)
    assert student.calls == 0 and panel.pending() == [TRUTH, COPY, "student"]
    assert panel.players["student"].value == b"" and "waiting" in panel.status["student"].value
    assert "imf-busy" in panel.columns["student"]._dom_classes
    panel.fill()
    assert student.calls == 1 and panel.pending() == [] and panel.status["student"].value == ""
    assert "imf-busy" not in panel.columns["student"]._dom_classes
    assert not comp.is_rendered("student", 1)  # one utterance only, not the whole set
    assert comp.is_ready("student", 1, 0) and not comp.is_ready("student", 1, 1)
    assert_is_pcm16_of(panel.players["student"].value, comp.wav("student", 1, 0))
    seen = []  # the busy state is visible while the point is computed: status line and disabled controls
    student.register_forward_hook(lambda *a: seen.append(
        (panel.status["student"].value, panel.nfe["student"].disabled, panel.utterance.disabled)))
    panel.nfe["student"].value = 2
    assert student.calls == 1 + 2 and seen == [("<span class='imf-status'>⏳ generating…</span>", True, True)] * 2
    assert not panel.nfe["student"].disabled and not panel.utterance.disabled
    panel.nfe["student"].value = 1
    panel.nfe["student"].value = 2
    assert student.calls == 3
    panel.utterance.value = 2
    assert student.calls == 3 + 2 and comp.is_ready("student", 2, 2)
    panel.utterance.value = 0
    assert student.calls == 5


def test_take_equals_the_whole_set_render_and_tables_keep_point_order(es, models):
    """A one-utterance take is the utterance of the batched render (same noise, same model, up to
    float rounding); once the whole point is rendered the take reads it exactly. Tables list the
    rendered points in points() order whatever order they were asked for."""
    teacher, student = models
    systems = [System("teacher", teacher, grids=nfe_grids([1, 2])), System("student", student, grids=nfe_grids([1]))]
    comp = render_comparison(es, systems, SineVocoder(), [RMS()], eager=False)
    takes = {i: comp.take("teacher", 2, i) for i in range(len(es))}
    for name, nfe in [("student", 1), (COPY, 0), ("teacher", 2), (TRUTH, 0), ("teacher", 1)]:
        comp.render(name, nfe)
    whole = comp.render("teacher", 2)
    for i, t in takes.items():
        assert t.mels[0].shape == whole.mels[i].shape and t.scores.index.tolist() == [es.ids[i]]
        torch.testing.assert_close(t.mels[0], whole.mels[i], rtol=1e-4, atol=1e-4)
        assert torch.equal(comp.wav("teacher", 2, i), whole.wavs[i])  # read from the render now
        assert comp.scores("teacher", 2, i) == whole.scores.iloc[i].to_dict()
    assert list(zip(comp.mean_scores().system, comp.mean_scores().nfe)) == comp.points()
    table = comp.table()
    assert list(dict.fromkeys(zip(table.system, table.nfe))) == comp.points()
    # what is recorded does not depend on what a panel looked at first: equal to the eager comparison's, exactly
    eager = render_comparison(es, systems, SineVocoder(), [RMS()], progress=False)
    pd.testing.assert_frame_equal(table, eager.table(), check_exact=True)
    pd.testing.assert_frame_equal(comp.mean_scores(), eager.mean_scores(), check_exact=True)


def test_saved_panel_says_it_needs_a_kernel(es, models):
    """The panel's controls and status line carry the house CSS classes; in a saved notebook's widget
    state (as nbclient stores it) mark_offline disables the controls and puts the offline note in."""
    import nbformat
    from ipywidgets import Widget

    from imf.viz.widgets import KERNEL_NOTE, NEEDS_KERNEL, OFFLINE_NOTE, WIDGET_STATE, mark_offline, saved_state

    comp = render_comparison(es, [System("s", models[1], grids=nfe_grids([1, 2]))], SineVocoder(), progress=False)
    panel = ListeningPanel(comp)
    assert NEEDS_KERNEL in panel.utterance._dom_classes and NEEDS_KERNEL in panel.nfe["s"]._dom_classes
    assert KERNEL_NOTE in panel.note._dom_classes and panel.note.value == ""
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "running kernel" in bundle["text/html"]
    def tree(w):  # the panel's widgets, each with its layout/style models
        yield w
        for k in ("children", "layout", "style"):
            v = getattr(w, k, None)
            for c in (v if isinstance(v, tuple) else [v] if isinstance(v, Widget) else []):
                yield from tree(c)

    state = Widget.get_manager_state(widgets=list(tree(panel.widget)))["state"]
    nb = nbformat.v4.new_notebook(metadata={"widgets": {WIDGET_STATE: {"state": state, "version_major": 2,
                                                                       "version_minor": 0}}})
    assert mark_offline(nb) == 3  # two dropdowns and the note
    saved = saved_state(nb)
    assert saved[panel.utterance.model_id]["state"]["disabled"] is True
    assert saved[panel.nfe["s"].model_id]["state"]["disabled"] is True
    assert saved[panel.note.model_id]["state"]["value"] == OFFLINE_NOTE
    assert not panel.utterance.disabled  # the live widgets are not


def test_static_comparison_html(es, models, tmp_path):
    teacher, student = models
    systems = [System("teacher", guided(teacher, 2.0), grids=nfe_grids([1, 4])),
               System("student", student, grids=nfe_grids([1]))]
    comp = render_comparison(es, systems, SineVocoder(), [RMS()], copy_synthesis=False,
                             default_nfe={"teacher": 4}, progress=False)
    utts, points = ["u0", "u2"], [TRUTH, ("teacher", 1), "student"]  # teacher at 1 NFE, not its default 4
    out = static_comparison(comp, utts=utts, points=points, max_seconds=0.2, figure_path=tmp_path / "cmp.png")
    data = out.data
    assert "teacher · 1 NFE" in data and "rms" in data
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG" and "data:image/png;base64," in data
    # one <audio> per (utterance, point), row by row, each the render of exactly that point, cut to 0.2 s
    payloads = re.findall(r'<audio[^>]*src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"', data)
    assert data.count("<audio") == len(payloads) == len(utts) * len(points)
    expected = [comp.wav(*comp.resolve(*((p, None) if isinstance(p, str) else p)), u)[: int(0.2 * SR)]
                for u in utts for p in points]
    for b64, wav in zip(payloads, expected):
        assert base64.b64decode(b64) == wav_bytes(wav, SR)
        assert_is_pcm16_of(base64.b64decode(b64), wav)
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
        nfe_grids([1, 0])
    with pytest.raises(TypeError, match="list of integers"):
        nfe_grids("1,2")
    voc = SineVocoder()
    with pytest.raises(ValueError, match="reserved"):
        render_comparison(es, [System(TRUTH, models[0])], voc, nfes=[1], eager=False)
    with pytest.raises(TypeError, match="list of imf.eval.systems.System"):
        render_comparison(es, {"s": (models[0], nfe_grids([1]))}, voc, eager=False)
    with pytest.raises(TypeError, match="expected an imf.eval.systems.System"):
        render_comparison(es, [("s", models[0])], voc, nfes=[1], eager=False)
    with pytest.raises(ValueError, match="named 's'"):
        render_comparison(es, [System("s", models[0]), System("s", models[1])], voc, nfes=[1], eager=False)
    with pytest.raises(ValueError, match="'s' has no NFE choices"):
        render_comparison(es, [System("s", models[0])], voc, eager=False)
    with pytest.raises(ValueError, match="grid for 3 NFE has 2 steps"):
        render_comparison(es, [System("s", models[0], grids={3: schedules.uniform(2)})], voc, eager=False)
    with pytest.raises(ValueError, match="default NFE"):
        render_comparison(es, [System("s", models[0])], voc, nfes=[1, 2], default_nfe={"s": 3}, eager=False)
    comp = render_comparison(es, [System("s", models[0])], voc, nfes=[1, 2], eager=False)
    with pytest.raises(KeyError, match="no grid for 3 NFE"):
        comp.render("s", 3)
    with pytest.raises(KeyError, match="not in the eval set"):
        comp.wav(TRUTH, None, "nope")


def test_listen_config_validates_notebook_parameters():
    from imf.core.config import ConfigError
    from imf.runs.listen import ListenConfig

    params = {"PROFILE": "tiny", "N_UTTS": 2, "NFE_CHOICES": [1, 4], "JUDGES": ["pesq"], "display": print, "_x": 1}
    cfg = ListenConfig.from_params(params)  # lower-case names (imports, helpers) are not parameters
    assert cfg.profile == "tiny" and cfg.nfe_choices == (1, 4) and cfg.judges == ("pesq",) and cfg.n_utts == 2
    assert ListenConfig.from_params({"JUDGES": []}).judges == ()
    with pytest.raises(ConfigError, match=r"unknown notebook parameter\(s\) \['N_UTT'\]"):
        ListenConfig.from_params({**params, "N_UTT": 3})  # a papermill -p typo
    with pytest.raises(ConfigError, match="'judges'.*expected a sequence"):
        ListenConfig.from_params({"JUDGES": "wer,sim"})  # the old comma string
    with pytest.raises(ConfigError, match="'nfe_choices'"):
        ListenConfig.from_params({"NFE_CHOICES": [1, 0]})
    with pytest.raises(ConfigError, match="'judges'.*utmos"):
        ListenConfig.from_params({"JUDGES": ["utmos"]})
    with pytest.raises(ConfigError, match="'profile'"):
        ListenConfig.from_params({"PROFILE": "huge"})
