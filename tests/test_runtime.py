"""Files a run leaves behind: atomic writes (modes, leftovers, a full disk), the run lock and
checkpoint loading errors that name the file."""
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import imf.core.runtime as runtime
from imf.core.checkpoints import CheckpointError, load_checkpoint, load_model
from imf.core.lock import RunLock, RunLocked, owner_record
from imf.core.runtime import (DiskFullError, atomic_path, atomic_torch_save, atomic_write_text, is_temp_file,
                              sweep_temp_files)
from imf.flow.objectives import CFMConfig, cfm_loss
from imf.models import load_vocoder
from imf.train.trainer import TrainConfig, Trainer
from tests.helpers import RandomMelDataset, collate, tiny_model

CFG = TrainConfig(steps=4, batch_size=4, lr=3e-3, warmup=1, ckpt_every=2, log_every=2, seed=0, threads=1)


def objective(model, batch, g):
    cond = {k: batch[k] for k in ("tokens", "mask", "prompt", "prompt_mask")}
    return cfm_loss(model, batch["z_1"], cond, batch["mask"], CFMConfig(), g)


def trainer(run_dir, cfg=CFG):
    return Trainer(run_dir, tiny_model(0, randomize=False), objective, RandomMelDataset(n=8), collate, cfg,
                   progress=False)


# --- atomic writes -----------------------------------------------------------------------------

def test_atomic_write_has_the_mode_of_a_plain_write(tmp_path):
    old = os.umask(0o027)
    try:
        (tmp_path / "plain.txt").write_text("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
        atomic_torch_save({"a": 1}, tmp_path / "ckpt.pt")
        mode = lambda name: (tmp_path / name).stat().st_mode & 0o777
        assert mode("plain.txt") == 0o640
        assert mode("atomic.txt") == mode("ckpt.pt") == mode("plain.txt")
    finally:
        os.umask(old)


_NEVER_CLOSED = []  # context managers of simulated kills, kept alive so that no clean-up runs


def _killed_write(path):
    """What a process killed inside ``atomic_path`` leaves: a temporary file (here: truncated)."""
    cm = atomic_path(path)
    tmp = cm.__enter__()
    tmp.write_bytes(b"PK\x03\x04 half a checkpoint")
    _NEVER_CLOSED.append(cm)  # never exits: the rename and the clean-up never happen
    return tmp


def test_sweep_removes_exactly_what_atomic_path_leaves(tmp_path):
    leftovers = [_killed_write(tmp_path / "checkpoints" / "last.pt"), _killed_write(tmp_path / "README.md"),
                 _killed_write(tmp_path / "runs" / "01_teacher.ipynb"), _killed_write(tmp_path / "LICENSE")]
    assert all(p.exists() and is_temp_file(p) for p in leftovers)
    assert re.fullmatch(r"\.last\.pt\.[a-z0-9_]{8}\.tmp\.pt", leftovers[0].name)
    keep = [tmp_path / ".notes.tmp", tmp_path / ".last.pt.abcdefgh.tmp.npy", tmp_path / "a.tmp.pt",
            tmp_path / ".x.pt.abc.tmp.pt", tmp_path / "checkpoints" / "last.pt.tmp"]
    for p in keep:
        p.write_text("mine")
    assert sorted(sweep_temp_files(tmp_path)) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)
    assert sweep_temp_files(tmp_path) == [] and sweep_temp_files(tmp_path / "missing") == []


KILLED_IN_SAVE = """
import os, sys, torch
from tests.test_runtime import trainer, CFG
real_save = torch.save
def save(obj, f, *a, **k):
    if obj.get("step") == 4:  # the second checkpoint: half written, then the process dies at once
        f.write(b"PK" * 1000)
        f.flush()
        os._exit(9)  # like SIGKILL: no finally block, no clean-up
    real_save(obj, f, *a, **k)
torch.save = save
trainer(sys.argv[1]).fit()
"""


def test_killed_checkpoint_write_leaves_nothing_after_the_next_start(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", KILLED_IN_SAVE, str(run)], env=env, capture_output=True, text=True)
    assert p.returncode == 9, p.stderr
    tmp, last = sorted((run / "checkpoints").iterdir())
    assert last.name == "last.pt" and is_temp_file(tmp) and tmp.stat().st_size == 2000
    assert (run / "run.lock").exists()  # and the dead process's lock
    assert trainer(run, CFG.replace(steps=6)).fit()["resumed_from"] == 2
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.csv", "metrics.json"]


# --- a full disk -------------------------------------------------------------------------------

def _fill_disk(monkeypatch, how):
    real_save = torch.save

    def save(obj, f, *a, **k):
        if how == "errno":
            f.write(b"x" * 100)  # a partial archive, then the write that does not fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, "/dev/full")  # torch's own message: "[enforce fail ...] unexpected pos ..."

    monkeypatch.setattr(torch, "save", save)
    if how == "torch":
        # what the disk says after a short write filled it (the real /dev/full is not our folder's disk)
        monkeypatch.setattr(runtime.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 4096))


@pytest.mark.parametrize("how", ["errno", "torch"])
def test_full_disk_says_so_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch, how):
    if how == "torch" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    t = trainer(tmp_path / "run")
    t.fit()
    before = t.ckpt_path.read_bytes()
    with monkeypatch.context() as m:
        _fill_disk(m, how)
        with pytest.raises(DiskFullError) as e:
            t.save()
    msg = str(e.value)
    assert "no space left on device" in msg and "disk full" in msg and str(t.ckpt_path) in msg, msg
    assert "previous last.pt is kept" in msg and e.value.errno == errno.ENOSPC
    assert t.ckpt_path.read_bytes() == before
    assert [p.name for p in t.ckpt_path.parent.iterdir()] == ["last.pt"]
    assert load_model(t.ckpt_path) is not None


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "f.txt"):
            raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of free space: not a full disk
        with atomic_path(tmp_path / "f.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert list(tmp_path.iterdir()) == []


# --- one process per run folder ----------------------------------------------------------------

def test_second_trainer_on_a_locked_run_is_refused(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunLocked) as e:
            trainer(run).fit()
    msg = str(e.value)
    assert str(run) in msg and f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    assert not (run / "checkpoints").exists()
    assert trainer(run).fit()["steps"] == 4  # released: the run goes ahead
    assert not (run / "run.lock").exists()


HOLDER = """
import sys, time
from imf.core.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_held_by_another_process_refuses_then_frees_when_it_dies(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"in use by pid {p.pid} on host"):
            trainer(run).fit()
    finally:
        p.kill()
        p.wait()
    assert (run / "run.lock").exists()  # a killed owner leaves its file: a stale lock
    assert trainer(run).fit()["steps"] == 4


def test_lock_file_of_a_live_foreign_pid_is_refused_and_a_dead_one_is_stale(tmp_path):
    """Where flock does not reach the owner (e.g. some network file systems), the recorded pid decides."""
    run = tmp_path / "run"
    run.mkdir()
    parent = dict(owner_record(), pid=os.getppid(), pid_start=None, argv="the parent")
    (run / "run.lock").write_text(json.dumps(parent))
    with pytest.raises(RunLocked, match=rf"pid {os.getppid()} on host .*the parent"):
        trainer(run).fit()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / "run.lock").write_text(json.dumps(dict(parent, pid=int(dead.stdout))))
    assert trainer(run).fit()["steps"] == 4
    (run / "run.lock").write_text(json.dumps(dict(parent, host="elsewhere")))
    with pytest.raises(RunLocked, match="another host.*delete the lock file"):
        trainer(run, CFG.replace(steps=6)).fit()


# --- checkpoint files --------------------------------------------------------------------------

def test_bare_state_dict_and_truncated_files_are_errors_naming_the_file(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(tiny_model().state_dict(), bare)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(bare))} lacks \['model_class'.*bare state_dict"):
        load_model(bare)
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_vocoder(bare)

    t = trainer(tmp_path / "voc")
    t.fit()
    data = t.ckpt_path.read_bytes()
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(data[: len(data) // 2])
    for load in (load_vocoder, load_model, load_checkpoint):
        with pytest.raises(CheckpointError, match=rf"{re.escape(str(cut))} \(\d+ bytes\) cannot be read"):
            load(cut)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a Vocoder"):
        load_vocoder(t.ckpt_path)


def test_weights_that_do_not_fit_name_the_file(tmp_path):
    state = {"model": {}, "ema": {"nope": torch.zeros(1)}, "model_class": "Token2Mel",
             "model_config": tiny_model().config.to_dict()}
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: its 'ema' weights do not fit Token2Mel"):
        load_model(path)
