"""Same seed, same model: fresh and resumed student runs, MeanFlow from a teacher, and teachers
that do not fit the corpus. On the micro corpus with a tiny teacher (a few steps each)."""
import json
import random
import shutil

import numpy as np
import pytest
import torch

import imf.train.token2mel as recipes
from imf.data import DataConfig, load_corpus
from imf.flow.objectives import IMFConfig, MeanFlowConfig
from imf.models import Token2Mel, Token2MelConfig
from imf.train.token2mel import distill, train_meanflow, train_teacher
from imf.train.trainer import TrainConfig
from tests.test_data import shared_micro

DATA = DataConfig(max_frames=32, prompt_frames=16)
MODEL = Token2MelConfig(dim=32, n_layers=2, text_layers=1, prompt_layers=1)
STUDENT = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup=1, ema_decay=0.5, ckpt_every=2, log_every=1, seed=5,
                      threads=1)
IMF = IMFConfig(teacher_nfe=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    corpus = load_corpus(shared_micro(tmp_path_factory))
    root = tmp_path_factory.mktemp("teacher")
    train_teacher(corpus, root, MODEL, TrainConfig(steps=4, batch_size=4, lr=2e-3, warmup=1, ckpt_every=4,
                                                   log_every=2, seed=0, threads=1), data_cfg=DATA, progress=False)
    return corpus, root / "checkpoints" / "last.pt"


def disturb_global_rngs():
    """What other work in the same process (or an earlier run) does to the global generators."""
    torch.rand(1000)
    np.random.rand(17)
    random.random()


def assert_identical(a, b):
    assert a.step == b.step
    for name in ("model", "ema"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (name, k)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_two_fresh_student_runs_with_one_seed_are_bit_identical(setup, tmp_path):
    corpus, teacher = setup
    a, _ = distill(corpus, teacher, tmp_path / "a", STUDENT, IMF, DATA, progress=False)
    disturb_global_rngs()
    b, _ = distill(corpus, teacher, tmp_path / "b", STUDENT, IMF, DATA, progress=False)
    assert_identical(a, b)
    c, _ = distill(corpus, teacher, tmp_path / "c", STUDENT.replace(seed=6), IMF, DATA, progress=False)
    assert c.history[0]["loss"] != a.history[0]["loss"]  # the seed does reach the run


def test_killed_then_resumed_student_equals_the_uninterrupted_one(setup, tmp_path, monkeypatch):
    corpus, teacher = setup
    full, _ = distill(corpus, teacher, tmp_path / "full", STUDENT, IMF, DATA, progress=False)
    calls = {"n": 0}
    real_loss = recipes.intmeanflow_loss

    def killed_at_step_4(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real_loss(*args, **kw)

    with monkeypatch.context() as m:
        m.setattr(recipes, "intmeanflow_loss", killed_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            distill(corpus, teacher, tmp_path / "run", STUDENT, IMF, DATA, progress=False)
    disturb_global_rngs()
    again, summary = distill(corpus, teacher, tmp_path / "run", STUDENT, IMF, DATA, progress=False)
    assert summary["resumed_from"] == 2 and summary["steps_this_session"] == 4
    assert_identical(full, again)


def test_two_meanflow_runs_from_one_teacher_are_bit_identical(setup, tmp_path):
    corpus, teacher = setup
    mf = MeanFlowConfig(cfg_scale=2.0)
    a, _ = train_meanflow(corpus, tmp_path / "a", STUDENT.replace(steps=3), mf, DATA, init=teacher, progress=False)
    disturb_global_rngs()
    b, _ = train_meanflow(corpus, tmp_path / "b", STUDENT.replace(steps=3), mf, DATA, init=teacher, progress=False)
    assert_identical(a, b)


def _checkpoint(path, model, corpus_root):
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "model_class": "Token2Mel",
                "model_config": model.config.to_dict(), "config": {"corpus": str(corpus_root)}}, path)


def test_a_teacher_of_another_vocabulary_is_refused(setup, tmp_path):
    corpus, teacher = setup
    wrong = tmp_path / "wrong.pt"
    _checkpoint(wrong, Token2Mel(MODEL.replace(n_tokens=corpus.n_tokens + 3, n_mels=80)), corpus.root)
    with pytest.raises(ValueError, match=rf"teacher {wrong} was trained for {corpus.n_tokens + 3} tokens.*"
                                         rf"has {corpus.n_tokens} phones"):
        distill(corpus, wrong, tmp_path / "s", STUDENT, IMF, DATA, progress=False)
    with pytest.raises(ValueError, match=rf"init {wrong} was trained for"):
        train_meanflow(corpus, tmp_path / "m", STUDENT, MeanFlowConfig(), DATA, init=wrong, progress=False)

    # same size, other phones: a teacher of a corpus whose inventory is permuted
    other = tmp_path / "other-corpus"
    other.mkdir()
    info = json.loads((corpus.root / "corpus.json").read_text())
    info["phones"] = [info["phones"][0]] + info["phones"][:0:-1]
    (other / "corpus.json").write_text(json.dumps(info))
    permuted = tmp_path / "permuted.pt"
    _checkpoint(permuted, Token2Mel(MODEL.replace(n_tokens=corpus.n_tokens, n_mels=80)), other)
    with pytest.raises(ValueError, match=rf"trained on the corpus {other}, whose phone inventory differs"):
        distill(corpus, permuted, tmp_path / "s2", STUDENT, IMF, DATA, progress=False)
    shutil.rmtree(other)  # its corpus is gone: the sizes are all that can be checked, and they fit
    _, summary = distill(corpus, permuted, tmp_path / "s3", STUDENT.replace(steps=1), IMF, DATA, progress=False)
    assert summary["steps"] == 1
    assert not list(tmp_path.glob("s/checkpoints/*")) and not list(tmp_path.glob("s2/checkpoints/*"))


def test_a_student_of_another_size_distils_from_the_teacher_and_lowers_its_loss(setup, tmp_path):
    """The teacher-size ablation's mechanism: the student starts from a SMALLER flow-matching model (the init
    strategy on it) and learns from the bigger guided teacher."""
    corpus, teacher = setup
    small_cfg = Token2MelConfig(dim=16, n_layers=1, text_layers=1, prompt_layers=1)
    train_teacher(corpus, tmp_path / "small", small_cfg, TrainConfig(steps=4, batch_size=4, lr=2e-3, warmup=1,
                  ckpt_every=4, log_every=2, seed=0, threads=1), data_cfg=DATA, progress=False)
    small = tmp_path / "small" / "checkpoints" / "last.pt"
    cfg = STUDENT.replace(steps=40, ckpt_every=40, log_every=5, lr=3e-3)
    trainer, _ = distill(corpus, teacher, tmp_path / "s", cfg, IMF, DATA, progress=False, init=small)
    assert trainer.model.config.dim == 16 and trainer.model.config.mean_flow
    assert sum(p.numel() for p in trainer.model.parameters()) < sum(
        p.numel() for p in recipes.load_for_corpus(teacher, corpus, "teacher").parameters()) / 2
    losses = [h["loss"] for h in trainer.history]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
