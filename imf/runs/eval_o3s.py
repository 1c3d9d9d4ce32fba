"""Notebook 04, O3S: search step grids on the dev split, compare them on the held-out test split.

With the number of steps fixed, :func:`imf.flow.o3s.o3s_search` moves one interior step at a time
on a **dev** set with fixed noise; the objective is a metric column turned higher-is-better by
:func:`imf.eval.metrics.objective_score` (``sim`` as the paper, ``neg_dist_ref``, ``fs_closeness``,
``mos``, ``wer``). The found grids then meet uniform, sway and EPSS grids on the **test** set
(``wb.es``), never the dev set::

    wb = open_runs("small", "04_o3s")
    study = o3s_study(wb, "sim", max_evals=60, iters=6)   # "", 0: the profile's o3s section
    searches, found = search_grids(study, [2, 3], [5, 6, 7])   # grids written as each search ends ([]: profile)
    figures = convexity(study, found, n_points=9)   # the largest student NFE, the smallest teacher NFE
    comparison = compare_on_test(study, found)
    verdict = student_verdict(study, comparison, found)
    objectives = run_objectives(study, ["dist_ref", {"dist_ref": 1.0, "wer": 0.5}], [2, 3], [5, 6, 7])
    report_o3s(study, searches, comparison, verdict, figures, objectives)   # imf.runs.sections_eval

:func:`run_objectives` is the objective study of :mod:`imf.eval.o3s_objectives` (one objective per
search, judged against uniform, sway and EPSS on the test set with the paired verdict) on this study's
dev set, test set and guided teacher.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from imf.eval.audio import AudioJudges
from imf.eval.evalset import EvalSet
from imf.eval.judges import make_judge
from imf.eval.metrics import objective_column, objective_score, paired_verdict
from imf.eval.o3s_objectives import Bench, ObjectiveStudy, judged_columns, objective_study, parse_objectives
from imf.eval.sweep import INTRINSIC, generate, grid_metric, nfe_sweep, utterance_scores
from imf.eval.systems import System, guided
from imf.flow import schedules
from imf.flow.o3s import O3SConfig, o3s_search, scan_all
from imf.runs.open import Opened, checkpoint
from imf.runs.sections_config import O3SSection
from imf.runs.sections_eval import write_o3s_result
from imf.runs.voices import wer_voices
from imf.viz.o3s import plot_scans
from imf.viz.plots import save_fig

EPSS_NFES = (5, 6, 7)  # the NFEs imf.flow.schedules.epss has tables for


@dataclasses.dataclass
class O3SStudy:
    """What every step of the study shares: the objective ``metric`` on the ``dev`` set, its fixed
    reference ``dev_ref`` (the guided teacher at ``max_nfe``, normalised (N, C, T)), the audio judge
    when the objective needs one, the guided teacher and the search configuration."""
    wb: Opened
    metric: str  # the objective kind, e.g. "sim" or "neg_dist_ref"
    column: str  # the metric column it reads (imf.eval.metrics.objective_column)
    dev: EvalSet
    dev_ref: Tensor
    judges: AudioJudges | None
    teacher_cfg: Callable[..., Tensor]  # the guided teacher
    cfg_scale: float
    max_nfe: int
    o3s_config: O3SConfig
    batch_size: int

    def models(self) -> dict[str, Callable[..., Tensor]]:
        return {"student": self.wb.student, "teacher": self.teacher_cfg}

    def objective(self, who: str) -> Callable[[Tensor], float]:
        """``f(time_grid) -> float`` (higher is better) of model ``who`` on the dev set."""
        return grid_metric(self.models()[who], self.dev, self.metric, reference=self.dev_ref, judges=self.judges,
                           batch_size=self.batch_size)


def o3s_study(wb: Opened, metric: str = "", o3s_config: O3SConfig | None = None, n_dev: int = 0,
              vocoder_run: str = "vocoder", max_evals: int = 0, iters: int = 0) -> O3SStudy:
    """Set up the study: the dev set (``n_dev`` utterances of the ``dev`` split, 0: half the profile's
    eval size, seed ``eval.seed + 1``), its guided-teacher reference, and, for an audio objective
    (``sim``, ``mos``, ``wer``), that one judge on the trained vocoder of ``vocoder_run``. Empty ``metric``
    and, without ``o3s_config``, zero ``max_evals`` / ``iters`` take the profile's ``o3s`` section."""
    E, S = wb.P["eval"], O3SSection.from_dict(wb.P["o3s"])
    metric = metric or S.metric
    o3s_config = o3s_config or O3SConfig(max_evals=max_evals or S.max_evals, ternary_iters=iters or S.iters,
                                         tol=1e-4)
    column = objective_column(metric)  # an unknown or contradictory objective fails here, before any work
    w, max_nfe = E["cfg_scale"], max(E["teacher_nfes"])
    t_cfg = guided(wb.teacher, w)
    dev = wb.eval_set("dev", n_dev or max(2, E["n_utts"] // 2), E["seed"] + 1)
    dev_ref, _, _ = generate(t_cfg, dev, schedules.uniform(max_nfe), batch_size=E["batch_size"])
    judges = None
    if column not in INTRINSIC:
        checkpoint(wb.profile, vocoder_run)  # MissingRun naming 00_vocoder (or pick METRIC="neg_dist_ref")
        judges = AudioJudges(wb.vocoder(vocoder_run, fallback=False), [make_judge(column, progress=False)],
                             wer_voices())
    print(f"dev {len(dev)} utts, test {len(wb.es)} utts, metric {metric}")
    return O3SStudy(wb, metric, column, dev, dev_ref, judges, t_cfg, w, max_nfe,
                    o3s_config, E["batch_size"])


def _nfes(value: Any, name: str) -> list[int]:
    if isinstance(value, (list, tuple)) and not value:
        raise TypeError(f"{name} is empty: name at least one NFE")
    if isinstance(value, str) or not all(isinstance(n, int) and not isinstance(n, bool) for n in value):
        raise TypeError(f"{name} must be a list of ints (e.g. [2, 3]), got {value!r}")
    return list(value)


def _searched(found: dict[tuple[str, int], Tensor], who: str) -> list[int]:
    """The NFEs searched for model ``who``, in search order."""
    return [n for model, n in found if model == who]


def searched_nfes(study: O3SStudy, student_nfes: Sequence[int], teacher_nfes: Sequence[int]) -> dict[str, list[int]]:
    """``{"student": [...], "teacher": [...]}``: the given NFE lists, an empty one replaced by the profile's ``o3s``."""
    S = O3SSection.from_dict(study.wb.P["o3s"])
    return {"student": _nfes(student_nfes or list(S.student_nfes), "student_nfes"),
            "teacher": _nfes(teacher_nfes or list(S.teacher_nfes), "teacher_nfes")}


def search_grids(study: O3SStudy, student_nfes: Sequence[int], teacher_nfes: Sequence[int],
                 progress: bool = True) -> tuple[pd.DataFrame, dict[tuple[str, int], Tensor]]:
    """O3S from the uniform grid for the student at ``student_nfes`` and the guided teacher at
    ``teacher_nfes``; each result goes to ``<out>/<model>_nfe<n>/`` as it ends.

    Returns one row per search (dev scores, evaluations, stop reason, grid) and the found grids
    ``{(model, nfe): time_grid (nfe+1,)}``. Empty lists take the profile's ``o3s`` section.
    """
    nfes = searched_nfes(study, student_nfes, teacher_nfes)
    found, rows = {}, []
    for who in ("student", "teacher"):
        f = study.objective(who)
        for n in nfes[who]:
            res = o3s_search(f, schedules.uniform(n), study.o3s_config, progress=progress)
            write_o3s_result(res, study.wb.out / f"{who}_nfe{n}")
            found[(who, n)] = res.best_grid
            rows.append({"model": who, "nfe": n, "dev_init": res.init_score, "dev_best": res.best_score,
                         "evals": res.n_evals, "stopped": res.stopped,
                         "grid": " ".join(f"{v:.3f}" for v in res.best_grid.tolist())})
    return pd.DataFrame(rows), found


def convexity(study: O3SStudy, found: dict[tuple[str, int], Tensor], n_points: int = 9) -> list[Path]:
    """The paper's Fig. 2 around the uniform grid: the objective vs one step's position, the others
    fixed, for the student at its largest searched NFE and the guided teacher at its smallest; returns the
    saved ``convexity_<model>_nfe<n>.png`` paths."""
    student_nfe, teacher_nfe = max(_searched(found, "student")), min(_searched(found, "teacher"))
    paths = []
    for who, n in (("student", student_nfe), ("teacher", teacher_nfe)):
        g = schedules.uniform(n)
        fig = plot_scans(scan_all(study.objective(who), g, n_points, progress=True), time_grid=g,
                         title=f"{who}, {n} NFE (uniform grid, others fixed)", ylabel=study.metric)
        paths.append(save_fig(fig, study.wb.out / f"convexity_{who}_nfe{n}.png"))
    return paths


def compare_on_test(study: O3SStudy, found: dict[tuple[str, int], Tensor]) -> pd.DataFrame:
    """Every found grid against uniform (student and teacher), sway and EPSS (teacher) grids at the
    same NFE on the test set ``wb.es``, identical noise; ``dist_ref`` to the guided ``max_nfe`` teacher,
    the objective's judge as extra columns."""
    wb, w = study.wb, study.cfg_scale
    name = f"teacher + CFG {w:g}"
    points = []
    for n in _searched(found, "student"):
        points += [(System("student", wb.student, "uniform"), n),
                   (System("student", wb.student, "o3s", {n: found[("student", n)]}), n)]
    for n in _searched(found, "teacher"):
        for kind in ("uniform", "sway", "epss"):
            if kind != "epss" or n in EPSS_NFES:
                points.append((System(name, study.teacher_cfg, kind), n))
        points.append((System(name, study.teacher_cfg, "o3s", {n: found[("teacher", n)]}), n))
    comparison, _ = nfe_sweep(wb.es, points, reference=(System("ref", study.teacher_cfg), study.max_nfe),
                              judges=study.judges, batch_size=study.batch_size)
    return comparison


def student_verdict(study: O3SStudy, comparison: pd.DataFrame, found: dict[tuple[str, int], Tensor]) -> pd.DataFrame:
    """The student's O3S grid vs the uniform one on the test set, paired per utterance (same noise,
    only the grid differs), on the searched column: per-utterance gain of the objective score
    (:func:`imf.eval.metrics.objective_score`, positive: O3S better) and its verdict
    (:func:`imf.eval.metrics.paired_verdict`; NaNs, e.g. WER off its reliable voices, dropped)."""
    es, col = study.wb.es, study.column
    test_ref = None
    if study.judges is None:
        test_ref, _, _ = generate(study.teacher_cfg, es, schedules.uniform(study.max_nfe), batch_size=study.batch_size)
    rows = []
    for n in _searched(found, "student"):
        score = {}
        for kind, grid in (("uniform", schedules.uniform(n)), ("o3s", found[("student", n)])):
            x, _, _ = generate(study.wb.student, es, grid, batch_size=study.batch_size)
            values = utterance_scores(es, x, col, reference=test_ref, judges=study.judges)
            score[kind] = torch.tensor([objective_score(study.metric, v) for v in values.tolist()], dtype=torch.float64)
        pick = (comparison.system == "student") & (comparison.nfe == n)
        u = comparison[pick & (comparison.schedule == "uniform")].iloc[0]
        o = comparison[pick & (comparison.schedule == "o3s")].iloc[0]
        v = paired_verdict(score["o3s"] - score["uniform"], "O3S better", "uniform better")
        rows.append({"student_nfe": n, "metric": col, "uniform": u[col], "o3s": o[col], "gain": v["gain"],
                     "gain_se": v["gain_se"], "verdict": v["verdict"],
                     "dist_ref_uniform": u.dist_ref, "dist_ref_o3s": o.dist_ref})
    return pd.DataFrame(rows)


def objective_bench(study: O3SStudy, objectives: Sequence[Any], vocoder_run: str = "vocoder") -> Bench:
    """The :class:`imf.eval.o3s_objectives.Bench` of this study: systems ``student`` and ``teacher`` (guided),
    the study's dev set, the test set ``wb.es``, the guided teacher at ``max_nfe`` as reference, and one
    audio judge per audio column the ``objectives`` read (on the trained vocoder of ``vocoder_run``)."""
    columns = judged_columns(objectives)
    judges = None
    if columns and study.judges is not None and columns <= {study.column}:
        judges = study.judges  # the study's own judge already scores every column needed
    elif columns:
        checkpoint(study.wb.profile, vocoder_run)  # MissingRun naming 00_vocoder
        judges = AudioJudges(study.wb.vocoder(vocoder_run, fallback=False),
                             [make_judge(c, progress=False) for c in sorted(columns)], wer_voices())
    return Bench({"student": study.wb.student, "teacher": study.teacher_cfg}, study.dev, study.wb.es,
                 study.teacher_cfg, study.max_nfe, judges, study.batch_size)


def run_objectives(study: O3SStudy, objectives: Sequence[Any], student_nfes: Sequence[int],
                   teacher_nfes: Sequence[int], vocoder_run: str = "vocoder", progress: bool = True,
                   found: Mapping[tuple[str, int], Tensor] | None = None) -> ObjectiveStudy:
    """Each objective (``[]``: the profile's ``o3s.objectives``) searched on the dev set for the student at
    ``student_nfes`` and the guided teacher at ``teacher_nfes`` (``[]``: the profile's), judged on the test set against uniform, sway
    and EPSS (:func:`imf.eval.o3s_objectives.objective_study`, the study's search configuration); each grid
    goes to ``<out>/objectives/<objective>/<model>_nfe<n>/`` as its search ends. ``found``: the study's own
    grids (:func:`search_grids`): an objective that is the study's metric alone (e.g. ``dist_ref`` when the
    study searched ``neg_dist_ref``) is judged on them instead of searching the same dev set again."""
    objectives = list(objectives) or list(O3SSection.from_dict(study.wb.P["o3s"]).objectives)
    bench = objective_bench(study, objectives, vocoder_run)
    nfes = searched_nfes(study, student_nfes, teacher_nfes)
    same = [o.name for o in parse_objectives(objectives) if tuple(o.columns) == (study.column,)]
    searched = {(name, who, n): g for name in same for (who, n), g in (found or {}).items()}

    def write(obj, system, n, res):
        write_o3s_result(res, study.wb.out / "objectives" / obj.slug / f"{system}_nfe{n}")

    return objective_study(bench, objectives, nfes, study.o3s_config, progress=progress, on_search=write,
                           searched=searched)
