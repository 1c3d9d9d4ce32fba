"""Data-parallel helpers: one process per device under ``torchrun`` (gloo on CPU, NCCL on GPU).

Launch any training entry point with ``torchrun --nproc_per_node N -m imf.train ...`` (or
``python -m torch.distributed.run``); :func:`init` reads torchrun's ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` environment and joins the process group. Without those
variables (a plain ``python`` or a notebook kernel) every helper here is the identity of a
world of one process: rank 0, nothing to reduce or gather.

How :class:`imf.train.trainer.Trainer` uses them (world-size invariance): every rank draws the
SAME global batch, crops and noise (same seed, same order), and computes the loss and
gradients of its own rows only (:func:`shard_rows`); the loss terms are normalised by the
global batch, so summing gradients over ranks (:func:`all_reduce_grads`) gives the gradient
of the global-batch loss, whatever the number of processes.
"""
from __future__ import annotations

import atexit
import datetime
import os
from typing import Any, Sequence

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when torchrun started this process as part of a world of more than one."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(timeout_s: float = 1800.0) -> bool:
    """Join torchrun's process group once (NCCL when CUDA is available, else gloo); True if distributed.

    Idempotent; a no-op (False) outside torchrun. On CUDA each process uses ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched() or not dist.is_available():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(_destroy)  # an entry point that returns or raises without shutdown() still leaves the group
    return True


def shutdown() -> None:
    """Leave the process group at the end of an entry point: wait for every rank, then destroy it.

    A gloo group left to the interpreter's teardown can abort the process ("terminate called without an active
    exception", SIGABRT) after its work is done, failing the whole torchrun launch. No-op when not distributed.
    """
    if dist.is_available() and dist.is_initialized():
        if active():
            dist.barrier()
        _destroy()


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """A process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def threads_per_process() -> int | None:
    """Under torchrun on CPU: the cores divided among this node's processes (None: not launched,
    keep the caller's default), so N processes do not each take every core."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if not launched() or local <= 1 or torch.cuda.is_available() or "IMF_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // local)


def is_main() -> bool:
    """Rank 0: the process that logs, writes checkpoints and metrics, and holds the run lock."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` (this process's ``cuda:LOCAL_RANK``) or ``"auto"`` (cuda if available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank() if launched() else torch.cuda.current_device())
    return torch.device(name)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over ranks (a new tensor on ``values``' device; the input itself if not distributed)."""
    if not active():
        return values
    buf = values.detach().to(_comm_device(), torch.float64).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(values.device, values.dtype)


def agree(ok: bool) -> bool:
    """True on every rank iff ``ok`` is true on every rank (e.g. rank 0 took the run lock)."""
    return bool(all_reduce_sum(torch.tensor([0.0 if ok else 1.0]))[0] == 0)


def all_reduce_grads(params: Sequence[torch.nn.Parameter]) -> None:
    """Replace each ``p.grad`` by its SUM over ranks, in one flat buffer.

    A parameter with no gradient on any rank keeps ``grad = None`` (AdamW then leaves it alone,
    as in one process); one with a gradient on some rank gets zeros elsewhere.
    """
    if not active() or not params:
        return
    dev = _comm_device()
    has = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=dev)
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1).to(dev) for p in params])
    dist.all_reduce(has, op=dist.ReduceOp.SUM)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, h in zip(params, has.tolist()):
        n = p.numel()
        p.grad = None if h == 0 else flat[offset:offset + n].view_as(p).to(p.device, p.dtype).clone()
        offset += n


def shard_range(n: int, r: int | None = None, w: int | None = None) -> range:
    """The contiguous block of ``range(n)`` that rank ``r`` of ``w`` owns (sizes differ by at most one)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    lo, hi = (n * r) // w, (n * (r + 1)) // w
    return range(lo, hi)


def shard_rows(batch_size: int, micro: int, accum_index: int, r: int | None = None) -> slice:
    """Rows of micro-batch ``accum_index`` of rank ``r`` in a global batch: rank ``r`` owns the
    contiguous rows ``[r * accum * micro, (r + 1) * accum * micro)``, split into ``accum`` micro-batches."""
    r = rank() if r is None else r
    accum = batch_size // (micro * world_size())
    start = (r * accum + accum_index) * micro
    return slice(start, start + micro)


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (N_r, ...) along dim 0 in rank order, on every rank.

    Trailing shapes must agree; ``x`` returns unchanged when not distributed.
    """
    if not active():
        return x
    parts = all_gather_objects(x.detach().cpu())
    return torch.cat(parts).to(x.device)
