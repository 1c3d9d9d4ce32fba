"""AudioJudges (imf.eval.audio): the per-utterance table and its corpus summary, with WER only
on the reliable voices; and where that voice list comes from (imf.runs.voices). Stub vocoder,
corpus, ASR and judge: no weights."""
import math

import numpy as np
import pytest
import torch

from imf.eval.audio import AudioJudges
from imf.eval.evalset import EvalSet
from imf.eval.judges import WER, audio_sha1
from imf.runs.voices import wer_voices

from tests.judge_fakes import SR, CountingASR, tone  # noqa: E402


def test_wer_voices_override_file_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("IMF_RESULTS", str(tmp_path))
    assert wer_voices() is None  # 00_vocoder has not run: WER on every voice
    assert wer_voices(["fl-slt", "fl-rms"]) == ["fl-slt", "fl-rms"]
    metrics = tmp_path / "00_vocoder" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text('{"wer_voices": ["fl-awb"]}')
    assert wer_voices() == ["fl-awb"] and wer_voices([]) == ["fl-awb"]  # an empty override: the file
    assert wer_voices(["fl-slt"]) == ["fl-slt"]  # the override wins over the file
    assert wer_voices(results=tmp_path / "elsewhere") is None  # an explicit results folder, not $IMF_RESULTS
    metrics.write_text('{"wer_voices": []}')
    assert wer_voices() is None  # no reliable voice: WER on every voice, as before
    metrics.write_text('{"wer_voices": ')
    with pytest.raises(ValueError, match="00_vocoder/metrics.json"):
        wer_voices()
    metrics.write_text('{"wer_voices": "fl-awb"}')  # a string would be read as a set of letters
    with pytest.raises(ValueError, match="00_vocoder/metrics.json.*list of voice names"):
        wer_voices()
    with pytest.raises(TypeError, match="list of voice names"):
        wer_voices("fl-slt,fl-rms")


class _Corpus:
    """Four utterances of speakers A, B, A, C: (de)normalisation, real audio, speaker names."""
    speakers = ["spk-a", "spk-b", "spk-c"]

    def __init__(self):
        self.wavs = {f"u{i}": tone(0.2, 200.0 + 50 * i) for i in range(4)}

    def denormalize(self, x):
        return x

    def load_wav(self, ident):
        return torch.from_numpy(self.wavs[ident].copy())


class _RMS:
    """A stub judge: RMS of the audio."""
    name, higher_is_better = "rms", True

    def score(self, items):
        return [float(np.sqrt(np.mean(it.wav ** 2))) for it in items]


class _ToneVocoder:
    """``vocode(mel (1, C, T)) -> (1, 160 T)``: a tone whose pitch is the mel's mean, so each utterance differs."""

    def vocode(self, mel):
        n = torch.arange(160 * mel.shape[-1])
        return 0.3 * torch.sin(2 * torch.pi * (100 + 10 * mel.mean()) * n / SR)[None]


@pytest.fixture
def audio_es():
    frames = [10, 8, 12, 6]
    mask = torch.zeros(4, 12, dtype=torch.bool)
    for i, n in enumerate(frames):
        mask[i, :n] = True
    x = torch.arange(4, dtype=torch.float32)[:, None, None].expand(4, 2, 12) * mask[:, None]
    texts = ["the cat sat", "a dog", "birds fly over hills", "rain"]
    return EvalSet([f"u{i}" for i in range(4)], x, mask, {}, torch.zeros_like(x), _Corpus(), texts,
                   torch.tensor([0, 1, 0, 2]), ["u2", "u1", "u0", "u3"])


def test_audio_judges_table_and_summary(audio_es):
    voc = _ToneVocoder()
    wavs = AudioJudges(voc, []).wavs(audio_es, audio_es.z_1)
    assert [len(w) for w in wavs] == [160 * n for n in (10, 8, 12, 6)]
    # the stub ASR drops the last word of every utterance: 1 error per utterance
    hyps = {audio_es.ids[i]: audio_es.texts[i].rsplit(" ", 1)[0] if " " in audio_es.texts[i] else ""
            for i in range(4)}
    asr = CountingASR({audio_sha1(w.numpy()): hyps[u] for w, u in zip(wavs, audio_es.ids)})
    judges = AudioJudges(voc, [WER(transcribe=asr), _RMS()], wer_speakers=["spk-a", "spk-c"])
    table = judges.table(audio_es, wavs)
    assert list(table.index) == audio_es.ids and table.index.name == "id"
    assert list(table.columns[:1]) == ["rms"] and {"wer", "wer.errors", "wer.words", "wer.hyp"} <= set(table.columns)
    # WER only on speakers A (u0, u2) and C (u3); u1 (speaker B) is NaN
    assert table["wer"].tolist()[0] == pytest.approx(1 / 3) and math.isnan(table.loc["u1", "wer"])
    assert table.loc[["u0", "u2", "u3"], "wer"].tolist() == pytest.approx([1 / 3, 1 / 4, 1.0])
    assert asr.calls == 3  # u1 was never transcribed
    summary = judges.summary(table)
    assert summary["wer"] == pytest.approx(3 / 8)  # corpus level over u0, u2, u3: 3 errors / 8 words
    assert set(summary) == {"wer", "rms"} and summary["rms"] == pytest.approx(table["rms"].mean())
    assert judges.score_wavs(audio_es, wavs) == summary and judges(audio_es, audio_es.z_1) == summary
    assert not hasattr(judges, "last_table")  # no side channel: the table is returned, not stored
    # WER on every voice when no list is given; the ASR-only table still has one row per utterance
    every = AudioJudges(voc, [WER(transcribe=asr)]).table(audio_es, wavs)
    assert list(every.index) == audio_es.ids and every["wer"].notna().all()
    assert AudioJudges.summary(every)["wer"] == pytest.approx(4 / 10)
    with pytest.raises(TypeError, match="list of speaker names"):
        AudioJudges(voc, [], wer_speakers="spk-a,spk-c")
    with pytest.raises(ValueError, match="3 waveforms"):
        judges.table(audio_es, wavs[:3])
