"""Wall times of the pipeline's notebooks: recorded per profile, read back for an ETA, shown in the README.

``results/timings.csv`` holds one row per (profile, notebook), the last successful run of that
notebook under that profile (the pipeline replaces the row, atomically, as soon as the notebook
finishes, so an interrupted pipeline keeps the times of the notebooks it completed):

- ``seconds``: wall time of the papermill run (kernel start to the last cell),
- ``startup_s``: kernel start and teardown (``seconds`` minus the cells' own durations),
- ``imports_s``: the first code cell (the notebook's imports of ``imf`` and its dependencies),
- ``work_s``: every other cell,
- ``cpu_s``: CPU seconds (user + system) of the kernel and the processes it waited for; unlike the wall
  times it barely grows on a busy machine (the tiny pipeline: ~430 CPU-seconds in all),
- ``finished``: UTC time the notebook finished, ``load_avg``: the 1-minute load average when it
  started, ``cpus``: the machine's cores (a busy or smaller machine makes every number larger),
- ``steal_s``: CPU seconds the hypervisor gave to other machines while this one wanted them, summed over
  the cores, during the notebook (``/proc/stat``'s steal; NaN where there is none): a virtual machine whose
  host is busy runs slower with a quiet load average, and this column is the only place that shows it.

:func:`estimate_left` turns the previous run's rows into the pipeline's "what is left" estimate
(``None``, printed as "unknown", when a notebook still to run has no recorded time);
:func:`timings_md` is the README's table.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from imf.core.runtime import atomic_write_text

COLUMNS = ["profile", "notebook", "seconds", "startup_s", "imports_s", "work_s", "cpu_s", "finished", "load_avg",
           "cpus", "steal_s"]


FILE = "timings.csv"  # in the results folder (imf.runs.report.results_dir)


def read_timings(path: str | os.PathLike) -> pd.DataFrame:
    """The recorded rows (:data:`COLUMNS`) of ``path`` (``results/timings.csv``); an empty frame when the
    file does not exist yet. A file without the ``profile``/``notebook``/``seconds`` columns is a
    ``ValueError`` naming it."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    df = pd.read_csv(path)
    missing = [c for c in ("profile", "notebook", "seconds") if c not in df]
    if missing:
        raise ValueError(f"timings file {path} lacks column(s) {missing}; delete it to start afresh")
    return df


def notebook_times(executed: str | os.PathLike | None, wall: float) -> dict[str, float]:
    """``{seconds, startup_s, imports_s, work_s}`` of one notebook run of ``wall`` seconds, split with
    papermill's metadata of the executed copy (each code cell's ``duration``; the first code cell holds
    the imports; ``startup_s`` is the rest: kernel start and teardown, papermill's own work). Without a
    readable copy only ``seconds`` is known (the others NaN)."""
    try:
        nb = json.loads(Path(executed).read_text()) if executed is not None else None
    except (OSError, ValueError):
        nb = None
    if nb is None:
        return {"seconds": wall, "startup_s": math.nan, "imports_s": math.nan, "work_s": math.nan}
    cells = [float(c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0)
             for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    imports = cells[0] if cells else 0.0
    return {"seconds": wall, "startup_s": wall - sum(cells), "imports_s": imports, "work_s": sum(cells) - imports}


def steal_seconds(stat: str | os.PathLike = "/proc/stat") -> float:
    """The machine's CPU steal time so far, seconds summed over the cores (NaN without ``/proc/stat``)."""
    try:
        fields = Path(stat).read_text().splitlines()[0].split()
    except OSError:
        return math.nan
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if fields[0] == "cpu" and len(fields) > 8 else math.nan


def record(path: str | os.PathLike, profile: str, notebook: str, times: Mapping[str, float], *, finished: str,
           load_avg: float = math.nan, cpus: int | None = None) -> pd.DataFrame:
    """Replace (or add) the row of ``(profile, notebook)`` and rewrite the file atomically; return the table.

    ``times`` has ``seconds`` and optionally ``startup_s``, ``imports_s``, ``work_s`` (:func:`notebook_times`),
    ``cpu_s`` and ``steal_s``.
    Rows of other profiles and notebooks are kept as they are.
    """
    path = Path(path)
    if "seconds" not in times:
        raise ValueError(f"timing of {notebook!r} ({profile}) has no 'seconds': {dict(times)}")
    df = read_timings(path)
    df = df[~((df["profile"] == profile) & (df["notebook"] == notebook))]
    row = {"profile": profile, "notebook": notebook, **{k: round(float(times.get(k, math.nan)), 2)
                                                        for k in ("seconds", "startup_s", "imports_s", "work_s", "cpu_s")},
           "finished": finished, "load_avg": round(float(load_avg), 2), "cpus": cpus or os.cpu_count(),
           "steal_s": round(float(times.get("steal_s", math.nan)), 1)}
    df = pd.concat([df, pd.DataFrame([row])], ignore_index=True) if len(df) else pd.DataFrame([row])
    df = df.reindex(columns=COLUMNS + [c for c in df.columns if c not in COLUMNS])
    atomic_write_text(path, df.to_csv(index=False))
    return df


def previous_seconds(timings: pd.DataFrame, profile: str) -> dict[str, float]:
    """``{notebook: seconds}`` recorded for ``profile``."""
    rows = timings[timings["profile"] == profile]
    return {str(n): float(s) for n, s in zip(rows["notebook"], rows["seconds"]) if not math.isnan(float(s))}


def estimate_left(previous: Mapping[str, float], names: Sequence[str]) -> float | None:
    """Seconds the notebooks ``names`` took last time (their sum); None if any of them has no record."""
    if any(n not in previous for n in names):
        return None
    return float(sum(previous[n] for n in names))


def fmt_seconds(s: float | None) -> str:
    """``75.4`` -> ``"1m15s"``, ``3725`` -> ``"1h02m"``, ``None`` -> ``"unknown"``."""
    if s is None or not math.isfinite(s):
        return "unknown"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta_line(previous: Mapping[str, float], left: Sequence[str]) -> str:
    """What the pipeline prints before a notebook: the time the notebooks still to run (this one
    included) took in the previous run of the profile; those never timed are named, and the timed ones'
    sum is still given as a lower bound ("unknown" when none was timed)."""
    est = estimate_left(previous, left)
    if est is not None:
        return f"left ~{fmt_seconds(est)} (previous run's times)"
    unknown = [n for n in left if n not in previous]
    names = ", ".join(unknown) if len(unknown) <= 3 else f"{len(unknown)} notebooks"
    known = [n for n in left if n in previous]
    if not known:
        return f"left unknown (no recorded time for {names})"
    return f"left > ~{fmt_seconds(estimate_left(previous, known))} (previous run's times; no recorded time for {names})"


BUDGET_LAST = "07"  # the default reproduction's hour covers notebooks 00-07 (08 has its own budget)
# studies: pipeline notebooks that `make reproduce` does not run (`--only` runs them); the wall-time table lists them
# after the total of the reproduction, outside it
STUDIES = (
    "08a_alignment",  # which text2mel teacher recipe speaks its text (issue 15; `make alignment-study`; 00_corpus, 00_vocoder)
)


def _sum_row(t: pd.DataFrame, cols: Sequence[str], name: str) -> dict:
    sums = {c: t[c].sum(min_count=1) for c in cols[1:7] if c in t}  # NaN when nothing of c was recorded
    return {"notebook": name, **sums, "finished": "", "load_avg": ""}


def timings_tables(timings: pd.DataFrame, order: Sequence[str] = ()) -> dict[str, pd.DataFrame]:
    """The README's wall-time tables: ``{profile: table}``, notebooks in ``order`` (others after, by
    name), a readable ``wall`` column and a ``total`` row, preceded by a ``total 00–07`` row (the notebooks
    :data:`BUDGET_LAST` and before) when later ones ran too; the :data:`STUDIES` after the total, outside it. Empty
    when nothing was recorded."""
    rank = {n: i for i, n in enumerate(order)}
    cols = ["notebook", "seconds", "startup_s", "imports_s", "work_s", "cpu_s", "steal_s", "finished", "load_avg"]
    out = {}
    for prof, g in timings.groupby("profile", sort=True):
        g = g.assign(_r=[rank.get(n, len(rank)) for n in g["notebook"]]).sort_values(["_r", "notebook"])
        t = g[[c for c in cols if c in g]].reset_index(drop=True)
        study = t["notebook"].isin(STUDIES)
        t, studies = t[~study].reset_index(drop=True), t[study]
        rows = [t]
        main = t[t["notebook"].str[:2] <= BUDGET_LAST]
        if 0 < len(main) < len(t):  # the budgeted notebooks' own sum beside the whole run's
            rows.append(pd.DataFrame([_sum_row(main, cols, f"total 00–{BUDGET_LAST}")]))
        rows.append(pd.DataFrame([_sum_row(t, cols, "total")] if len(t) else []))
        t = pd.concat(rows + [studies.assign(notebook=studies["notebook"] + " (study, not in the total)")],
                      ignore_index=True)
        t.insert(1, "wall", [fmt_seconds(s) for s in t["seconds"]])
        out[str(prof)] = t
    return out
