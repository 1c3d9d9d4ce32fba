"""The training loop: resume after a kill, NaN guard, self-describing checkpoints."""
import pytest
import torch

from imf.flow.objectives import CFMConfig, cfm_loss
from imf.train.trainer import TrainConfig, Trainer, TrainingDiverged
from imf.core.checkpoints import load_model
from tests.helpers import RandomMelDataset, collate, tiny_model


def objective(fail_at=None, nan_at=None):
    calls = {"n": 0}

    def fn(model, batch, g):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt("simulated kill")
        cond = {k: batch[k] for k in ("tokens", "mask", "prompt", "prompt_mask")}
        loss, logs = cfm_loss(model, batch["z_1"], cond, batch["mask"], CFMConfig(), g)
        if nan_at is not None and calls["n"] >= nan_at:
            loss = loss * float("nan")
        return loss, logs
    return fn


CFG = TrainConfig(steps=12, batch_size=4, lr=3e-3, warmup=2, ckpt_every=4, log_every=2, seed=3, threads=1)


def trainer(run_dir, obj, cfg=CFG):
    return Trainer(run_dir, tiny_model(0, randomize=False), obj, RandomMelDataset(), collate, cfg, progress=False,
                   extra_config={"objective": CFMConfig().to_dict()})


def test_kill_then_restart_resumes_and_matches_uninterrupted(tmp_path):
    full = trainer(tmp_path / "a", objective())
    full.fit()
    killed = trainer(tmp_path / "b", objective(fail_at=7))
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=False)["step"] == 4
    again = trainer(tmp_path / "b", objective())
    summary = again.fit()
    assert summary["resumed_from"] == 4 and summary["steps_this_session"] == 8 and again.step == 12
    for (k, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert [h["step"] for h in again.history] == [h["step"] for h in full.history]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = trainer(tmp_path / "n", objective(nan_at=6))
    with pytest.raises(TrainingDiverged, match="step 5.*last good checkpoint"):
        t.fit()
    state = torch.load(tmp_path / "n/checkpoints/last.pt", weights_only=False)
    assert state["step"] == 4
    m = load_model(tmp_path / "n/checkpoints/last.pt")
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_checkpoint_rebuilds_model_alone_and_config_mismatch_is_refused(tmp_path):
    t = trainer(tmp_path / "c", objective())
    t.fit()
    m = load_model(tmp_path / "c/checkpoints/last.pt")
    for a, b in zip(m.state_dict().values(), t.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "c/metrics.csv").exists()
    other = trainer(tmp_path / "c", objective(), CFG.replace(lr=1e-2))
    with pytest.raises(ValueError, match="train.lr"):
        other.fit()


def test_loss_goes_down(tmp_path):
    t = trainer(tmp_path / "d", objective(), CFG.replace(steps=40, ckpt_every=40))
    t.fit()
    assert t.history[-1]["loss"] < 0.7 * t.history[0]["loss"]


def test_skip_mode_counts_nonfinite_steps(tmp_path):
    t = trainer(tmp_path / "s", objective(nan_at=9), CFG.replace(on_nonfinite="skip"))
    t.fit()
    assert t.step == 12
    assert sum(h["nonfinite"] for h in t.history) == 4  # steps 9..12 were skipped
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_a_kept_step_is_saved_apart_and_a_resumed_run_keeps_the_same_one(tmp_path):
    cfg = CFG.replace(keep_steps=(6,))
    full = trainer(tmp_path / "a", objective(), cfg)
    full.fit()
    kept = torch.load(tmp_path / "a/checkpoints/step_6.pt", weights_only=False)
    assert kept["step"] == 6 and sorted(p.name for p in (tmp_path / "a/checkpoints").iterdir()) == ["last.pt", "step_6.pt"]
    assert [h["step"] for h in kept["history"]] == [2, 4, 6]
    killed = trainer(tmp_path / "b", objective(fail_at=8), cfg)  # killed after the kept step 6, before 8
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    trainer(tmp_path / "b", objective(), cfg).fit()
    resumed = torch.load(tmp_path / "b/checkpoints/step_6.pt", weights_only=False)
    for (k, a), b in zip(kept["ema"].items(), resumed["ema"].values()):
        assert torch.allclose(a, b, atol=1e-6), k
    with pytest.raises(Exception, match="keep_steps"):
        CFG.replace(keep_steps=(13,))
