"""Run the pipeline's notebooks with papermill, in order, into ``results/runs/``.

``python -m imf.runs.pipeline --profile small`` is what ``make reproduce`` calls. Each notebook
gets ``PROFILE`` injected into its ``parameters`` cell (and ``CORPUS_DIR`` with ``--corpus-dir``, into the
notebooks that declare it: a real corpus imported by 00_corpus instead of the embedded one); its executed copy goes to
``results/runs/<name>.ipynb`` and its artefacts to ``results/<name>/``. A failing notebook
stops the pipeline with its name; executed copies of earlier notebooks are kept.

Before anything runs, every selected notebook must exist and accept the given parameters
(:func:`imf.runs.params.check`: declared names, the default's type); ``--only``/``--from`` take
the names of :data:`NOTEBOOKS` and :data:`STUDIES` only (argparse error, exit code 2, with a close match); a study
runs only when named by ``--only``.

Timings: before each notebook the pipeline prints the elapsed time and what is left, estimated from
the previous run's wall times of the same profile (``results/timings.csv``; "unknown" for a notebook
never timed); after it, the notebook's wall time, which replaces its row in ``results/timings.csv``
(atomically, at once: an interrupted pipeline keeps the times of the notebooks it finished). The
README ends with these times (:mod:`imf.runs.timings`).
"""
from __future__ import annotations

import argparse
import difflib
import os
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imf.core.runtime import atomic_path, repo_root, sweep_temp_files
from imf.data.importers import LAYOUTS
from imf.runs.params import check, declared
from imf.runs.profiles import PROFILES
from imf.runs.report import build_readme, results_dir
from imf.runs.timings import FILE as TIMINGS_FILE
from imf.runs.timings import STUDIES
from imf.runs.timings import eta_line, notebook_times, fmt_seconds, previous_seconds, read_timings, record, steal_seconds
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
    "08_text2mel",  # F5-TTS's DiT on the embedded corpus: teacher, alignment check, students, teacher size (00_corpus; judges: 00_vocoder)
    "09_listening_test",  # prepares the stimuli and analyses the ratings so far (the test itself is taken live)
]
# STUDIES (imf.runs.timings): pipeline notebooks that `make reproduce` does not run (hours of CPU); `--only` runs
# them, into the same results (their committed sections stay in the README)
KNOWN = NOTEBOOKS + list(STUDIES)


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
    """argparse type of ``--only``/``--from``: one of :data:`NOTEBOOKS` or :data:`STUDIES` (``.ipynb`` and a folder
    are dropped)."""
    name = Path(value).name.removesuffix(".ipynb")
    if name not in KNOWN:
        close = difflib.get_close_matches(name, KNOWN, n=1)
        raise argparse.ArgumentTypeError(f"unknown notebook {value!r}" + (f" (did you mean {close[0]}?)" if close else "")
                                         + f"; choose from {', '.join(KNOWN)}")
    return name


def selected(only: list[str] | None, start: str | None) -> list[str]:
    """The notebooks to run: ``only`` in the order given (else every notebook present, in pipeline order),
    without those before ``start`` in pipeline order. A named notebook whose file is missing is a
    ``FileNotFoundError`` naming it."""
    names = list(only) if only else available()
    if start:
        names = [n for n in names if KNOWN.index(n) >= KNOWN.index(start)]
    if not names:
        raise FileNotFoundError(f"no notebook to run (--only {only}, --from {start}); present: {available()}")
    missing = [n for n in names if not notebook_path(n).exists()]
    if missing:
        raise FileNotFoundError(f"notebook(s) {[str(notebook_path(n)) for n in missing]} do not exist; "
                                f"present: {available()}")
    return names


def with_corpus_dir(name: str, params: dict[str, Any], corpus_dir: str) -> dict[str, Any]:
    """``params`` plus ``CORPUS_DIR`` (made absolute: notebooks run in notebooks/) if given and ``name`` declares it."""
    if not corpus_dir or "CORPUS_DIR" not in declared(notebook_path(name)):
        return params
    layout, sep, path = corpus_dir.partition(":")
    if not (sep and layout in LAYOUTS):
        layout, path = "", corpus_dir
    return {**params, "CORPUS_DIR": (f"{layout}:" if layout else "") + str(Path(path).expanduser().resolve())}


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children: papermill's kernels and what they ran."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="small", choices=sorted(PROFILES))
    p.add_argument("--only", nargs="*", type=notebook_name, metavar="NOTEBOOK",
                   help=f"run only these notebooks (of: {', '.join(KNOWN)}; the studies only this way)")
    p.add_argument("--from", dest="start", type=notebook_name, metavar="NOTEBOOK",
                   help="start from this notebook (in pipeline order)")
    p.add_argument("--corpus-dir", default="", metavar="DIR",
                   help="a real corpus to import instead of the embedded one (LJSpeech, LibriTTS, a .csv/.jsonl "
                        "manifest; '<layout>:DIR' names the layout), passed as CORPUS_DIR to the notebooks that declare it")
    args = p.parse_args(argv)
    params = {"PROFILE": args.profile}
    try:  # every notebook and its parameters before any work
        names = selected(args.only, args.start)
        for name in names:
            check(notebook_path(name), with_corpus_dir(name, params, args.corpus_dir))
    except (FileNotFoundError, ValueError) as e:
        print(f"[imf.runs.pipeline] {e}", file=sys.stderr)
        return 1
    out_dir = results_dir() / "runs"
    swept = sweep_temp_files(results_dir())  # leftovers of writes killed in an earlier run
    if swept:
        print(f"[imf.runs.pipeline] removed {len(swept)} leftover temporary file(s) of killed writes", flush=True)
    timings = results_dir() / TIMINGS_FILE
    previous = previous_seconds(read_timings(timings), args.profile)  # the previous run's, read before any is replaced
    t_start = time.time()
    for i, name in enumerate(names):
        t0, cpu0, steal0 = time.time(), children_cpu(), steal_seconds()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"[imf.runs.pipeline] {name} (profile {args.profile}; {i + 1}/{len(names)}; elapsed "
              f"{fmt_seconds(t0 - t_start)}; {eta_line(previous, names[i:])}) ...", flush=True)
        try:
            executed = run_notebook(name, out_dir, with_corpus_dir(name, params, args.corpus_dir))
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            print(f"[imf.runs.pipeline] {name} FAILED after {time.time() - t0:.0f}s: {e}", file=sys.stderr)
            print(f"[imf.runs.pipeline] partial copy: {out_dir / (name + '.failed.ipynb')}", file=sys.stderr)
            return 1
        times = {**notebook_times(executed, time.time() - t0), "cpu_s": children_cpu() - cpu0,
                 "steal_s": steal_seconds() - steal0}
        record(timings, args.profile, name, times, load_avg=load,
               finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        last = f", previous run {fmt_seconds(previous[name])}" if name in previous else ""
        print(f"[imf.runs.pipeline] {name} done in {fmt_seconds(times['seconds'])} (kernel start {times['startup_s']:.0f}s, "
              f"imports {times['imports_s']:.0f}s, work {times['work_s']:.0f}s; {times['cpu_s']:.0f} CPU-s, "
              f"{times['steal_s']:.0f} s stolen by the host{last}) -> {executed}", flush=True)
    print(f"[imf.runs.pipeline] {len(names)} notebook(s) in {fmt_seconds(time.time() - t_start)}", flush=True)
    build_readme()
    print(f"[imf.runs.pipeline] results: {results_dir() / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
