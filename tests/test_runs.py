"""The runs layer: notebook configs built from parameters + profile, relative paths, thin notebooks."""
import json

import pytest

from imf.core.config import ConfigError
from imf.core.runtime import repo_root
from imf.runs.distill import distill_config, stitch_histories
from imf.runs.open import absolute, relative
from imf.runs.params import declared
from imf.runs.profiles import PROFILES, runs_dir
from imf.runs.teacher import teacher_config

THIN = ("00_corpus", "01_teacher", "02_distill")


def defaults(notebook, **over):
    return {**{n: p.default for n, p in declared(notebook).items()}, **over}


def test_relative_paths_inside_the_repository_runs_and_data_and_absolute_elsewhere(tmp_path, monkeypatch):
    monkeypatch.delenv("IMF_RUNS", raising=False)
    monkeypatch.delenv("IMF_DATA", raising=False)
    assert relative(repo_root() / "runs/tiny/teacher/checkpoints/last.pt") == "runs/tiny/teacher/checkpoints/last.pt"
    assert relative(repo_root() / "data" / ".." / "results") == "results"
    assert relative(tmp_path / "x.pt") == str(tmp_path / "x.pt")
    # IMF_RUNS / IMF_DATA outside the repository stand for its runs/ and data/: results name them so
    monkeypatch.setenv("IMF_RUNS", str(tmp_path / "r"))
    monkeypatch.setenv("IMF_DATA", str(tmp_path / "d"))
    assert relative(tmp_path / "r/small/vocoder/checkpoints/last.pt") == "runs/small/vocoder/checkpoints/last.pt"
    assert relative(tmp_path / "d/synth-small") == "data/synth-small"
    for p in (tmp_path / "r/small/vocoder/checkpoints/last.pt", tmp_path / "d/synth-small", repo_root() / "results"):
        assert absolute(relative(p)) == p.resolve()  # the inverse, for whoever reads a recorded path back
    assert relative(tmp_path / "x.pt") == str(tmp_path / "x.pt")


def test_stitched_history_continues_the_steps_of_the_first_stage():
    a, b = [{"step": 2, "loss": 1.0}, {"step": 4, "loss": 0.5}], [{"step": 1, "loss": 0.4}, {"step": 2, "loss": 0.3}]
    assert stitch_histories(a, b, 4) == a + [{"step": 5, "loss": 0.4}, {"step": 6, "loss": 0.3}]
    assert b[0]["step"] == 1  # inputs untouched


def test_teacher_config_overlays_the_parameters_on_the_profile():
    P = PROFILES["tiny"]
    cfg = teacher_config(defaults("01_teacher", PROFILE="tiny"))
    assert cfg.train.steps == P["teacher_train"]["steps"] and cfg.train.seed == 0
    assert cfg.cfg_scale == P["eval"]["cfg_scale"] and cfg.model.dim == P["teacher_model"]["dim"]
    assert cfg.run_dir == runs_dir("tiny") / "teacher" and cfg.corpus.profile == "tiny"
    cfg = teacher_config(defaults("01_teacher", PROFILE="tiny", STEPS=7, SEED=3, CFG_SCALE=1.5, RUN_NAME="t2"))
    assert (cfg.train.steps, cfg.train.seed, cfg.cfg_scale, cfg.run_dir.name) == (7, 3, 1.5, "t2")


def test_distill_config_overlays_the_parameters_on_the_profile():
    P = PROFILES["tiny"]
    cfg = distill_config(defaults("02_distill", PROFILE="tiny"))
    assert cfg.train.steps == P["student_train"]["steps"] and cfg.imf.teacher_nfe == P["imf"]["teacher_nfe"]
    assert cfg.has_stage2 and cfg.final_run == "student_stage2" and cfg.stage2.steps == P["student_stage2"]["steps"]
    # the second stage: fresh batches (seed + 1), its own steps and lr, the whole interval for p_full of the samples
    assert (cfg.stage2_train.seed, cfg.stage2_train.steps, cfg.stage2_train.lr) == (1, 2, 1e-4)
    assert cfg.stage2_imf.p_full == 0.5 and cfg.stage2_imf.teacher_nfe == cfg.imf.teacher_nfe
    A = P["ablation"]
    assert (cfg.ablation_train.steps, cfg.ablation_train.batch_size, cfg.ablation_train.ckpt_every) == (A["steps"], A["batch_size"], 1)
    assert cfg.teacher_ckpt == runs_dir("tiny") / "teacher/checkpoints/last.pt"
    one = distill_config(defaults("02_distill", PROFILE="tiny", STAGE2_STEPS=0, TEACHER_NFE=8, CFG_SCALE=3.0))
    assert not one.has_stage2 and one.final_run == "student" and (one.imf.teacher_nfe, one.imf.cfg_scale) == (8, 3.0)
    with pytest.raises(ConfigError, match="freeze"):
        distill_config(defaults("02_distill", PROFILE="tiny", FREEZE="all"))
    with pytest.raises(ConfigError, match="stage2_run"):
        distill_config(defaults("02_distill", PROFILE="tiny", STAGE2_RUN="student"))
    # the objective: the profile's (rollout), or trajectory reuse with the IntMeanFlow section's guidance and N
    assert cfg.objective.objective == P["student_objective"]["objective"] == "rollout"
    traj = distill_config(defaults("02_distill", PROFILE="tiny", OBJECTIVE="trajectory", CFG_SCALE=3.0))
    assert traj.objective.objective == "trajectory" and traj.trajectory.grid_nfe == 4
    assert (traj.trajectory.cfg_scale, traj.trajectory.teacher_nfe) == (3.0, traj.imf.teacher_nfe)
    with pytest.raises(ConfigError, match="objective"):
        distill_config(defaults("02_distill", PROFILE="tiny", OBJECTIVE="jvp"))


@pytest.mark.parametrize("name", THIN)
def test_the_training_notebooks_are_thin_and_check_their_parameters_first(name):
    cells = json.loads((repo_root() / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    lines = [l for c in code for l in "".join(c["source"]).splitlines() if l.strip()]
    assert len(lines) <= 45, f"{name}: {len(lines)} code lines"
    assert not any(l.lstrip().startswith(("def ", "class ", "import matplotlib")) for l in lines)
    i = next(k for k, c in enumerate(code) if "parameters" in c["metadata"].get("tags", []))
    assert "".join(code[i + 1]["source"]).startswith(f'params = check_parameters("{name}", globals())')
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert all(isinstance(c["source"], list) for c in cells)
