"""A small, resumable training loop shared by every objective.

A run folder holds ``config.json`` (resolved configs, seed, git revision),
``checkpoints/last.pt`` (``{model, ema, model_class, model_config, step, optimizer,
scheduler, config, rng, history}`` — a model loads from it alone), ``metrics.csv`` (the
loss log) and ``metrics.json``. Kill it and start it again: it continues from
the last checkpoint. A non-finite loss or gradient stops training with a message and keeps
the last good checkpoint.

While it trains, a run holds ``run.lock`` (:class:`imf.core.lock.RunLock`): a second process
on the same folder is refused, naming the owner. On start it removes what interrupted atomic
writes left behind (:func:`imf.core.runtime.sweep_temp_files`). A full disk during a
checkpoint raises :class:`imf.core.runtime.DiskFullError` naming the file; the previous
checkpoint is kept.

Data parallel (``torchrun --nproc_per_node N``, see :mod:`imf.core.distributed`) and gradient
accumulation: ``batch_size`` is the GLOBAL batch, ``batch_size = micro-batch x grad_accum x
processes``. Every process builds the same global batch (same data order, crops and noise: a
row's random draws do not depend on the number of processes) and computes the loss of its
own rows with the objective's ``rows=`` argument (:mod:`imf.flow.objectives`: each shard's
share of the global-batch loss); gradients are summed over micro-batches and processes, so 1
and N processes (and any ``grad_accum``) train the same weights up to float rounding, and a run
may resume with another number of processes. The one-process, ``grad_accum = 1`` path calls the
objective exactly as before (no ``rows``), so its draws and numbers are unchanged. Rank 0 holds
the lock and writes logs, checkpoints and metrics; every rank resumes from the same checkpoint.
An objective that takes no ``rows`` runs in one process without accumulation only.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from imf.core import distributed
from imf.core.checkpoints import load_checkpoint, load_weights
from imf.core.config import Config, require
from imf.core.lock import RunLock
from imf.core.runtime import (atomic_torch_save, atomic_write_json, atomic_write_text, git_revision, setup_threads,
                              sweep_temp_files)


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf."""


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    steps: int = 1500  # optimizer steps in total (a resumed run trains up to this)
    batch_size: int = 16  # utterances per optimizer step, over all processes and micro-batches (the global batch)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup: int = 100  # linear warm-up steps, then cosine decay to 10 %
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.999  # EMA of the weights used for evaluation
    ckpt_every: int = 100  # steps between checkpoints
    log_every: int = 10  # steps between loss-log rows
    seed: int = 0  # one seed per run: data order, noise, dropout
    threads: int = 0  # torch threads (0: all cores)
    on_nonfinite: str = "stop"  # "stop": raise, keep the last good checkpoint; "skip": skip the step and count it
    grad_accum: int = 1  # micro-batches per step and process: batch_size = micro x grad_accum x processes
    device: str = "cpu"  # "cpu" | "cuda" (cuda:LOCAL_RANK under torchrun) | "auto" (cuda when available)
    bf16: bool = False  # bf16 autocast of the objective on CUDA (ignored on CPU)
    keep_steps: tuple[int, ...] = ()  # steps whose checkpoint is also kept as checkpoints/step_<k>.pt (e.g. 05's equal wall)

    def validate(self) -> None:
        require(self.steps >= 1, "steps", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(0.0 <= self.ema_decay < 1.0, "ema_decay", "must lie in [0, 1)")
        require(self.ckpt_every >= 1 and self.log_every >= 1, "ckpt_every", "must be >= 1")
        require(self.on_nonfinite in ("stop", "skip"), "on_nonfinite", "must be 'stop' or 'skip'")
        require(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        require(self.device in ("cpu", "cuda", "auto"), "device", "must be 'cpu', 'cuda' or 'auto'")
        require(all(1 <= k <= self.steps for k in self.keep_steps), "keep_steps", f"must lie in 1..steps ({self.steps})")


RESUME_MAY_CHANGE = ("steps", "grad_accum", "device", "keep_steps")  # TrainConfig fields a resumed run may change


class _EpochPerm:
    """Batch ``step`` as a pure function of (step, n, batch_size, seed): a resumed run sees the
    same data order as an uninterrupted one. Each epoch is a fresh seeded permutation."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.perm = n, seed, -1, None

    def __call__(self, step: int, batch_size: int) -> list[int]:
        out = []
        for pos in range(step * batch_size, (step + 1) * batch_size):
            epoch, i = divmod(pos, self.n)
            if epoch != self.epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self.epoch, self.perm = epoch, torch.randperm(self.n, generator=g)
            out.append(int(self.perm[i]))
        return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 10 % of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


Objective = Callable[[nn.Module, dict[str, Any], torch.Generator], tuple[Tensor, dict[str, float]]]


def _finite_mean(values: list[float]) -> float:
    ok = [v for v in values if math.isfinite(v)]
    return sum(ok) / len(ok) if ok else float("nan")


class Trainer:
    """Train ``model`` on ``objective`` over ``dataset`` (a map-style dataset + ``collate``).

    ``objective(model, batch, generator) -> (loss, logs)``; an objective with state of its own
    (a GAN's discriminators and their optimizer) has ``checkpoint_state() -> dict | None`` and
    ``load_checkpoint_state(dict)``, saved in the checkpoint as ``objective``. ``params`` are the trainable
    parameters (default: all). ``extra_config`` (dicts of the objective's and data configs)
    is saved with the run and must match on resume.
    """

    def __init__(self, run_dir: str | Path, model: nn.Module, objective: Objective, dataset, collate: Callable,
                 cfg: TrainConfig, extra_config: dict[str, Any] | None = None, params: list | None = None,
                 progress: bool = True, desc: str = "train", on_checkpoint: Callable[["Trainer"], None] | None = None):
        self.run_dir = Path(run_dir)
        self.on_checkpoint = on_checkpoint  # called after each checkpoint (e.g. an evaluation during a benchmark)
        self.model, self.objective, self.dataset, self.collate = model, objective, dataset, collate
        self.cfg = cfg
        self.extra_config = extra_config or {}
        self.params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.progress, self.desc = progress, desc
        self.device = distributed.resolve_device(cfg.device)
        if self.device.type != "cpu":
            model.to(self.device)  # in place: the Parameter objects of ``params`` stay the same
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.generator = torch.Generator().manual_seed(cfg.seed)

    # -- persistence ---------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def _config_record(self) -> dict[str, Any]:
        return {"train": self.cfg.to_dict(), **self.extra_config,
                "model_class": type(self.model).__name__, "model_config": self.model.config.to_dict()}

    def save(self) -> None:
        state = {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "model_class": type(self.model).__name__, "model_config": self.model.config.to_dict(),
            "step": self.step, "optimizer": self.opt.state_dict(), "config": self._config_record(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(), "python": random.getstate()},
            "history": self.history, "git": git_revision(),
        }
        objective_state = getattr(self.objective, "checkpoint_state", None)  # e.g. a GAN's discriminators + optimizer
        if objective_state is not None and objective_state() is not None:
            state["objective"] = objective_state()
        atomic_torch_save(state, self.ckpt_path)
        if self.step in self.cfg.keep_steps:
            atomic_torch_save(state, self.step_path(self.step))
        self._write_logs()

    def step_path(self, step: int) -> Path:
        """The checkpoint kept at ``step`` (``TrainConfig.keep_steps``)."""
        return self.run_dir / "checkpoints" / f"step_{step}.pt"

    def try_resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        state = load_checkpoint(self.ckpt_path, require=("config", "model", "ema", "optimizer", "step", "history",
                                                          "rng"))
        old, new = dict(state["config"]), self._config_record()
        old_train, new_train = dict(old.pop("train")), dict(new.pop("train"))
        for k, v in TrainConfig().to_dict().items():
            old_train.setdefault(k, v)  # fields added since the checkpoint was written: their defaults
        for k in RESUME_MAY_CHANGE:  # a resumed run may train longer, on other devices or process counts
            old_train.pop(k, None), new_train.pop(k, None)
        if old != new or old_train != new_train:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            diff += sorted(f"train.{k}" for k in set(old_train) | set(new_train) if old_train.get(k) != new_train.get(k))
            raise ValueError(f"{self.ckpt_path}: existing run has a different config ({diff}); "
                             "use another run folder or delete this one to start afresh")
        load_weights(self.model, state["model"], self.ckpt_path, "model")
        load_weights(self.ema, state["ema"], self.ckpt_path, "ema")
        self.opt.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.history = state["history"]
        if "objective" in state:  # the objective's own state (see save)
            self.objective.load_checkpoint_state(state["objective"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if "numpy" in state["rng"]:  # checkpoints written before the numpy/python states were kept
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
        return True

    def _write_logs(self) -> None:
        if self.history:
            df = pd.DataFrame(self.history)
            atomic_write_text(self.run_dir / "metrics.csv", df.to_csv(index=False))

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train up to ``cfg.steps`` (resuming from ``checkpoints/last.pt`` if it exists); the summary dict.

        Raises :class:`imf.core.lock.RunLocked` if another process trains in ``run_dir``.
        """
        setup_threads(self.cfg.threads or distributed.threads_per_process())
        distributed.init()
        lock, err = (RunLock(self.run_dir) if distributed.is_main() else None), None
        if lock is not None:
            try:
                lock.acquire()
                sweep_temp_files(self.run_dir)
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks are told
                err = e
                lock.release()
        if not distributed.agree(err is None):  # else the other ranks would wait for rank 0 forever
            if err is not None:
                raise err
            raise RuntimeError(f"{self.run_dir}: rank 0 could not take the run (see its error)")
        try:
            return self._fit()
        finally:
            if lock is not None:
                lock.release()

    def _fit(self) -> dict[str, Any]:
        resumed_from = self.step if self.try_resume() else None
        main = distributed.is_main()
        if main:
            atomic_write_json(self.run_dir / "config.json",
                              {**self._config_record(), "seed": self.cfg.seed, "git": git_revision()})
        micro = self._micro_batch()
        perm = _EpochPerm(len(self.dataset), self.cfg.seed)
        self.model.train()
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc=self.desc, disable=not (self.progress and main),
                   dynamic_ncols=True)
        t_start, steps_run, acc = time.time(), 0, {}
        while self.step < self.cfg.steps:
            t0 = time.time()
            batch = self._to_device(self.collate([self.dataset[i] for i in perm(self.step, self.cfg.batch_size)]))
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, self.cfg)
            if micro is None:  # one process, no accumulation: the objective sees the whole batch
                with self._autocast():
                    loss, logs = self.objective(self.model, batch, self.generator)
                self.opt.zero_grad(set_to_none=True)
                nonfinite = not torch.isfinite(loss)
                if not nonfinite:
                    loss.backward()
            else:
                loss, logs = self._sharded_backward(batch, micro)
                nonfinite = not torch.isfinite(loss)
            if not nonfinite:
                gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
                nonfinite = not torch.isfinite(gnorm)
            if nonfinite:
                what = f"loss = {loss.item()}" if not torch.isfinite(loss) else f"gradient norm = {gnorm.item()}"
                if self.cfg.on_nonfinite == "stop":
                    raise TrainingDiverged(self._diverged_msg(what))
                self.opt.zero_grad(set_to_none=True)  # skip: no update, counted in the log
                logs, gnorm = {"loss": float("nan")}, torch.tensor(float("nan"))
            else:
                self.opt.step()
            logs = {**logs, "nonfinite": float(nonfinite)}
            ema_update(self.ema, self.model, self.cfg.ema_decay if self.step >= self.cfg.warmup else 0.0)
            self.step += 1
            steps_run += 1
            for k, v in {**logs, "grad_norm": gnorm.item(), "sec_per_step": time.time() - t0}.items():
                acc.setdefault(k, []).append(v)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                row = {"step": self.step, "lr": lr_at(self.step - 1, self.cfg),
                       **{k: _finite_mean(v) for k, v in acc.items() if k != "nonfinite"},
                       "nonfinite": sum(acc["nonfinite"])}
                self.history.append(row)
                acc = {}
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            if main and (self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps
                         or self.step in self.cfg.keep_steps):
                self.save()
                if self.on_checkpoint is not None:
                    self.on_checkpoint(self)
            bar.update(1)
        bar.close()
        self.model.eval()
        summary = {"steps": self.step, "resumed_from": resumed_from, "steps_this_session": steps_run,
                   "seconds_this_session": time.time() - t_start,
                   "final_loss": self.history[-1]["loss"] if self.history else None}
        if steps_run:
            summary["sec_per_step"] = summary["seconds_this_session"] / steps_run
        if main:
            atomic_write_json(self.run_dir / "metrics.json", summary)
        distributed.barrier()  # the last checkpoint is on disk before any rank returns
        return summary

    # -- data parallel and accumulation ---------------------------------------------------
    def _micro_batch(self) -> int | None:
        """Rows per micro-batch and process; None for the plain one-process path."""
        world, accum = distributed.world_size(), self.cfg.grad_accum
        if world == 1 and accum == 1:
            return None
        if self.cfg.batch_size % (world * accum):
            raise ValueError(f"TrainConfig.batch_size = {self.cfg.batch_size} (the global batch) is not divisible by "
                             f"grad_accum ({accum}) x processes ({world}); choose a multiple of {world * accum}")
        # an nn.Module objective's __call__ hides its forward's parameters
        call = self.objective.forward if isinstance(self.objective, nn.Module) else self.objective
        if "rows" not in inspect.signature(call).parameters:
            raise TypeError(f"{self.desc}: objective {getattr(self.objective, '__name__', self.objective)!r} takes no "
                            f"'rows' argument, so it cannot run sharded (processes = {world}, grad_accum = {accum})")
        return self.cfg.batch_size // (world * accum)

    def _sharded_backward(self, batch: dict[str, Any], micro: int) -> tuple[Tensor, dict[str, float]]:
        """Gradients of this process's micro-batches, summed over processes; (global loss, summed logs).

        Each micro-batch restarts the generator from the step's state, so the objective makes the
        whole batch's draws every time and keeps its own rows: after the loop the generator is
        where one whole-batch call leaves it."""
        self.opt.zero_grad(set_to_none=True)
        start, sums, keys, bad = self.generator.get_state(), None, None, 0.0
        for a in range(self.cfg.grad_accum):
            self.generator.set_state(start)
            with self._autocast():
                loss, logs = self.objective(self.model, batch, self.generator,
                                            rows=distributed.shard_rows(self.cfg.batch_size, micro, a))
            if torch.isfinite(loss):
                loss.backward()
            else:
                bad += 1.0
            keys = keys or sorted(logs)
            row = torch.tensor([float(loss.detach())] + [float(logs[k]) for k in keys], dtype=torch.float64)
            sums = row if sums is None else sums + row
        sums = distributed.all_reduce_sum(torch.cat([sums, torch.tensor([bad], dtype=torch.float64)]))
        distributed.all_reduce_grads(self.params)
        loss = torch.tensor(float("nan") if sums[-1] > 0 else float(sums[0]))
        return loss, {k: float(v) for k, v in zip(keys, sums[1:-1].tolist())}

    def _autocast(self):
        if self.cfg.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _diverged_msg(self, what: str) -> str:
        kept = f"the last good checkpoint {self.ckpt_path} is kept" if self.ckpt_path.exists() else "no checkpoint yet"
        return f"training stopped at step {self.step}: {what}; {kept}"
