"""What notebooks 00_vocoder and 07_token2wav open: plans from a profile + parameters, and the
voice list 07 reads from 00_vocoder's results."""

import pandas as pd
import pytest

from imf.eval.ceilings import reliable_voices
from imf.runs import sections_audio as S
from imf.runs.profiles import profile
from imf.train.token2wav import STAGE_RUNS


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.setenv("IMF_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("IMF_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(S, "_corpus", lambda P, corpus_dir: ("corpus", P["corpus"]["profile"], corpus_dir))
    monkeypatch.setattr(S, "setup_threads", lambda: None)
    return tmp_path


def test_token2wav_plan_applies_seed_steps_and_eval_overrides(tree):
    plan = S.token2wav_plan("tiny", seed=7, prefix="x", steps={"vae": 9, "joint": 5}, n_utts=2, fm_cfg=1.0)
    T = profile("tiny")["token2wav"]
    assert plan.corpus == ("corpus", "tiny", "")
    assert plan.stages.vae_train.steps == 9 and plan.stages.joint_train.steps == 5
    assert plan.stages.fm_train.steps == T["fm_train"]["steps"]
    assert {getattr(plan.stages, f"{k}_train").seed for k in ("vae", "fm", "mf", "imf", "decft", "joint")} == {7}
    assert plan.stages.vae.latent_dim == T["vae"]["latent_dim"] and plan.stages.wave_loss.kl_weight == 1e-4
    assert plan.eval.to_dict() == dict(T["eval"], n_utts=2, fm_cfg=1.0, zero_shot_split="unseen")  # the default
    assert list(plan.runs) == list(STAGE_RUNS) and plan.runs["mf_joint"] == tree / "runs" / "tiny" / "x_mf_joint"
    assert plan.ckpts["vae"] == tree / "runs" / "tiny" / "x_vae" / "checkpoints" / "last.pt"
    assert plan.out == tree / "results" / "07_token2wav" and plan.out.is_dir()
    with pytest.raises(KeyError, match="unknown stage"):
        S.token2wav_plan("tiny", steps={"vocoder": 3})


def test_vocoder_plan(tree):
    plan = S.vocoder_plan("tiny", seed=3, steps=11, run_name="voc", corpus_dir="/x")
    V = profile("tiny")["vocoder"]
    assert plan.corpus == ("corpus", "tiny", "/x") and plan.train.steps == 11 and plan.train.seed == 3
    assert plan.per_voice == V["per_voice"] and plan.model.dim == V["model"]["dim"]
    assert plan.ckpt == tree / "runs" / "tiny" / "voc" / "checkpoints" / "last.pt"


def test_reliable_voices_threshold():
    by_voice = pd.DataFrame({"speaker": ["a", "b", "c"], "wer": [0.1, 0.15, 0.2]})
    assert reliable_voices(by_voice, 0.15) == ["a", "b"]
    assert reliable_voices(by_voice.drop(columns=["wer"]), 0.15) == []
