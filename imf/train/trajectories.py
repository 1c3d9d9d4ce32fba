"""Trajectory reuse in practice: the on-disk trajectory cache of a guided teacher, and distillation from it.

A cache folder holds float16 memory-mapped arrays (entry ``n`` = training utterance ``n // noises_per_utt``
with its own noise ``z_0``, seeded by ``(seed, n)``)::

    states.f16      (n, K+1, C, T)  Euler states Z_k of the guided teacher on the K-step uniform grid
    velocities.f16  (n, K, C, T)    its guided velocities V_k = v^cfg(Z_k, g_k)
    z_1.f16         (n, C, T)       the data crop (for fresh data-path rows), normalised
    prompt.f16      (n, C, Tp)      the speaker prompt;  tokens.i64 (n, T);  mask.u8 (n, T);  prompt_mask.u8 (n, Tp)
    meta.json       the key (teacher fingerprint, grid, cfg_scale, data), ``done`` (entries written so far) and
                    the build's cost ``teacher_rows`` (teacher network rows) and ``teacher_seconds``

``meta.json`` is rewritten atomically after each flushed chunk, so an interrupted build continues where it
stopped and ends with the same bytes as an uninterrupted one; ``complete`` is set last. A cache whose key
differs (another teacher, guidance, grid or data) is refused with :class:`TrajectoryCacheMismatch`.
The maths (pairs, targets, the loss) is :mod:`imf.flow.trajectories`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from imf.core.checkpoints import module_fingerprint
from imf.core.counting import count_rows
from imf.core.lock import RunLock
from imf.core.runtime import atomic_write_json, seed_everything
from imf.data import Corpus, MelTokenDataset, collate
from imf.data.config import DataConfig
from imf.flow.schedules import uniform
from imf.flow.solvers import Guided
from imf.flow.trajectories import TrajectoryConfig, euler_trajectory, trajectory_loss
from imf.models import freeze, student_from_teacher
from imf.train.token2mel import cond_of, load_for_corpus
from imf.train.trainer import TrainConfig, Trainer

FORMAT = 2  # 2: crops are seeded windows anywhere in the utterance (1: its first frames)


class TrajectoryCacheMismatch(ValueError):
    """A trajectory cache was written for another teacher, guidance, grid or data."""


def teacher_fingerprint(teacher: nn.Module, cfg_scale: float) -> str:
    """sha256 of the teacher's state dict (names, shapes, bytes) and the guidance scale: the cache's key."""
    return module_fingerprint(teacher, f"w={float(cfg_scale)!r}")


class TrajectoryCache:
    """An opened (possibly incomplete) cache folder: memmaps and ``meta`` (see the module docstring)."""

    ARRAYS = {"states": ("f16", np.float16), "velocities": ("f16", np.float16), "z_1": ("f16", np.float16),
              "prompt": ("f16", np.float16), "tokens": ("i64", np.int64), "mask": ("u8", np.uint8),
              "prompt_mask": ("u8", np.uint8)}

    def __init__(self, root: str | Path, meta: dict[str, Any], mode: str = "r"):
        self.root, self.meta = Path(root), meta
        n, k, c, t, tp = meta["n"], meta["grid_nfe"], meta["channels"], meta["frames"], meta["prompt_frames"]
        shapes = {"states": (n, k + 1, c, t), "velocities": (n, k, c, t), "z_1": (n, c, t), "prompt": (n, c, tp),
                  "tokens": (n, t), "mask": (n, t), "prompt_mask": (n, tp)}
        self.arrays = {name: np.memmap(self.root / f"{name}.{ext}", dtype=dt, mode=mode, shape=shapes[name])
                       for name, (ext, dt) in self.ARRAYS.items()}

    @property
    def time_grid(self) -> Tensor:
        return torch.tensor(self.meta["time_grid"], dtype=torch.float32)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def __len__(self) -> int:
        return int(self.meta["n"])

    def item(self, i: int) -> dict[str, Any]:
        a = self.arrays
        return {"index": i, "states": torch.from_numpy(np.asarray(a["states"][i], dtype=np.float32)),
                "velocities": torch.from_numpy(np.asarray(a["velocities"][i], dtype=np.float32)),
                "z_1": torch.from_numpy(np.asarray(a["z_1"][i], dtype=np.float32)),
                "prompt": torch.from_numpy(np.asarray(a["prompt"][i], dtype=np.float32)),
                "tokens": torch.from_numpy(np.array(a["tokens"][i])),
                "mask": torch.from_numpy(np.array(a["mask"][i])).bool(),
                "prompt_mask": torch.from_numpy(np.array(a["prompt_mask"][i])).bool()}


def cache_key(fingerprint: str, cfg: TrajectoryConfig, frames: int, prompt_frames: int, data_key: str,
              seed: int) -> dict[str, Any]:
    """What must match for a cache to be reused (``data_key`` names the data, e.g. the corpus folder)."""
    return {"format": FORMAT, "teacher": fingerprint, "cfg_scale": cfg.cfg_scale, "grid_nfe": cfg.grid_nfe,
            "time_grid": [float(v) for v in uniform(cfg.grid_nfe).tolist()], "noises_per_utt": cfg.noises_per_utt,
            "max_utts": cfg.max_utts, "frames": frames, "prompt_frames": prompt_frames, "data": data_key, "seed": seed}


def _check_key(meta: dict[str, Any], key: dict[str, Any], root: Path) -> None:
    diff = sorted(k for k in key if meta.get(k) != key[k])
    if diff:
        who = ("another teacher (its fingerprint differs: other weights or guidance)" if "teacher" in diff
               else "other settings")
        raise TrajectoryCacheMismatch(
            f"trajectory cache {root} was written by {who}; differing key(s) {diff}: "
            + ", ".join(f"{k} cached {meta.get(k)!r} != requested {key[k]!r}" for k in diff if k != "time_grid")
            + ". Use another cache folder, or delete this one to rebuild it")


def open_cache(root: str | Path, teacher: nn.Module | None = None, cfg_scale: float | None = None) -> TrajectoryCache:
    """A complete cache for reading; with ``teacher`` its fingerprint must match (else :class:`TrajectoryCacheMismatch`)."""
    root = Path(root)
    meta = json.loads((root / "meta.json").read_text())
    if not meta.get("complete"):
        raise ValueError(f"trajectory cache {root} is incomplete ({meta.get('done')}/{meta.get('n')} entries): "
                         "run build_trajectories again to finish it")
    if teacher is not None:
        fp = teacher_fingerprint(teacher, meta["cfg_scale"] if cfg_scale is None else cfg_scale)
        if fp != meta["teacher"]:
            _check_key(meta, {"teacher": fp}, root)
    return TrajectoryCache(root, meta, "r")


def train_crops(corpus: Corpus, data: DataConfig, seed: int = 0) -> MelTokenDataset:
    """The training utterances as the cache stores them: one window of ``max_frames`` frames and one prompt each,
    both drawn from ``(seed, id)`` (``crop="seeded"``), so an utterance longer than the window is not always cut
    at the same end and a rebuilt cache has the same crops."""
    return MelTokenDataset(corpus, split="train", max_frames=data.max_frames, prompt_frames=data.prompt_frames,
                           crop="seeded", normalize=True, seed=seed)


@torch.no_grad()
def build_trajectories(teacher: nn.Module, dataset, root: str | Path, cfg: TrajectoryConfig, frames: int,
                       prompt_frames: int, seed: int = 0, data_key: str = "", progress: bool = True,
                       stop_after: int | None = None) -> TrajectoryCache:
    """Integrate the guided ``teacher`` (frozen, unguided module) once per (item of ``dataset``, noise) and store
    the trajectories in ``root``, resuming an interrupted build.

    ``dataset``: deterministic items like :class:`imf.data.MelTokenDataset`'s (``z_1`` (C, T <= frames), ``tokens``,
    ``prompt`` (C, Tp <= prompt_frames)), e.g. :func:`train_crops`. ``stop_after``: stop after this many chunks
    (an interruption, for tests). Returns the cache (incomplete only if stopped early).
    """
    root = Path(root)
    key = cache_key(teacher_fingerprint(teacher, cfg.cfg_scale), cfg, frames, prompt_frames, data_key, seed)
    if (root / "meta.json").exists():
        meta = json.loads((root / "meta.json").read_text())
        _check_key(meta, key, root)
        if meta["complete"]:
            return TrajectoryCache(root, meta, "r")
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root):  # one builder per cache: a second process gets RunLocked naming the first
        return _build(teacher, dataset, root, cfg, key, progress, stop_after)


def _build(teacher: nn.Module, dataset, root: Path, cfg: TrajectoryConfig, key: dict[str, Any], progress: bool,
           stop_after: int | None) -> TrajectoryCache:
    """:func:`build_trajectories` under the cache's lock: create or reopen the arrays and fill what is missing."""
    frames, prompt_frames, seed = key["frames"], key["prompt_frames"], key["seed"]
    n_utts = len(dataset) if cfg.max_utts == 0 else min(cfg.max_utts, len(dataset))
    if (root / "meta.json").exists():
        meta = json.loads((root / "meta.json").read_text())
        _check_key(meta, key, root)
        cache = TrajectoryCache(root, meta, "r+")
    else:
        meta = {**key, "n": n_utts * cfg.noises_per_utt, "channels": int(dataset[0]["z_1"].shape[0]), "done": 0,
                "complete": False}
        cache = TrajectoryCache(root, meta, "w+")
        atomic_write_json(root / "meta.json", meta)
    grid, a, n = cache.time_grid, cache.arrays, len(cache)
    guided = Guided(teacher, cfg.cfg_scale)
    bar = tqdm(total=n, initial=meta["done"], desc=f"teacher trajectories (K={cfg.grid_nfe})", disable=not progress)
    chunks = 0
    while meta["done"] < n and (stop_after is None or chunks < stop_after):
        lo, hi = meta["done"], min(n, meta["done"] + cfg.build_batch)
        b = collate([dataset[e // cfg.noises_per_utt] for e in range(lo, hi)])
        z_1, tok, mask = _pad_to(b["z_1"], frames), _pad_to(b["tokens"], frames), _pad_to(b["mask"], frames)
        prompt, pmask = _pad_to(b["prompt"], prompt_frames), _pad_to(b["prompt_mask"], prompt_frames)
        cond = {"tokens": tok, "mask": mask, "prompt": prompt, "prompt_mask": pmask}
        z_0 = torch.stack([torch.randn(z_1.shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
                           for e in range(lo, hi)])
        enc = teacher.encode_cond(cond) if hasattr(teacher, "encode_cond") else cond
        t0 = time.perf_counter()
        with count_rows(teacher) as box:
            states, velocities = euler_trajectory(guided, z_0, grid, enc)
        a["states"][lo:hi] = states.numpy().astype(np.float16)
        a["velocities"][lo:hi] = velocities.numpy().astype(np.float16)
        a["z_1"][lo:hi], a["prompt"][lo:hi] = z_1.numpy().astype(np.float16), prompt.numpy().astype(np.float16)
        a["tokens"][lo:hi], a["mask"][lo:hi], a["prompt_mask"][lo:hi] = tok.numpy(), mask.numpy(), pmask.numpy()
        for arr in a.values():
            arr.flush()
        meta["done"] = hi
        meta["complete"] = hi == n
        meta["teacher_rows"] = meta.get("teacher_rows", 0) + box["rows"]  # the cost, kept for whoever reuses it
        meta["teacher_seconds"] = meta.get("teacher_seconds", 0.0) + time.perf_counter() - t0
        atomic_write_json(root / "meta.json", meta)  # after the flush: "done" never runs ahead of the bytes
        bar.update(hi - lo)
        chunks += 1
    bar.close()
    return cache


def _pad_to(x: Tensor, frames: int) -> Tensor:
    """Zero-pad the last axis of ``x`` to ``frames``."""
    if x.shape[-1] > frames:
        raise ValueError(f"a batch has {x.shape[-1]} frames, more than the cache's {frames}")
    return torch.nn.functional.pad(x, (0, frames - x.shape[-1]))


class CacheDataset(torch.utils.data.Dataset):
    """The cache's entries as training items (:meth:`TrajectoryCache.item`)."""

    def __init__(self, cache: TrajectoryCache):
        if not cache.complete:
            raise ValueError(f"trajectory cache {cache.root} is incomplete: finish building it first")
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.cache.item(i)


def collate_cache(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack cache items (all stored at the same length)."""
    return {k: torch.stack([it[k] for it in items]) if k != "index" else [it[k] for it in items] for k in items[0]}


def trajectory_trainer(student: nn.Module, cache: TrajectoryCache, run_dir: str | Path, train_cfg: TrainConfig,
                       traj_cfg: TrajectoryConfig, teacher: nn.Module | None = None, params: list | None = None,
                       extra_config: dict[str, Any] | None = None, teacher_rows: dict[str, int] | None = None,
                       progress: bool = True, on_checkpoint: Callable[[Trainer], None] | None = None) -> Trainer:
    """A :class:`Trainer` of ``student`` on pairs drawn from ``cache`` (:func:`trajectory_loss`). ``teacher``
    (frozen, unguided) is only needed when ``traj_cfg.p_fresh > 0``; its rows are counted into ``teacher_rows``."""
    if traj_cfg.p_fresh > 0 and teacher is None:
        raise ValueError(f"trajectory_trainer: p_fresh = {traj_cfg.p_fresh} needs the teacher")
    grid, counter = cache.time_grid, {} if teacher_rows is None else teacher_rows
    guided = None if teacher is None else Guided(teacher, traj_cfg.cfg_scale)

    def objective(m, batch, g):
        cond = {k: batch[k] for k in ("tokens", "mask", "prompt", "prompt_mask")}
        if guided is None or traj_cfg.p_fresh == 0:
            return trajectory_loss(m, batch["states"], batch["velocities"], grid, cond, batch["mask"], traj_cfg, g)
        tc = teacher.encode_cond(cond) if hasattr(teacher, "encode_cond") else None
        with count_rows(teacher, counter):
            return trajectory_loss(m, batch["states"], batch["velocities"], grid, cond, batch["mask"], traj_cfg, g,
                                   teacher=guided, z_1=batch["z_1"], teacher_cond=tc)

    extra = {"trajectory": traj_cfg.to_dict(), "teacher_fingerprint": cache.meta["teacher"], **(extra_config or {})}
    return Trainer(run_dir, student, objective, CacheDataset(cache), collate_cache, train_cfg, params=params,
                   extra_config=extra, progress=progress, desc=f"student (trajectory reuse, K={traj_cfg.grid_nfe})",
                   on_checkpoint=on_checkpoint)


def distill_trajectories(corpus, teacher_ckpt: str | Path, cache_dir: str | Path, run_dir: str | Path,
                         train_cfg: TrainConfig, traj_cfg: TrajectoryConfig = TrajectoryConfig(),
                         data_cfg: DataConfig = DataConfig(), freeze_mode: str = "encoder", progress: bool = True,
                         init: str | Path | None = None, teacher_rows: dict[str, int] | None = None,
                         on_checkpoint: Callable[[Trainer], None] | None = None, cache_seed: int = 0
                         ) -> tuple[Trainer, dict[str, Any]]:
    """IntMeanFlow by trajectory reuse: build (or reuse, or finish) the cache of ``teacher_ckpt``'s guided
    trajectories in ``cache_dir``, then train the student on pairs drawn from it (:func:`trajectory_loss`;
    no teacher call unless ``traj_cfg.p_fresh > 0``). Resumable like :func:`imf.train.token2mel.distill`.
    ``teacher_rows``: a dict whose ``rows``/``calls`` count every teacher evaluation (build and fresh rows,
    :func:`imf.core.counting.count_rows`); ``on_checkpoint(trainer)``: called after each checkpoint;
    ``cache_seed``: the noises and prompts of the cache (independent of the training seed, so stages share it).
    """
    seed_everything(train_cfg.seed)
    teacher = load_for_corpus(teacher_ckpt, corpus, "teacher")
    counter = {} if teacher_rows is None else teacher_rows
    with count_rows(teacher, counter):
        cache = build_trajectories(teacher, train_crops(corpus, data_cfg, cache_seed), cache_dir, traj_cfg,
                                   data_cfg.max_frames, data_cfg.prompt_frames, cache_seed, str(corpus.root), progress)
    student = student_from_teacher(teacher) if init is None else load_for_corpus(init, corpus, "init")
    student.train()
    params = freeze(student, freeze_mode)
    trainer = trajectory_trainer(student, cache, run_dir, train_cfg, traj_cfg, teacher, params,
                                 {"data": data_cfg.to_dict(), "freeze": freeze_mode, "teacher": str(teacher_ckpt),
                                  "cache": str(cache_dir), "corpus": str(corpus.root),
                                  **({} if init is None else {"init": str(init)})},
                                 counter, progress, on_checkpoint)
    return trainer, trainer.fit()


__all__ = ["CacheDataset", "TrajectoryCache", "TrajectoryCacheMismatch", "build_trajectories", "cache_key",
           "collate_cache", "distill_trajectories", "open_cache", "teacher_fingerprint", "train_crops",
           "trajectory_trainer"]
