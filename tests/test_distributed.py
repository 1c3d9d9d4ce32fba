"""Data-parallel training and sharded evaluation: N processes (torchrun, gloo) and gradient
accumulation train the same weights as one process on the same global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from imf.flow.objectives import (CFMConfig, IMFConfig, MeanFlowConfig, cfm_loss, intmeanflow_loss, meanflow_loss)
from imf.flow.solvers import Guided
from imf.models.student import student_from_teacher
from imf.runs import launch
from imf.train import __main__ as train_cli
from imf.train.trainer import TrainConfig, Trainer
from tests.dist_worker import eval_outputs
from tests.helpers import RandomMelDataset, collate, make_cond, tiny_model
from tests.test_data import shared_micro

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"train": {"steps": 6, "batch_size": 4, "lr": 3e-3, "warmup": 2, "ckpt_every": 2, "log_every": 2,
                    "seed": 3, "threads": 1},
          "data": {"max_frames": 48, "prompt_frames": 24},
          "model": {"dim": 32, "n_layers": 2, "text_layers": 1, "prompt_layers": 1},
          "imf": {"teacher_nfe": 4}}
COND_KEYS = ("tokens", "mask", "prompt", "prompt_mask")


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m <args>`` on CPU (gloo), one thread per process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", IMF_THREADS="1", OMP_WAIT_POLICY="PASSIVE", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", _port(), "-m", *args]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def assert_same_weights(a: Path, b: Path, atol: float = 2e-5) -> None:
    sa, sb = (torch.load(p / "checkpoints/last.pt", weights_only=False) for p in (a, b))
    assert sa["step"] == sb["step"]
    for part in ("model", "ema"):
        for k, v in sa[part].items():
            assert torch.allclose(v, sb[part][k], atol=atol), f"{part}.{k}: max diff {(v - sb[part][k]).abs().max()}"
    for ha, hb in zip(sa["history"], sb["history"]):
        assert ha["loss"] == pytest.approx(hb["loss"], rel=1e-5) and ha["step"] == hb["step"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A micro corpus, a config file, and the one-process teacher trained in this process."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = shared_micro(tmp_path_factory)
    cfg = root / "cfg.json"
    cfg.write_text(json.dumps(CONFIG))
    train_cli.run("teacher", corpus, root / "teacher_1", cfg, progress=False)
    return {"root": root, "corpus": str(corpus), "cfg": str(cfg)}


@pytest.mark.slow  # a torchrun launch: ~10 s of CPU per test, in `make test`, not `make test-fast`
def test_two_processes_train_the_teacher_of_one_and_resume_after_a_kill(runs):
    root, args = runs["root"], ["--corpus", runs["corpus"], "--config", runs["cfg"], "--no-progress"]
    killed = torchrun("tests.dist_worker", "train", "--kill-at-step", "3", "teacher", "--run-dir",
                      str(root / "teacher_2"), *args, check=False)
    assert killed.returncode != 0
    assert torch.load(root / "teacher_2/checkpoints/last.pt", weights_only=False)["step"] == 2
    again = torchrun("imf.train", "teacher", "--run-dir", str(root / "teacher_2"), *args)
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == 2 and summary["steps_this_session"] == 4
    assert_same_weights(root / "teacher_1", root / "teacher_2")


@pytest.mark.slow  # a torchrun launch: ~10 s of CPU per test, in `make test`, not `make test-fast`
def test_two_processes_distil_the_student_of_one(runs, monkeypatch):
    """Through the notebooks' launcher: in the kernel (1 process) and as a torchrun subprocess (2)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, teacher = runs["root"], runs["root"] / "teacher_1/checkpoints/last.pt"
    hist_1, _ = launch.train("distill", 1, runs["corpus"], root / "student_1", CONFIG, teacher=teacher, progress=False)
    hist_2, summary = launch.train("distill", 2, runs["corpus"], root / "student_2", CONFIG, teacher=teacher)
    assert summary["steps"] == 6 and [h["step"] for h in hist_1] == [h["step"] for h in hist_2] == [2, 4, 6]
    assert_same_weights(root / "student_1", root / "student_2")


@pytest.mark.slow  # a torchrun launch: ~10 s of CPU per test, in `make test`, not `make test-fast`
def test_sharded_evaluation_equals_unsharded(tmp_path):
    torchrun("tests.dist_worker", "eval", str(tmp_path / "x.pt"))
    sharded, whole = torch.load(tmp_path / "x.pt"), eval_outputs()
    assert sharded.shape == whole.shape == (7, 8, 16)
    assert torch.allclose(sharded, whole, atol=1e-5)


# --- in one process: the shard arithmetic and gradient accumulation ---------------------------

def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("which", ["cfm", "imf", "meanflow"])
def test_shard_shares_sum_to_the_whole_batch_loss_and_gradient(which):
    """Uneven masks: shares are normalised by the whole batch, so they add up exactly."""
    b, n = 6, 10
    cond = make_cond(b, n, n_mels=8)
    cond["mask"] = torch.arange(n)[None] < torch.tensor([10, 4, 7, 10, 2, 9])[:, None]
    z_1 = torch.randn(b, 8, n, generator=torch.Generator().manual_seed(1))
    teacher = tiny_model(1)
    model = student_from_teacher(teacher) if which != "cfm" else tiny_model(2)

    def loss(rows):
        g = torch.Generator().manual_seed(7)
        if which == "cfm":
            return cfm_loss(model, z_1, cond, cond["mask"], CFMConfig(), g, rows=rows)
        if which == "imf":
            return intmeanflow_loss(model, Guided(teacher, 2.0), z_1, cond, cond["mask"], IMFConfig(teacher_nfe=4),
                                    g, rows=rows)
        return meanflow_loss(model, z_1, cond, cond["mask"], MeanFlowConfig(), g, rows=rows)

    whole, whole_logs = loss(None)
    parts = [loss(slice(0, 1)), loss(slice(1, 4)), loss(slice(4, 6))]
    assert sum(p[0].item() for p in parts) == pytest.approx(whole.item(), rel=1e-5)
    for k, v in whole_logs.items():
        assert sum(p[1][k] for p in parts) == pytest.approx(v, rel=1e-5), k
    g_whole = _grads(model, whole)
    g_parts = [_grads(model, p[0]) for p in parts]
    for i, gw in enumerate(g_whole):
        assert torch.allclose(sum(gp[i] for gp in g_parts), gw, atol=1e-6)


def _objective(model, batch, g, rows=None):
    cond = {k: batch[k] for k in COND_KEYS}
    return cfm_loss(model, batch["z_1"], cond, batch["mask"], CFMConfig(), g, rows=rows)


def _train(run_dir, **cfg):
    cfg = TrainConfig(**{**CONFIG["train"], "steps": 5, **cfg})
    t = Trainer(run_dir, tiny_model(0, randomize=False), _objective, RandomMelDataset(), collate, cfg, progress=False)
    t.fit()
    return t


def test_gradient_accumulation_of_micro_batches_equals_the_full_batch(tmp_path):
    full, accum = _train(tmp_path / "full"), _train(tmp_path / "accum", grad_accum=2)
    four = _train(tmp_path / "four", grad_accum=4)
    for other in (accum, four):
        for (k, a), b in zip(full.model.state_dict().items(), other.model.state_dict().values()):
            assert torch.allclose(a, b, atol=2e-6), k
        assert [h["loss"] for h in other.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)
    assert full.generator.get_state().equal(accum.generator.get_state())  # the same draws were consumed


def test_a_global_batch_the_processes_cannot_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_size = 4 .* grad_accum \\(3\\)"):
        _train(tmp_path / "x", grad_accum=3)

    def no_rows(model, batch, g):
        return _objective(model, batch, g)

    cfg = TrainConfig(**{**CONFIG["train"], "grad_accum": 2})
    t = Trainer(tmp_path / "y", tiny_model(0), no_rows, RandomMelDataset(), collate, cfg, progress=False)
    with pytest.raises(TypeError, match="takes no 'rows'"):
        t.fit()


def test_notebook_training_steps_go_to_torchrun_when_imf_nproc_is_set(monkeypatch, tmp_path):
    """01's and 02's training steps (imf.runs.teacher.train, imf.runs.distill.train_stages) hand the same configs to
    torchrun when IMF_NPROC > 1 (make reproduce NPROC=N), and trajectory reuse refuses to (it trains in one process)."""
    import imf.runs.distill as runs_distill
    import imf.runs.teacher as runs_teacher
    from imf.runs.launch import default_nproc
    from imf.runs.params import declared
    from imf.runs.pipeline import notebook_path

    calls = []

    def defaults(name):
        return {k: p.default for k, p in declared(notebook_path(name)).items()}

    def fake_launch(recipe, nproc, corpus_dir, run_dir, configs, teacher=None, init=None):
        calls.append((recipe, nproc, Path(run_dir).name, sorted(configs), teacher, init))
        return [{"step": 1, "loss": 1.0}], {"steps": 1}

    monkeypatch.setattr(runs_teacher, "launch_train", fake_launch)
    monkeypatch.setenv("IMF_NPROC", "2")
    assert default_nproc() == 2
    cfg = runs_teacher.teacher_config({**defaults("01_teacher"), "PROFILE": "tiny"})
    history, summary = runs_teacher.train(cfg, type("C", (), {"root": tmp_path})())
    assert calls == [("teacher", 2, "teacher", ["cfm", "data", "model", "train"], None, None)]
    assert history == [{"step": 1, "loss": 1.0}] and summary == {"steps": 1}

    dcfg = runs_distill.distill_config({**defaults("02_distill"), "PROFILE": "tiny",
                                                                         "OBJECTIVE": "trajectory"})
    with pytest.raises(ValueError, match="one process"):
        runs_distill.train_stages(dcfg, None, tmp_path / "loss.png", nproc=2)
