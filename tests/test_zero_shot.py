"""Zero-shot evaluation (imf/runs/splits.py): the unseen split swept beside the seen one, the seen rows
unchanged, and the report sentence computed from the numbers."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from imf.data import load_corpus
from imf.eval.evalset import make_eval_set
from imf.eval.sweep import nfe_sweep
from imf.eval.systems import System, guided
from imf.runs.splits import by_split, side_by_side, split_voices, sweep_split, unseen_eval_set, zero_shot_text
from tests.helpers import tiny_model
from tests.test_data import shared_micro


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
