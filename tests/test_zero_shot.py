"""Zero-shot evaluation (imf/runs/splits.py): the unseen split swept beside the seen one, the seen rows
unchanged, and the report sentence computed from the numbers."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from imf.data import load_corpus
from imf.eval.evalset import make_eval_set
from imf.eval.sweep import nfe_sweep
from imf.eval.judges import JudgesConfig, judge_specs, make_judges
from imf.eval.systems import System, guided, waveforms
from imf.eval.token2wav import T2WEvalConfig, T2WResult, judge_split, latent_eval_set, score_systems, vae_oracle
from imf.models.vae import VAEConfig, WaveVAE
from imf.runs.splits import (by_split, on_split, side_by_side, split_voices, sweep_split, unseen_eval_set,
                              zero_shot_text)
from imf.runs.listen import ListenConfig, ListenSetup, compare, report
from tests.helpers import tiny_model
from tests.test_data import shared_micro
from tests.test_listen import SineVocoder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return load_corpus(shared_micro(tmp_path_factory))


def test_unseen_rows_appear_beside_unchanged_seen_rows(corpus):
    teacher = tiny_model(n_tokens=corpus.n_tokens, n_mels=corpus.mel_config.n_mels).eval()
    sys_ = System("teacher + CFG 2", guided(teacher, 2.0))
    points, ref = [(sys_, 1), (sys_, 4)], (sys_, 4)
    es = make_eval_set(corpus, "test", 3, 1234, 256, 32)
    seen, _ = nfe_sweep(es, points, reference=ref, batch_size=4, progress=False)
    state = torch.random.get_rng_state()
    ues = unseen_eval_set(corpus, "unseen", 3, 1234, 256, 32)
    unseen = sweep_split(ues, points, ref, 4)
    assert torch.equal(state, torch.random.get_rng_state())  # the seen pipeline's later draws do not move
    held_out = set(corpus.split("unseen").speaker)
    assert set(corpus.manifest.set_index("id").loc[ues.ids, "speaker"]) <= held_out
    assert all(p != i for p, i in zip(ues.prompt_ids, ues.ids))  # cross-sentence prompts
    table = by_split(seen, unseen, "test", "unseen")
    assert list(table.columns[:1]) == ["split"] and list(table.split) == ["test", "test", "unseen", "unseen"]
    pd.testing.assert_frame_equal(table[table.split == "test"].drop(columns="split").drop(columns="seconds"),
                                  seen.drop(columns="seconds"))
    assert (table[table.split == "unseen"].fs_ratio != table[table.split == "test"].fs_ratio.values).all()
    wide = side_by_side(table, [sys_.name])
    assert list(wide.columns[:4]) == ["system", "nfe", "fs_ratio [test]", "fs_ratio [unseen]"] and len(wide) == 2
    assert split_voices(corpus, "unseen") and unseen_eval_set(corpus, "", 3, 1234, 256, 32) is None


def _table(t_seen, t_unseen, s_seen, s_unseen):
    rows = [("test", "teacher", 32, t_seen), ("unseen", "teacher", 32, t_unseen),
            ("test", "student", 1, s_seen), ("unseen", "student", 1, s_unseen)]
    return pd.DataFrame(rows, columns=["split", "system", "nfe", "fs_ratio"])


def test_zero_shot_sentence_is_computed_from_the_table():
    text = zero_shot_text(_table(0.72, 0.49, 0.70, 0.47), "teacher", 32, "student", 1, ["es-nyc-m1", "fl-awb"])
    assert "0.49 against 0.72" in text and "(es-nyc-m1, fl-awb)" in text and "unseen / seen = 0.68" in text
    assert "0.97x the teacher's ratio on seen voices and 0.96x" in text and "not distillation, is the limit" in text
    worse = zero_shot_text(_table(0.72, 0.49, 0.70, 0.30), "teacher", 32, "student", 1)
    assert "distillation itself loses more on unseen voices" in worse and "is the limit" not in worse
    only_seen = by_split(_table(0.72, 0.49, 0.7, 0.47).query("split == 'test'").drop(columns="split"), None)
    assert "no `unseen` split" in zero_shot_text(only_seen, "teacher", 32, "student", 1)


def test_token2wav_table_gets_unseen_rows_beside_unchanged_seen_rows(corpus):
    """07: the Token2Wav rows judged on the unseen split (held-out voices, own utterances and noise) stack under
    the seen table, which does not move; the RNG the seen pipeline draws from is left where it was."""
    torch.manual_seed(0)
    vae = WaveVAE(VAEConfig(latent_dim=8, enc_dim=16, enc_layers=1, dec_dim=16, dec_low_layers=1, dec_layers=1)).eval()
    judges = make_judges(JudgesConfig(judges=judge_specs(["stoi"])))
    cfg = T2WEvalConfig(n_utts=2)
    points = [(vae_oracle(vae), 0)]
    es = latent_eval_set(corpus, vae, "test", cfg.n_utts, cfg.seed, 8)
    seen, _ = score_systems(waveforms(points, es), es, judges)
    seen = seen.assign(nfe=[0])
    result = T2WResult(es, points, {}, seen, {}, pd.DataFrame(), {}, {}, ["stoi"], None, judge_objs=judges)
    state = torch.random.get_rng_state()
    unseen = on_split(corpus, "unseen", judge_split, corpus, result, vae, cfg, "unseen", 8)
    assert torch.equal(state, torch.random.get_rng_state())
    assert list(unseen.columns[:2]) == ["system", "nfe"] and list(unseen.system) == ["VAE oracle"]
    table = by_split(seen, unseen, "test", "unseen")
    assert list(table.split) == ["test", "unseen"]
    pd.testing.assert_frame_equal(table[table.split == "test"].drop(columns="split")[seen.columns], seen)
    assert table.stoi.notna().all() and table.stoi.iloc[0] != table.stoi.iloc[1]  # other voices, other numbers
    wide = side_by_side(table, ["VAE oracle"], ["stoi"])
    assert list(wide.columns) == ["system", "nfe", "stoi [test]", "stoi [unseen]"] and len(wide) == 1
    assert on_split(corpus, "", judge_split) is None and on_split(corpus, "nosuch", judge_split) is None


def test_listen_report_adds_unseen_mean_scores_and_keeps_the_seen_ones(corpus, tmp_path, monkeypatch):
    """06: ``mean_scores_by_split.csv`` holds the seen means (equal to ``mean_scores.csv`` of a run without
    zero-shot, bit for bit) and the same systems' means on the unseen split; metrics and README say so."""
    monkeypatch.setenv("IMF_RESULTS", str(tmp_path / "results"))
    torch.manual_seed(0)
    teacher = tiny_model(n_tokens=corpus.n_tokens, n_mels=corpus.mel_config.n_mels).eval()
    student = tiny_model(n_tokens=corpus.n_tokens, n_mels=corpus.mel_config.n_mels).eval()
    E = {"split": "test", "seed": 1234, "max_frames": 256, "batch_size": 4, "zero_shot_split": "unseen"}
    seen_es = make_eval_set(corpus, "test", 2, 1234, 256, 32)
    out = {}
    for n in (0, 2):
        cfg = ListenConfig(profile="tiny", n_utts=2, nfe_choices=(1, 2), judges=(), static_utts=0, zero_shot_utts=n)
        (tmp_path / str(n)).mkdir()
        setup = ListenSetup(cfg, teacher, student, corpus, SineVocoder(), "sine", None, seen_es, E, 2.0, tmp_path / str(n), 32)
        out[n] = report(setup, compare(setup))
    base = pd.read_csv(tmp_path / "0/mean_scores.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "2/mean_scores.csv"), base, check_exact=True)
    assert out[2]["mean_scores"] == out[0]["mean_scores"] and out[0]["zero_shot"]["mean_scores"] == []
    table = pd.read_csv(tmp_path / "2/mean_scores_by_split.csv")
    assert list(table.columns[:3]) == ["split", "system", "nfe"]
    pd.testing.assert_frame_equal(table[table.split == "test"].drop(columns="split").reset_index(drop=True), base)
    unseen = table[table.split == "unseen"]
    assert list(zip(unseen.system, unseen.nfe)) == list(zip(base.system, base.nfe))
    z = out[2]["zero_shot"]
    assert z["n_utts"] == 2 and set(corpus.manifest.set_index("id").loc[z["ids"], "split"]) == {"unseen"}
    gen = unseen[unseen.nfe > 0].fs_ratio.values
    assert (gen != table[(table.split == "test") & (table.nfe > 0)].fs_ratio.values).all()
    readme = (tmp_path / "results/sections/06_listen.md").read_text()
    assert "Seen vs held-out voices" in readme and "fs_ratio [unseen]" in readme
    assert zero_shot_text(table, "teacher + CFG 2", 2, "IntMeanFlow student", 1, split_voices(corpus, "unseen")) in readme
