"""Data-parallel training and sharded evaluation: N processes (torchrun, gloo) and gradient
accumulation train the same weights as one process on the same global batch."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from imf.flow.objectives import (CFMConfig, IMFConfig, MeanFlowConfig, cfm_loss, intmeanflow_loss, meanflow_loss)
from imf.flow.solvers import Guided
from imf.models.student import student_from_teacher
from imf.runs import launch
from imf.runs.profiles import profile
from imf.train import __main__ as train_cli
from imf.train.gan import GANConfig
from imf.train.token2wav import T2WStagesConfig
from imf.train.trainer import TrainConfig, Trainer
from tests.dist_worker import eval_outputs, judged_sweep
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


@pytest.mark.slow  # two torchrun launches
def test_two_processes_train_token2wav_stages_of_one(tmp_path_factory, monkeypatch):
    """The VAE stage (its latent statistics are written after training, by rank 0) and the flow-matching
    generator on its latents, each as ``python -m imf.train token2wav --stage S`` on 2 processes and in the
    kernel, with the tiny profile's configs (global batch 4). The VAE without its MR-STFT term: auraloss's
    spectral convergence is one norm ratio over the whole batch, which shards only approximately
    (imf/train/wave_losses.py); its mel L1 and KL terms shard exactly."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, corpus = tmp_path_factory.mktemp("t2w"), shared_micro(tmp_path_factory)
    sections = {k: v for k, v in profile("tiny")["token2wav"].items() if k != "eval"}
    sections["wave_loss"] = dict(sections["wave_loss"], stft_weight=0.0)
    cfg = {"token2wav": T2WStagesConfig.from_dict(sections)}
    for stage, inputs in (("vae", {}), ("fm", {"vae": root / "vae_1/checkpoints/last.pt"})):
        hist_1, sum_1 = launch.train("token2wav", 1, corpus, root / f"{stage}_1", cfg, stage=stage, progress=False,
                                     **inputs)
        hist_2, sum_2 = launch.train("token2wav", 2, corpus, root / f"{stage}_2", cfg, stage=stage, **inputs)
        assert sum_2["steps"] == 4 and [h["step"] for h in hist_1] == [h["step"] for h in hist_2] == [1, 2, 3, 4]
        assert_same_weights(root / f"{stage}_1", root / f"{stage}_2")
    assert sum_2["steps_this_session"] == 4
    vae_1, vae_2 = (torch.load(root / f"vae_{i}/checkpoints/last.pt", weights_only=False)["ema"] for i in (1, 2))
    assert not torch.equal(vae_1["latent_std"], torch.ones_like(vae_1["latent_std"]))  # the statistics were saved
    assert torch.allclose(vae_1["latent_std"], vae_2["latent_std"], atol=1e-5)


@pytest.mark.slow  # a torchrun launch: ~10 s of CPU per test, in `make test`, not `make test-fast`
def test_sharded_evaluation_equals_unsharded(tmp_path):
    """Generation and the judges (vocoding, per-utterance scores, corpus-level WER) on 2 processes: each scores
    its own utterances, and the gathered metrics table is the one-process table."""
    torchrun("tests.dist_worker", "eval", str(tmp_path / "x.pt"))
    out, whole = torch.load(tmp_path / "x.pt", weights_only=False), eval_outputs()
    assert out["x"].shape == whole.shape == (7, 8, 16)
    assert torch.allclose(out["x"], whole, atol=1e-5)
    table, computed = judged_sweep()
    assert computed == 2 * 7 and out["computed"] == [2 * 3, 2 * 4]  # 2 judged points of 7 utterances, split 3 + 4
    assert list(table.columns) == list(out["table"].columns) and {"rms", "wer", "fs_ratio", "dist_ref"} <= set(table)
    assert table["wer"].between(0, 1).all() and table["wer"].gt(0).any()
    pd.testing.assert_frame_equal(out["table"], table, check_exact=False, rtol=1e-5)


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


def test_notebook_05_and_07_training_goes_to_torchrun_when_imf_nproc_is_set(monkeypatch, tmp_path):
    """05's MeanFlow runs (imf.runs.eval_meanflow.train_meanflow_runs) and 07's Token2Wav stages
    (imf.runs.sections_audio.train_token2wav) hand their configs to torchrun when IMF_NPROC > 1, stage by stage
    with the checkpoints each reads; a fine-tuning stage with the GAN terms stays in one process."""
    import imf.runs.eval_meanflow as runs_mf
    import imf.runs.sections_audio as runs_audio
    from imf.eval.token2wav import T2WEvalConfig
    from imf.train.token2wav import STAGE_RUNS

    calls = []

    def fake_launch(recipe, nproc, corpus_dir, run_dir, configs, teacher=None, init=None, progress=True, stage=None,
                    vae=None):
        run = lambda ckpt: ckpt and Path(ckpt).parent.parent.name  # noqa: E731 - a checkpoint's run folder
        calls.append((recipe, nproc, Path(run_dir).name, sorted(configs), stage, run(teacher), run(init), run(vae)))
        return [{"step": 1, "loss": 1.0}], {"steps": 1, "stage": stage}

    monkeypatch.setenv("IMF_NPROC", "2")
    for module in (runs_mf, runs_audio):
        monkeypatch.setattr(module, "launch_train", fake_launch)
    monkeypatch.setattr(runs_mf, "load_model", lambda path: f"EMA of {Path(path).parent.parent.name}")
    corpus, P = type("C", (), {"root": tmp_path})(), profile("tiny")
    wb = type("Opened", (), {"P": P, "profile": "tiny", "corpus": corpus,
                             "teacher_ckpt": tmp_path / "teacher/checkpoints/last.pt"})()
    runs = runs_mf.train_meanflow_runs(wb, steps=3)
    keys = ["data", "freeze", "meanflow", "model", "train"]
    assert [c[:5] for c in calls] == [("meanflow", 2, f"mf_{init}_p{int(p * 100)}_w2", keys, None)
                                      for init, p in runs_mf.MEANFLOW_RUNS.values()]
    assert [c[6] for c in calls] == ["teacher", "teacher", None]
    assert runs.histories()["MF from scratch, r=t 0.75"] == [{"step": 1, "loss": 1.0}]
    assert runs.trainers["MF from teacher, r=t 0"].ema == "EMA of mf_teacher_p0_w2"

    calls.clear()
    sections = {k: v for k, v in P["token2wav"].items() if k != "eval"}
    plan = runs_audio.Token2WavPlan(corpus, runs_audio.T2WStagesConfig.from_dict(sections), T2WEvalConfig(),
                                    {k: tmp_path / f"t2w_{k}" for k in STAGE_RUNS}, tmp_path)
    summaries = runs_audio.train_token2wav(plan)
    assert list(summaries) == ["vae", "fm", "meanflow", "imf", "decoder_ft", "joint_ft"]
    assert [c[1:] for c in calls] == [
        (2, "t2w_vae", ["token2wav"], "vae", None, None, None),
        (2, "t2w_fm", ["token2wav"], "fm", None, None, "t2w_vae"),
        (2, "t2w_mf", ["token2wav"], "meanflow", None, None, "t2w_vae"),
        (2, "t2w_imf", ["token2wav"], "imf", "t2w_fm", None, "t2w_vae"),
        (2, "t2w_mf_decft", ["token2wav"], "decoder_ft", None, "t2w_mf", "t2w_vae"),
        (2, "t2w_mf_joint", ["token2wav"], "joint_ft", None, "t2w_mf_decft", "t2w_vae")]
    calls.clear()
    with pytest.warns(UserWarning, match="one process"):
        runs_audio.train_token2wav(dataclasses.replace(plan, stages=plan.stages.replace(gan=GANConfig(enabled=True))))
    assert [c[1] for c in calls] == [2, 2, 2, 2, 1, 1]
