"""Run the pipeline's notebooks with papermill, in order, into ``results/runs/``.

``python -m imf.runs.pipeline --profile small`` is what ``make reproduce`` calls. Each notebook
gets ``PROFILE`` injected into its ``parameters`` cell; its executed copy goes to
``results/runs/<name>.ipynb`` and its artefacts to ``results/<name>/``. A failing notebook
stops the pipeline with its name; executed copies of earlier notebooks are kept.

Before anything runs, every selected notebook must exist and accept the given parameters
(:func:`imf.runs.params.check`: declared names, the default's type); ``--only``/``--from`` take
the names of :data:`NOTEBOOKS` only (argparse error, exit code 2, with a close match).
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from pathlib import Path
from typing import Any

from imf.core.runtime import atomic_path, repo_root, sweep_temp_files
from imf.runs.params import check
from imf.runs.report import build_readme, results_dir
from imf.viz.widgets import mark_offline

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
    beside it as ``<name>.failed.ipynb`` for debugging). ``parameters`` are checked against the
    notebook's declared ones before papermill starts (:class:`imf.runs.params.ParameterError`).
    """
    import papermill as pm  # heavy (nbclient, jupyter); only a run needs it

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the kernel, read when it imports torch
    src = notebook_path(name)
    if not src.exists():
        raise FileNotFoundError(f"notebook {src} does not exist; known: {NOTEBOOKS}")
    parameters = check(src, parameters or {})
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
        offline_view(tmp)
    if failed.exists():
        failed.unlink()
    trust(out)
    return out


def offline_view(path: str | os.PathLike) -> None:
    """Make an executed copy's saved widgets say that they need a kernel (:func:`imf.viz.widgets.mark_offline`:
    their controls disabled, their status lines a note). The widget state itself is nbclient's
    (``store_widget_state``, on by default in papermill): the last state of every widget, so progress
    bars show where they ended."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    if mark_offline(nb):
        nbformat.write(nb, str(path))


def trust(path: str | os.PathLike) -> None:
    """Sign an executed notebook with this user's Jupyter notary, as JupyterLab's "Trust" does.

    papermill's copies are otherwise untrusted when opened: their widget views and progress bars
    show as frozen text until the reader trusts them by hand. The signature is kept in the
    user's Jupyter data folder (``$JUPYTER_DATA_DIR``), so it holds for whoever ran the pipeline.
    """
    import nbformat
    from nbformat.sign import NotebookNotary

    NotebookNotary().sign(nbformat.read(str(path), as_version=4))


def available() -> list[str]:
    return [n for n in NOTEBOOKS if notebook_path(n).exists()]


def notebook_name(value: str) -> str:
    """argparse type of ``--only``/``--from``: one of :data:`NOTEBOOKS` (``.ipynb`` and a folder are dropped)."""
    name = Path(value).name.removesuffix(".ipynb")
    if name not in NOTEBOOKS:
        close = difflib.get_close_matches(name, NOTEBOOKS, n=1)
        raise argparse.ArgumentTypeError(f"unknown notebook {value!r}" + (f" (did you mean {close[0]}?)" if close else "")
                                         + f"; choose from {', '.join(NOTEBOOKS)}")
    return name


def selected(only: list[str] | None, start: str | None) -> list[str]:
    """The notebooks to run: ``only`` in the order given (else every notebook present, in pipeline order),
    without those before ``start`` in pipeline order. A named notebook whose file is missing is a
    ``FileNotFoundError`` naming it."""
    names = list(only) if only else available()
    if start:
        names = [n for n in names if NOTEBOOKS.index(n) >= NOTEBOOKS.index(start)]
    if not names:
        raise FileNotFoundError(f"no notebook to run (--only {only}, --from {start}); present: {available()}")
    missing = [n for n in names if not notebook_path(n).exists()]
    if missing:
        raise FileNotFoundError(f"notebook(s) {[str(notebook_path(n)) for n in missing]} do not exist; "
                                f"present: {available()}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="small", choices=["tiny", "small", "paper"])
    p.add_argument("--only", nargs="*", type=notebook_name, metavar="NOTEBOOK",
                   help=f"run only these notebooks (of: {', '.join(NOTEBOOKS)})")
    p.add_argument("--from", dest="start", type=notebook_name, metavar="NOTEBOOK",
                   help="start from this notebook (in pipeline order)")
    args = p.parse_args(argv)
    params = {"PROFILE": args.profile}
    try:  # every notebook and its parameters before any work
        names = selected(args.only, args.start)
        for name in names:
            check(notebook_path(name), params)
    except (FileNotFoundError, ValueError) as e:
        print(f"[imf.runs.pipeline] {e}", file=sys.stderr)
        return 1
    out_dir = results_dir() / "runs"
    swept = sweep_temp_files(results_dir())  # leftovers of writes killed in an earlier run
    if swept:
        print(f"[imf.runs.pipeline] removed {len(swept)} leftover temporary file(s) of killed writes", flush=True)
    for name in names:
        t0 = time.time()
        print(f"[imf.runs.pipeline] {name} (profile {args.profile}) ...", flush=True)
        try:
            run_notebook(name, out_dir, params)
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
