"""The paper's judges from local files (WavLM SIM-o, Whisper through CTranslate2, UTMOS TorchScript),
built here from the real packages' classes with random weights: nothing is downloaded."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from imf.eval.judges import (SpeakerSim, JudgeItem, JudgesConfig, bundled_whisper_path, evaluate, judge_labels,
                             judge_specs, judges_note, label_columns, make_judge, make_judges)
from tests.judge_fakes import tone

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def wavlm_dir(tmp_path_factory):
    """A random-weight WavLMForXVector (hidden 32, 2 layers) and its feature extractor, saved."""
    torch.manual_seed(0)
    cfg = transformers.WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                   tdnn_dim=(32, 32, 32, 32, 64), xvector_output_dim=16, num_buckets=32,
                                   max_bucket_distance=64, num_labels=4)
    path = tmp_path_factory.mktemp("wavlm")
    transformers.WavLMForXVector(cfg).eval().save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                          return_attention_mask=True).save_pretrained(path)
    return path


def _direct_embedding(path, wav):
    model = transformers.WavLMForXVector.from_pretrained(path).eval()
    fe = transformers.AutoFeatureExtractor.from_pretrained(path)
    with torch.no_grad():
        e = model(**fe(wav, sampling_rate=16_000, return_tensors="pt")).embeddings[0].double().numpy()
    return e / np.linalg.norm(e)


def test_wavlm_sim_matches_transformers_and_is_one_on_identical_audio(wavlm_dir):
    rng = np.random.default_rng(0)
    a, b = tone(0.5, 220.0), (0.1 * rng.standard_normal(8000)).astype(np.float32)
    judge = make_judge(f"wavlm:{wavlm_dir}", progress=False)
    assert judge.name == "sim" and "WavLM" in judge.label and str(wavlm_dir) in judge.label
    got = judge.score([JudgeItem(a, prompt_wav=b), JudgeItem(a, prompt_wav=a)])
    want = float(_direct_embedding(wavlm_dir, a) @ _direct_embedding(wavlm_dir, b))
    assert got[0] == pytest.approx(want, abs=1e-6)
    assert abs(want) < 0.999  # two different signals: the test could tell a constant judge apart
    assert got[1] == pytest.approx(1.0, abs=1e-6)


def test_missing_local_paths_error_naming_them(tmp_path):
    missing = tmp_path / "no-such-model"
    for spec in (f"wavlm:{missing}", f"utmos:{missing}", f"whisper:{missing}"):
        with pytest.raises(RuntimeError, match=str(missing)):
            make_judge(spec, progress=False)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="preprocessor_config.json"):
        make_judge(f"wavlm:{tmp_path / 'half'}")
    with pytest.raises(RuntimeError, match="large-v3-not-cached"):  # a name: looked up in the local HF cache only
        make_judge("whisper:large-v3-not-cached")


def test_utmos_torchscript_judge_scores_like_the_module(tmp_path):
    class FakeUTMOS(torch.nn.Module):  # any (1, N) -> (1,) TorchScript module: here 1 + 4 * RMS
        def forward(self, wav: torch.Tensor) -> torch.Tensor:
            return 1.0 + 4.0 * wav.pow(2).mean(dim=1).sqrt()

    path = tmp_path / "utmos.pt"
    torch.jit.script(FakeUTMOS()).save(str(path))
    judge = make_judge(f"utmos:{path}", progress=False)
    a, b = tone(0.5), 0.5 * tone(0.5)
    got = judge.score([JudgeItem(a), JudgeItem(b)])
    assert got == pytest.approx([1.0 + 4.0 * float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) for x in (a, b)], rel=1e-5)
    assert judge.name == "mos" and judge.label == "UTMOS (utmos.pt)"


def test_judge_columns_are_labelled_with_their_judge(wavlm_dir, tmp_path):
    judges = make_judges(JudgesConfig(judges=judge_specs({"sim": f"wavlm:{wavlm_dir}", "stoi": "stoi"}), progress=False))
    labels = judge_labels(judges)
    assert labels["stoi"] == "STOI" and labels["sim"].startswith("WavLM x-vector cosine")
    a = tone(0.5)
    df = evaluate(judges, [JudgeItem(a, ref_wav=a, prompt_wav=a, id="u0")])
    shown = label_columns(df, labels)
    assert f"sim [{labels['sim']}]" in shown.columns and "stoi [STOI]" in shown.columns
    assert "`sim` = WavLM x-vector cosine" in judges_note(labels)
    two = make_judges(JudgesConfig(judges=("sim_wavlm=wavlm:" + str(wavlm_dir), "stoi"), progress=False))
    assert [j.name for j in two] == ["sim_wavlm", "stoi"]
    with pytest.raises(Exception, match="judges"):
        JudgesConfig(judges=("nonsense",))


def test_whisper_from_a_local_ctranslate2_folder(tmp_path):
    """A random 1-layer Whisper (transformers) converted to CTranslate2 offline, with the bundled
    tiny.en vocabulary: the WER judge loads it by path and transcribes (garbage, but a string)."""
    ct2 = pytest.importorskip("ctranslate2.converters")
    pytest.importorskip("faster_whisper")
    bundled = bundled_whisper_path()
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(vocab_size=51864, d_model=16, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, num_mel_bins=80, max_target_positions=448)
    transformers.WhisperForConditionalGeneration(cfg).save_pretrained(tmp_path / "hf")
    out = tmp_path / "whisper-random-ct2"
    ct2.TransformersConverter(str(tmp_path / "hf")).convert(str(out), force=True)
    for f in out.glob("vocabulary*"):
        f.unlink()
    for f in ("tokenizer.json", "vocabulary.txt"):
        shutil.copy(bundled / f, out / f)
    conf = json.loads((bundled / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(conf, alignment_heads=[[0, 0]])))
    judge = make_judge(f"whisper:{out}", progress=False, beam_size=1)
    assert judge.name == "wer" and str(out) in judge.label and str(out) in judge.identity
    hyp = judge.transcribe([JudgeItem(tone(0.3))])
    assert isinstance(hyp[0], str)
