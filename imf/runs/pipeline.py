"""Run the pipeline's notebooks with papermill, in order, into ``results/runs/``.

``python -m imf.runs.pipeline --profile small`` is what ``make reproduce`` calls. Each notebook
gets ``PROFILE`` injected into its ``parameters`` cell; its executed copy goes to
``results/runs/<name>.ipynb`` and its artefacts to ``results/<name>/``. A failing notebook
stops the pipeline with its name; executed copies of earlier notebooks are kept.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from imf.core.runtime import atomic_path, repo_root

NOTEBOOKS = [
    "00_corpus",
    "00_vocoder",
    "01_teacher",
    "02_distill",
    "03_nfe_curves",
    "04_o3s",
    "05_meanflow_vs_imf",
    "06_listen",
    "07_token2wav",
]


def notebook_path(name: str) -> Path:
    return repo_root() / "notebooks" / f"{name}.ipynb"


def run_notebook(name: str, out_dir: str | os.PathLike, parameters: dict[str, Any] | None = None,
                 timeout: int | None = None) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with papermill; return the executed copy's path.

    The copy is written to a temporary file and renamed on success, so a failed run never
    leaves a half-written notebook over a good one (papermill's own partial output is kept
    beside it as ``<name>.failed.ipynb`` for debugging).
    """
    import papermill as pm

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the kernel, read when it imports torch
    src = notebook_path(name)
    if not src.exists():
        raise FileNotFoundError(f"notebook {src} does not exist; known: {NOTEBOOKS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    failed = out_dir / f"{name}.failed.ipynb"
    with atomic_path(out) as tmp:
        try:
            pm.execute_notebook(
                str(src), str(tmp), parameters=parameters or {}, cwd=str(src.parent),
                kernel_name="python3", progress_bar=False, execution_timeout=timeout, log_output=False,
            )
        except BaseException:
            if tmp.exists():
                os.replace(tmp, failed)
            raise
    if failed.exists():
        failed.unlink()
    return out


def available() -> list[str]:
    return [n for n in NOTEBOOKS if notebook_path(n).exists()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="small", choices=["tiny", "small", "paper"])
    p.add_argument("--only", nargs="*", help="run only these notebooks (names without .ipynb)")
    p.add_argument("--from", dest="start", help="start from this notebook")
    args = p.parse_args(argv)
    from imf.runs.report import build_readme, results_dir

    names = args.only or available()
    if args.start:
        names = names[names.index(args.start):]
    out_dir = results_dir() / "runs"
    for name in names:
        t0 = time.time()
        print(f"[imf.runs.pipeline] {name} (profile {args.profile}) ...", flush=True)
        try:
            run_notebook(name, out_dir, {"PROFILE": args.profile})
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            print(f"[imf.runs.pipeline] {name} FAILED after {time.time() - t0:.0f}s: {e}", file=sys.stderr)
            print(f"[imf.runs.pipeline] partial copy: {out_dir / (name + '.failed.ipynb')}", file=sys.stderr)
            return 1
        print(f"[imf.runs.pipeline] {name} done in {time.time() - t0:.0f}s -> {out_dir / (name + '.ipynb')}", flush=True)
    build_readme()
    print(f"[imf.runs.pipeline] results: {results_dir() / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
