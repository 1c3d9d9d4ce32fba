"""Trajectory reuse: the stored trajectory is the guided teacher's Euler path, pairs give the exact average
velocity, the cache is keyed by its teacher and resumes, and a student distilled from it learns (and resumes)."""
import numpy as np
import pandas as pd
import pytest
import torch

from imf.core.counting import count_rows
from imf.core.lock import RunLock, RunLocked
from imf.flow.schedules import uniform
from imf.flow.solvers import Guided, sample
from imf.flow.trajectories import TrajectoryConfig, pair_targets, snap_to_grid, state_at, trajectory_loss
from imf.models import student_from_teacher
from imf.runs.traj_bench import cost_table, matched_quality, write_cost_section
from imf.train.trainer import TrainConfig
from imf.train.trajectories import (TrajectoryCacheMismatch, build_trajectories, collate_cache, open_cache,
                                    trajectory_trainer)
from tests.helpers import RandomMelDataset, tiny_model

FRAMES, PROMPT = 24, 10
CFG = TrajectoryConfig(grid_nfe=4, noises_per_utt=2, build_batch=4, cfg_scale=2.0)


def teacher(seed=0):
    return tiny_model(seed).eval().requires_grad_(False)


def build(root, model, cfg=CFG, **kw):
    return build_trajectories(model, RandomMelDataset(n=5, frames=FRAMES), root, cfg, FRAMES, PROMPT, seed=7,
                              progress=False, **kw)


def test_stored_trajectory_is_the_guided_euler_path_and_costs_k_guided_calls(tmp_path):
    model = teacher()
    with count_rows(model) as box:
        cache = build(tmp_path / "c", model)
    n = 5 * CFG.noises_per_utt
    assert len(cache) == n and cache.complete
    assert box == {"rows": n * CFG.grid_nfe * 2, "calls": 3 * CFG.grid_nfe}  # chunks of 4, 4, 2; 2 rows per guided
    batch = collate_cache([cache.item(i) for i in range(n)])
    cond = {k: batch[k] for k in ("tokens", "mask", "prompt", "prompt_mask")}
    z_0 = torch.stack([torch.randn(8, FRAMES, generator=torch.Generator().manual_seed(7 * 1_000_003 + e))
                       for e in range(n)])
    x_1, nfe, path = sample(Guided(model, 2.0), z_0, uniform(4), cond, return_path=True)
    assert nfe == 4
    fresh = torch.stack(path, 1)
    # float16 storage: relative error ~ 2^-11 of each value
    assert torch.allclose(batch["states"], fresh, rtol=2e-3, atol=2e-3)
    assert (batch["states"] - fresh).abs().max() > 0  # really stored in float16, not recomputed
    v = (fresh[:, 1:] - fresh[:, :-1]) / 0.25
    assert torch.allclose(batch["velocities"], v, rtol=2e-3, atol=5e-3)
    # the two noises of one utterance differ, its conditioning is the same
    assert not torch.equal(batch["states"][0, 0], batch["states"][1, 0])
    assert torch.equal(batch["tokens"][0], batch["tokens"][1])


def test_pairs_give_the_exact_average_velocity_of_the_stored_states():
    g = torch.Generator().manual_seed(0)
    b, k = 64, 5
    grid = torch.tensor([0.0, 0.1, 0.35, 0.5, 0.8, 1.0])
    states = torch.randn(b, k + 1, 3, 4, generator=g, dtype=torch.float64)
    velocities = torch.randn(b, k, 3, 4, generator=g, dtype=torch.float64)
    a, c = torch.rand(b, generator=g, dtype=torch.float64), torch.rand(b, generator=g, dtype=torch.float64)
    t, r = torch.minimum(a, c), torch.maximum(a, c)
    t[:4], r[:4] = 0.0, 1.0  # the whole interval
    r[4:8] = t[4:8]  # instantaneous
    z_t, u = pair_targets(states, velocities, grid, t, r)
    z_r = state_at(states, grid, r)
    gen = slice(8, None)
    assert torch.allclose(u[gen], (z_r[gen] - z_t[gen]) / (r[gen] - t[gen])[:, None, None], atol=1e-9)
    assert torch.allclose(u[:4], states[:4, -1] - states[:4, 0], atol=1e-12)
    seg = torch.searchsorted(grid.double(), t[4:8], right=True) - 1
    assert torch.equal(u[4:8], velocities[torch.arange(4, 8), seg])
    # on the polyline: z(t) is the linear interpolation between the two stored neighbours
    i = 10
    s = int(torch.searchsorted(grid.double(), t[i:i + 1], right=True)) - 1
    lam = (t[i] - grid[s]) / (grid[s + 1] - grid[s])
    assert torch.allclose(z_t[i], (1 - lam) * states[i, s] + lam * states[i, s + 1], atol=1e-12)
    # grid-only pairs: stored states themselves
    ts, rs = snap_to_grid(t, grid.double()), snap_to_grid(r, grid.double())
    ok = rs > ts
    z_t, u = pair_targets(states, velocities, grid, ts, rs)
    ii = (grid.double()[None] == ts[:, None]).float().argmax(1)
    jj = (grid.double()[None] == rs[:, None]).float().argmax(1)
    idx = torch.arange(b)
    assert torch.equal(z_t, states[idx, ii])
    want = (states[idx, jj] - states[idx, ii]) / (rs - ts).clamp(min=1e-9)[:, None, None]
    assert torch.allclose(u[ok], want[ok], atol=1e-9)


def test_a_cache_of_another_teacher_is_refused(tmp_path):
    build(tmp_path / "c", teacher(0))
    with pytest.raises(TrajectoryCacheMismatch, match="another teacher"):
        build(tmp_path / "c", teacher(1))
    with pytest.raises(TrajectoryCacheMismatch, match="another teacher"):
        open_cache(tmp_path / "c", teacher(1))
    with pytest.raises(TrajectoryCacheMismatch, match="grid_nfe"):
        build(tmp_path / "c", teacher(0), CFG.replace(grid_nfe=8))
    assert open_cache(tmp_path / "c", teacher(0)).complete


def test_an_interrupted_build_resumes_to_the_same_file(tmp_path):
    model = teacher()
    build(tmp_path / "full", model)
    part = build(tmp_path / "cut", model, stop_after=1)
    assert not part.complete and part.meta["done"] == 4
    with pytest.raises(ValueError, match="incomplete"):
        open_cache(tmp_path / "cut")
    with count_rows(model) as box:
        done = build(tmp_path / "cut", model)
    assert done.complete and box["rows"] == (10 - 4) * CFG.grid_nfe * 2  # only the missing entries
    for name in ("states.f16", "velocities.f16", "z_1.f16", "prompt.f16", "tokens.i64", "mask.u8"):
        assert np.array_equal(np.fromfile(tmp_path / "full" / name, np.uint8), np.fromfile(tmp_path / "cut" / name, np.uint8)), name


def test_a_second_builder_of_the_same_cache_is_refused_while_the_first_builds(tmp_path):
    """Two processes filling one cache would write the same chunks twice: the second gets RunLocked (naming the
    folder); a complete cache is opened by anyone without the lock."""
    model = teacher()
    build(tmp_path / "c", model, stop_after=1)
    with RunLock(tmp_path / "c"):  # stands for another process still building
        with pytest.raises(RunLocked, match="c"):
            build(tmp_path / "c", model)
    assert build(tmp_path / "c", model).complete
    with RunLock(tmp_path / "c"):
        assert build(tmp_path / "c", model).complete


def test_trajectory_loss_needs_no_teacher_and_mixes_fresh_rows(tmp_path):
    model = teacher()
    cache = build(tmp_path / "c", model)
    batch = collate_cache([cache.item(i) for i in range(8)])
    cond = {k: batch[k] for k in ("tokens", "mask", "prompt", "prompt_mask")}
    student = student_from_teacher(model)
    with count_rows(model) as box:
        loss, logs = trajectory_loss(student, batch["states"], batch["velocities"], cache.time_grid, cond,
                                     batch["mask"], CFG, torch.Generator().manual_seed(0))
    assert box["rows"] == 0 and torch.isfinite(loss) and "teacher_rows" not in logs
    with count_rows(model) as box:
        _, logs = trajectory_loss(student, batch["states"], batch["velocities"], cache.time_grid, cond,
                                  batch["mask"], CFG.replace(p_fresh=0.25), torch.Generator().manual_seed(0),
                                  teacher=Guided(model, 2.0), z_1=batch["z_1"])
    assert box["rows"] == 2 * logs["teacher_rows"] > 0  # 2 fresh rows rolled out, guided (2 network rows each)


TRAIN = TrainConfig(steps=8, batch_size=4, lr=3e-3, warmup=1, ckpt_every=4, log_every=1, seed=1, threads=1)


def make_trainer(root, run, cfg=TRAIN, on_checkpoint=None):
    model = teacher()
    cache = build(root / "c", model)
    return trajectory_trainer(student_from_teacher(model).train(), cache, root / run, cfg,
                              CFG.replace(p_full=1.0, p_instant=0.0), progress=False, on_checkpoint=on_checkpoint)


def test_tiny_trajectory_distillation_lowers_its_loss(tmp_path):
    tr = make_trainer(tmp_path, "run", TRAIN.replace(steps=30, ckpt_every=30))
    tr.fit()
    loss = [h["loss"] for h in tr.history]
    assert np.mean(loss[-5:]) < 0.7 * np.mean(loss[:5])


def test_resumed_equals_uninterrupted(tmp_path):
    full = make_trainer(tmp_path, "a")
    full.fit()

    def kill(tr):
        if tr.step == 4:
            raise KeyboardInterrupt("simulated kill after the checkpoint at step 4")

    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, "b", on_checkpoint=kill).fit()
    again = make_trainer(tmp_path, "b")
    summary = again.fit()
    assert summary["resumed_from"] == 4 and again.step == 8
    for (k, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert [h["loss"] for h in again.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-5)


def _bench_rows(name, method, rows_per_step, base_rows, dists):
    return [{"method": method, "name": name, "step": 100 * (i + 1), "teacher_rows": base_rows + rows_per_step * 100 * (i + 1),
             "wall_s": 10.0 * (i + 1), "dist_ref_1": d, "dist_ref_2": d / 2, "fs_rel_1": 0.9, "closer_than_teacher4": i,
             "n_utts": 4} for i, d in enumerate(dists)]


def test_cost_table_finds_the_first_checkpoint_at_the_target_and_matched_quality_compares_costs(tmp_path, monkeypatch):
    monkeypatch.setenv("IMF_RESULTS", str(tmp_path))  # the section goes to tmp_path/sections, not the repository
    df = pd.DataFrame(_bench_rows("traj", "trajectory", 0, 1000, [0.3, 0.2, 0.12, 0.11])
                      + _bench_rows("roll", "rollout", 200, 0, [0.35, 0.25, 0.18]))
    t = cost_table(df, target=0.121).set_index("run")
    assert t.loc["traj", "steps_to_target"] == 300 and t.loc["traj", "teacher_rows_to_target"] == 1000
    assert t.loc["traj", "wall_s_to_target"] == 30.0 and t.loc["traj", "closer_than_teacher4"] == "3/4"
    assert np.isnan(t.loc["roll", "steps_to_target"]) and t.loc["roll", "teacher_rows"] == 60000
    m = matched_quality(df, "traj", "roll")  # both reached 0.18: traj first at step 300 (1000 rows), roll at 300
    assert m["dist_ref_1"] == 0.18 and m["rows_ratio"] == pytest.approx(1000 / 60000)
    assert m["wall_ratio"] == pytest.approx(30 / 30)
    path = write_cost_section(df, tmp_path / "02_trajectory_reuse", target=0.121)
    assert path == tmp_path / "sections" / "02_trajectory_reuse.md"
    section = path.read_text()
    assert "1.7% of the rollout's teacher forward passes" in section
    assert (tmp_path / "02_trajectory_reuse" / "cost_vs_quality.png").stat().st_size > 0
