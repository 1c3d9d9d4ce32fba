"""Process-level helpers: threads, seeding, atomic writes, run folders, git revision.

Atomic writes: :func:`atomic_path` yields ``<dir>/.<name>.<random>.tmp<ext>`` and renames it
over ``<dir>/<name>`` only when the body succeeds. A process killed in the middle leaves that
temporary file behind; :func:`sweep_temp_files` removes exactly these (the trainer sweeps its
run folder when it starts, the pipeline its results folder). A write that runs out of space
raises :class:`DiskFullError` naming the file; the previous file is kept.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch


def setup_threads(n: int | None = None) -> int:
    """Use `n` torch threads (default: all cores) with passive OpenMP waiting.

    Measured here: default OpenMP spinning made a training step 11x slower when another
    process held a core, so we set OMP_WAIT_POLICY=PASSIVE before any parallel region runs.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    n = n or int(os.environ.get("IMF_THREADS", 0)) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    """The one seeding call of a run (python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class DiskFullError(OSError):
    """No space left on the device (or quota exceeded) while writing a file; names the file."""


#: What :func:`atomic_path` names its temporary files: ``.<name>.<8 random chars>.tmp<ext>``
#: (``tempfile.mkstemp`` draws the 8 characters from ``[a-z0-9_]``).
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<ext>.*)$")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
#: torch.save to a path reports a short write as "[enforce fail at inline_container.cc:...]
#: ... unexpected pos ..." or "... file write failed" without errno or path
_TORCH_SHORT_WRITE = ("unexpected pos", "file write failed")


def is_temp_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is named like a temporary file of :func:`atomic_path`."""
    m = _TMP_RE.match(Path(path).name)
    return bool(m) and m["ext"] == Path(m["name"]).suffix


def sweep_temp_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the leftovers of interrupted atomic writes under ``folder``; return their paths.

    Only files named exactly as :func:`atomic_path` names its temporaries
    (``.<name>.<8 chars>.tmp<ext>`` with ``<ext>`` the suffix of ``<name>``) are removed, so
    a user's own ``.something.tmp`` files are left alone. Call it when nothing else writes
    into ``folder`` (the trainer does it holding its run lock). A missing folder sweeps nothing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")):
        if p.is_file() and is_temp_file(p):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_full(e: BaseException, folder: Path) -> bool:
    """Did ``e`` come from a write that ran out of space in ``folder``?"""
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
        return True
    if isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_SHORT_WRITE):
        free = _free_bytes(folder)  # measured while the partial file still holds its blocks
        return free is not None and free < 1 << 20
    return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only on success.

    The temporary file gets the mode a plain ``open(path, "w")`` would give
    (``0o666 & ~umask``), not ``mkstemp``'s 0600. If the body runs out of disk space, raises
    :class:`DiskFullError` naming ``path`` (the temporary file is removed, ``path`` is kept).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as e:
        if e.errno in _FULL_ERRNOS:
            raise DiskFullError(e.errno, f"no space left on device (disk full): cannot create a file next to "
                                f"{path}", str(path)) from e
        raise
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            if isinstance(e, DiskFullError) or not _disk_full(e, path.parent):
                raise
            free = _free_bytes(path.parent)
            kept = f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"
            raise DiskFullError(errno.ENOSPC, f"no space left on device (disk full) while writing {path}; "
                                f"{kept}; {'?' if free is None else free // 1024} KiB free on its file system "
                                f"(was: {e})", str(path)) from e
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_path`.

    Written through a Python file object, so a full disk surfaces as ``OSError(ENOSPC)``
    (torch's own file writer reports only "unexpected pos"); the archive's inner folder is
    then named ``archive`` rather than after the random temporary file.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """The current git commit (with '-dirty' if the tree has changes), or 'unknown'."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def repo_root() -> Path:
    """The checkout root (parent of the `imf` package; this file is imf/core/runtime.py)."""
    return Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """``$IMF_DATA`` or ``<repo>/data``: where corpora are built."""
    return Path(os.environ.get("IMF_DATA", repo_root() / "data"))


def runs_root() -> Path:
    """``$IMF_RUNS`` or ``<repo>/runs``: where each profile's run folders live."""
    return Path(os.environ.get("IMF_RUNS", repo_root() / "runs"))


def process_pool(workers: int, initializer: Callable[[], None] | None = None) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` processes that is safe to start from a process with threads.

    Plain ``fork`` copies locks held by other threads (torch's, a judge's runtime, Jupyter's) into
    the child, which can then hang for ever (seen: a corpus build forked after the WavLM judge's
    tests hung in ``nn.Module.__init__``). ``forkserver`` forks from a clean single-threaded server
    that has imported torch once, so workers start fast and never inherit a held lock; where it
    does not exist (Windows, macOS default) ``spawn``. Functions sent to it must be module-level.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        ctx.set_forkserver_preload(["torch"])
    return cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer)
