"""What the evaluation notebooks 03-05 leave on disk, and the one place they time systems.

* writers: CSV tables, O3S results (grid JSON in :func:`imf.flow.schedules.save_grid` format, the
  search history as JSON and CSV), each atomic (:mod:`imf.core.runtime`);
* reports: ``report_nfe_curves`` (03), ``report_o3s`` (04), ``report_meanflow`` (05) write a
  notebook's ``metrics.json``, its CSV tables and its Markdown section of the results README
  (:func:`imf.runs.report.write_section`); they compute nothing but the text;
* timing (:mod:`imf.eval.speed`): :func:`speed_and_rtf`, :func:`memory_per_objective`;
* :func:`wer_voices`: the voices 00_vocoder found the ASR reliable on (runs may read ``results/``).

The orchestration (what is sampled, searched, trained) is in ``imf.runs.eval_nfe``,
``imf.runs.eval_o3s`` and ``imf.runs.eval_meanflow``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from imf.core.runtime import atomic_write_json, atomic_write_text
from imf.eval.o3s_objectives import ObjectiveStudy, objective_note
from imf.eval.speed import default_rtf_systems, memory_table, rtf_table, speed_view
from imf.flow.o3s import HISTORY_COLUMNS, O3SResult
from imf.flow.schedules import save_grid
from imf.runs.eval_meanflow import EQUAL_WALL
from imf.runs.open import Opened
from imf.runs.voices import wer_voices
from imf.eval.judges import judges_note
from imf.runs.report import table_md, write_section
from imf.runs.sections_config import EvalConfig, MeanFlowTrainConfig
from imf.runs.splits import by_split, side_by_side, zero_shot_numbers, zero_shot_text


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------
def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """``df`` (no index) as CSV at ``path``, atomically."""
    atomic_write_text(path, df.to_csv(index=False))
    return Path(path)


def write_o3s_result(res: O3SResult, folder: str | Path) -> Path:
    """``grid.json`` (loadable by :func:`imf.flow.schedules.load_grid`), ``history.json`` and
    ``history.csv`` (one row per metric call, the grid as a JSON list) into ``folder``; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_grid(folder / "grid.json", res.best_grid, **res.grid_meta())
    atomic_write_json(folder / "history.json", res.history)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HISTORY_COLUMNS)
    for h in res.history:
        # the grid goes into one column as a JSON list so every row has the same columns
        w.writerow([h[k] if k != "time_grid" else json.dumps(h[k]) for k in HISTORY_COLUMNS])
    atomic_write_text(folder / "history.csv", buf.getvalue())
    return folder


# ---------------------------------------------------------------------------------------------
# timing (every call into imf.eval.speed of notebooks 03 and 05)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Timings:
    """Notebook 03's speed tables: ``speed`` (seconds per batch, speedup over the guided teacher)
    and ``rtf`` (real-time factors, flow alone and end to end); ``vocoder`` names the vocoder used."""
    speed: pd.DataFrame
    rtf: pd.DataFrame
    vocoder: str
    batch_size: int
    repeats: int


def speed_and_rtf(wb: Opened, cfg_scale: float, teacher_nfe: int, repeats: int = 0,
                  vocoder_run: str = "vocoder") -> Timings:
    """The guided teacher at ``teacher_nfe`` (and at 4 NFE), the teacher without guidance and the student at
    1, 2, 4 NFE, side by side on one batch of ``wb.es``: one :func:`rtf_table` (real-time factors with the
    trained vocoder of ``vocoder_run``, Griffin-Lim if it is missing), and its speed view (seconds per batch,
    speed-up over the guided teacher) from the same timings. ``repeats``: timing rounds, each row's fastest
    reported (0: the profile's ``eval.speed_repeats``)."""
    es, B = wb.es, wb.P["eval"]["batch_size"]
    repeats = repeats or EvalConfig.from_dict(wb.P["eval"]).speed_repeats
    es_b = es.subset(range(min(len(es), B)))
    trained = wb.vocoder_checkpoint(vocoder_run) is not None
    vocoder = wb.vocoder(vocoder_run, fallback=True)
    points = default_rtf_systems(wb.teacher, wb.student, cfg_scale, sorted({teacher_nfe, 4}, reverse=True),
                                 unguided=True)
    rtf = rtf_table(points, es_b, vocoder, repeats)
    return Timings(speed_view(rtf), rtf, "trained vocoder" if trained else "Griffin-Lim fallback", len(es_b), repeats)


def memory_per_objective(wb: Opened, batch_size: int = 0, frames: int = 0) -> pd.DataFrame:
    """Peak memory added by one training step and seconds per step of CFM, IntMeanFlow (4 and the
    profile's teacher sub-steps) and MeanFlow on the teacher's network, each in a fresh subprocess;
    ``batch_size`` x ``frames`` (0: the student's ``student_train.batch_size`` x ``data.max_frames``)."""
    P = wb.P
    objectives = [("cfm", 0)] + [("imf", n) for n in sorted({4, P["imf"]["teacher_nfe"]})] + [("meanflow", 0)]
    return memory_table(objectives, batch_size or P["student_train"]["batch_size"], frames or P["data"]["max_frames"],
                        dict(P["teacher_model"], n_tokens=wb.corpus.n_tokens))


# ---------------------------------------------------------------------------------------------
# 03: quality vs NFE and speed
# ---------------------------------------------------------------------------------------------
def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "not met")


def report_nfe_curves(wb: Opened, curves: Any, audio: pd.DataFrame, timings: Timings, metrics: dict) -> dict:
    """Write notebook 03's tables, ``metrics.json`` and section; returns ``metrics``.

    ``curves``: :class:`imf.runs.eval_nfe.NFECurves`; ``audio``: the audio-judge table (empty: none);
    ``metrics``: :func:`imf.runs.eval_nfe.nfe_criteria`.
    """
    out, es, m = wb.out, wb.es, metrics
    E = wb.P["eval"]
    seen_split, zs_split = E["split"], E.get("zero_shot_split", "unseen")
    shown = [curves.guided_name, "IntMeanFlow student"]
    splits = by_split(curves.table[curves.table.system.isin(shown)], curves.unseen, seen_split, zs_split)
    m["zero_shot"] = dict(zero_shot_numbers(splits, curves.guided_name, curves.max_nfe, shown[1], 1, seen_split, zs_split),
                          split=zs_split, voices=curves.unseen_voices)
    write_csv(splits, out / "nfe_curves_by_split.csv")
    zs_md = f"""
**Seen vs held-out voices** (`{seen_split}` split and `{zs_split}` split, each its own utterances and noise;
`dist_ref` to the guided {curves.max_nfe}-NFE teacher within each split; `nfe_curves_by_split.csv`):

{table_md(side_by_side(splits, shown, seen=seen_split, unseen=zs_split))}

{zero_shot_text(splits, curves.guided_name, curves.max_nfe, shown[1], 1, curves.unseen_voices, seen_split, zs_split)}
"""
    labels = audio.attrs.get("judge_labels", {}) if not audio.empty else {}
    if labels:
        m["judges"] = labels
    write_csv(curves.table, out / "nfe_curves.csv")
    if not audio.empty:
        write_csv(audio, out / "nfe_audio_judges.csv")
    write_csv(timings.speed, out / "speed.csv")
    write_csv(timings.rtf, out / "rtf.csv")
    atomic_write_json(out / "metrics.json", m)
    max_nfe, voices = curves.max_nfe, wer_voices()
    audio_md = "" if audio.empty else f"""
**Audio judges** (vocoded with the trained vocoder; WER corpus-level, on the voices 00_vocoder found the ASR
reliable on: {', '.join(voices) if voices else 'all voices'}; SIM: cosine to the prompt speaker's real speech).
{judges_note(labels)} The first two rows are the ceilings:

![audio judges vs NFE](03_nfe_curves/nfe_audio_judges.png)

{table_md(audio)}
"""
    paired = m["dist_paired_student1_vs_teacher4"]
    paired_md = "" if paired is None else (
        f"Paired per utterance (each utterance's distance, teacher at 4 NFE minus student at 1 NFE): the student is "
        f"closer on {paired['wins']}/{paired['n']} utterances, mean gain {paired['gain']:+.4f} +- {paired['gain_se']:.4f} "
        f"(s.e.): **{paired['verdict']}** (two standard errors).")
    t4 = m["teacher_cfg_dist_ref_4"]
    table = curves.table[["system", "nfe", "fs_ratio", "gv_ratio", "dist_ref", "seconds"]]
    write_section("03_nfe_curves", f"""## 03 — quality vs NFE and speed (`notebooks/03_nfe_curves.ipynb`)

{len(es)} held-out utterances, identical noise for every system; reference for `dist_ref`: the guided
{max_nfe}-NFE teacher (uniform grid). The student samples without guidance.

![quality vs NFE](03_nfe_curves/nfe_curves.png)
![samples](03_nfe_curves/samples.png)

{table_md(table)}
{zs_md}{audio_md}
**Criteria.** 1-NFE student fine-structure ratio {m['student_fs_ratio_1']:.3f} vs the guided
{max_nfe}-NFE teacher's {m['teacher_cfg_fs_ratio_max']:.3f} (ratio {m['student_fs_ratio_1'] / m['teacher_cfg_fs_ratio_max']:.2f};
target >= 0.9: **{_verdict(m['fs_criterion_0.9x'])}**).
Distance to the guided {max_nfe}-NFE teacher: student at 1 NFE {m['student_dist_ref_1']:.3f} vs guided teacher at 4 NFE
{t4 if t4 is None else round(t4, 3)} (target: below it: **{_verdict(m['dist_criterion_below_teacher_4'])}**).
{paired_md}

**Speed** (one batch of {timings.batch_size} utterances, side by side in one process, the fastest of
{timings.repeats} interleaved round(s); the flow columns of the real-time-factor table below, seen as speed-ups):

{table_md(timings.speed, '.4f')}

Teacher ({max_nfe} NFE + CFG) / student (1 NFE) = **{m['speedup_student_1']:.0f}x**.

**Real-time factor** (compute seconds per second of audio; flow module alone and end to end with the
{timings.vocoder}; `python -m imf.runs.bench rtf` prints the same table):

{table_md(timings.rtf, '.4f')}
""")
    return m


# ---------------------------------------------------------------------------------------------
# 04: O3S
# ---------------------------------------------------------------------------------------------
def report_o3s(study: Any, searches: pd.DataFrame, comparison: pd.DataFrame, verdict: pd.DataFrame,
               figures: Sequence[Path], objectives: ObjectiveStudy | None = None) -> dict:
    """Write notebook 04's tables, ``metrics.json`` and section; returns the metrics.

    ``study``: :class:`imf.runs.eval_o3s.O3SStudy` (its grids were written as each search ended);
    ``figures``: the convexity plots; ``objectives``: :func:`imf.runs.eval_o3s.run_objectives` (written to
    ``objectives.csv`` and ``objective_searches.csv``, a table and a paragraph of the section).
    """
    out = study.wb.out
    write_csv(comparison, out / "comparison.csv")
    metrics = {"metric": study.metric, "searches": searches.to_dict("records"),
               "student_verdict": verdict.to_dict("records")}
    obj_md = ""
    if objectives is not None:
        write_csv(objectives.table, out / "objectives.csv")
        write_csv(objectives.searches, out / "objective_searches.csv")
        metrics["objectives"] = {"objectives": [o.spec() for o in objectives.objectives],
                                 "table": objectives.table.to_dict("records"),
                                 "searches": objectives.searches.to_dict("records")}
        obj_md = _objectives_md(study, objectives)
    atomic_write_json(out / "metrics.json", metrics)
    cfg = study.o3s_config
    cols = [c for c in ["system", "schedule", "nfe", "fs_ratio", "gv_ratio", "dist_ref", "sim", "mos", "wer", "grid"]
            if c in comparison]
    write_section("04_o3s", f"""## 04 — O3S step search (`notebooks/04_o3s.ipynb`)

Objective on the dev split ({len(study.dev)} utterances, fixed noise): `{study.metric}`. Budget {cfg.max_evals} evaluations
per search, {'golden-section' if cfg.method == 'golden' else 'ternary'} search with {cfg.ternary_iters} reductions per position. Grids are saved as JSON in
`results/04_o3s/<model>_nfe<n>/grid.json` and load with `imf.flow.schedules.load_grid`.

{table_md(searches)}

**Convexity** (metric vs one step's position, the others fixed):

{' '.join(f'![convexity]({Path(p).parent.name}/{Path(p).name})' for p in figures)}

**Held-out comparison** on the test split ({len(study.wb.es)} utterances), every grid on identical noise:

{table_md(comparison[cols])}

Student, O3S vs uniform on the held-out test split, on the searched metric `{study.column}` (and on `dist_ref`).
`gain`: mean per-utterance improvement of the O3S grid over the uniform one (same utterances, same noise;
positive = O3S better), `gain_se` its standard error; "within noise": the gain is within two standard errors
of zero, not told apart from the judge's noise:

{table_md(verdict)}

{' '.join(f"At {r.student_nfe} NFE: {r.verdict} (gain {r.gain:+.4f} +- {r.gain_se:.4f})." for r in verdict.itertuples())}
{obj_md}""")
    return metrics


def _objectives_md(study: Any, res: ObjectiveStudy) -> str:
    """The objective study's part of section 04: how it was run, its table, the verdict paragraph."""
    cols = ["objective", "system", "nfe", "baseline", "dev_found", "dev_baseline", "test_found", "test_baseline",
            "gain", "gain_se", "verdict"]
    return f"""
### Which O3S objective wins on held-out data

Each objective is searched on the dev split (the student and the guided teacher, from the uniform grid), then its
grid meets uniform, sway and EPSS (where a table exists) on the test split ({len(study.wb.es)} utterances), paired
per utterance on the same noise. Scores are higher-is-better: `dist_ref` is minus the mel distance to the guided
{study.max_nfe}-NFE teacher, `wer` minus the WER (reliable voices only); a mix sums its terms, each divided by its standard
deviation over the dev utterances on the uniform grid (`objective_searches.csv`, column `scales`). `gain`: mean
per-utterance (found - baseline) score on test, `gain_se` its standard error; "win" only beyond two standard errors.
Grids: `results/04_o3s/objectives/<objective>/<model>_nfe<n>/grid.json`.

{table_md(res.table[cols], '.4g')}

{objective_note(res.table)}
"""


# ---------------------------------------------------------------------------------------------
# 05: MeanFlow vs IntMeanFlow
# ---------------------------------------------------------------------------------------------
def train_seconds(history: pd.DataFrame, steps: int) -> float:
    """Training seconds of a run of ``steps`` steps from its logged ``sec_per_step`` (mean x steps; nan if unlogged)."""
    col = history.get("sec_per_step")
    return float(col.mean() * steps) if col is not None and len(col.dropna()) else float("nan")


def report_meanflow(wb: Opened, memory: pd.DataFrame | None, runs: Any, imf: Any, quality: pd.DataFrame,
                    verdict: dict) -> dict:
    """Write notebook 05's tables, ``metrics.json`` and section; returns the metrics.

    ``memory``: :func:`memory_per_objective` (None: not measured); ``runs``:
    :class:`imf.runs.eval_meanflow.MeanFlowRuns`; ``imf``: the student's stitched
    :class:`imf.runs.eval_meanflow.StageHistory`; ``verdict``: :func:`imf.runs.eval_meanflow.winners`.
    """
    out, tc, P = wb.out, runs.train_cfg, wb.P
    memory = pd.DataFrame() if memory is None else memory
    if len(memory):
        write_csv(memory, out / "memory_speed.csv")
    write_csv(quality, out / "quality.csv")
    q1 = quality[quality.nfe == 1]
    metrics = {"memory": memory.to_dict("records"), "stability": runs.stability(),
               "quality_1nfe": q1.drop(columns=["grid"]).to_dict("records"),
               "winner_per_metric": verdict["wins"], "best_mf": verdict["best_mf"], "mf_steps": tc.steps,
               "imf_steps": imf.steps, "imf_stage1_steps": imf.stage1_steps,
               "winner_per_metric_stage1": verdict["wins_stage1"],
               "winner_per_metric_equal_wall": verdict.get("wins_equal_wall"), "imf_equal_wall_step": imf.equal_wall_step,
               "mf_train_seconds": {k: train_seconds(pd.DataFrame(h), tc.steps) for k, h in runs.histories().items()},
               "imf_train_seconds": imf.seconds(imf.steps), "imf_cache_seconds": imf.cache_seconds,
               "imf_equal_wall_seconds": imf.seconds(imf.equal_wall_step) if imf.equal_wall_step else None}
    atomic_write_json(out / "metrics.json", metrics)
    mem_md = table_md(memory) if len(memory) else "(memory not measured: MEMORY=False)"
    stab_md = table_md(pd.DataFrame([{"run": k, **v} for k, v in metrics["stability"].items()]))
    s1, n = imf.stage1_steps, imf.steps
    s1_md = f" ({s1} first-stage + {n - s1} whole-interval second-stage, dotted line)" if imf.stage1 else ""
    wins_md = lambda wins: ", ".join(f"{k}: **{v}**" for k, v in wins.items())  # noqa: E731
    eq_md = "" if not imf.stage1 else (
        f"At equal steps, the first-stage student alone ({s1} steps, as many as each MeanFlow run) against the same "
        f"MeanFlow run: {wins_md(verdict['wins_stage1'])}.\n")
    ref = verdict["reference"]
    mf_wall, k = metrics["mf_train_seconds"], imf.equal_wall_step
    imf_wall = metrics["imf_equal_wall_seconds"] if k else metrics["imf_train_seconds"]
    walls = ", ".join(f"{name} {v:.0f} s" for name, v in mf_wall.items())
    ratio = max(mf_wall.values()) / imf_wall if mf_wall and imf_wall else float("nan")
    held = (f"about equal ({ratio:.2f}x)" if 0.8 <= ratio <= 1.25 else
            f"MeanFlow had {ratio:.2f}x the student's time here, so the comparison favours MeanFlow" if ratio > 1.25 else
            f"MeanFlow had only {ratio:.2f}x the student's time here, so this is NOT an equal-wall comparison")
    cache = f"its teacher-trajectory cache {imf.cache_seconds:.0f} s included" if imf.cache_seconds else "no cache"
    point = (f"the IntMeanFlow student's checkpoint at step {k} (`{EQUAL_WALL}` above; {cache}) against MeanFlow: "
             f"{wins_md(verdict['wins_equal_wall'])}; the final student trained {n} steps in "
             f"{metrics['imf_train_seconds']:.0f} s" if k and verdict.get("wins_equal_wall") else
             f"the final IntMeanFlow student ({n} steps; {cache})")
    budget_md = (f"**Equal wall-clock**, not equal steps: MeanFlow trained {tc.steps} steps, budgeted to take at least as "
                 f"long as {point}. "
                 f"Training seconds from the logged seconds per step: MeanFlow {walls}; IntMeanFlow {imf_wall:.0f} s; "
                 f"{held}."
                 if MeanFlowTrainConfig.from_dict(P["meanflow_train"]).budget == "wall" else
                 f"Equal steps are not equal compute: compare the objectives' `sec_per_step` above (IntMeanFlow's grows "
                 f"with its {P['imf']['teacher_nfe']} guided teacher sub-steps).")
    write_section("05_meanflow_vs_imf", f"""## 05 — MeanFlow (JVP) vs IntMeanFlow (`notebooks/05_meanflow_vs_imf.ipynb`)

**Memory and speed per training step** (same network and batch {tc.batch_size} x {runs.data_cfg.max_frames} frames, each
objective in a fresh subprocess; `added_peak_mb`: growth of the process's peak RSS over one training step):

{mem_md}

**Stability** (MeanFlow: {tc.steps} steps each, lr {tc.lr:g}, batch {tc.batch_size}, guidance {runs.cfg_scale:g} folded into the
target, the teacher-initialised runs freeze `{runs.freeze}` like the IntMeanFlow student; IntMeanFlow: {n} steps{s1_md};
non-finite steps are skipped and counted):

{stab_md}

![stability](05_meanflow_vs_imf/stability.png)

**Quality** on {len(wb.es)} held-out utterances, identical noise (the paper's Tab. 2 rows MF vs IMF; `dist_ref` to the
guided {max(P['eval']['teacher_nfes'])}-NFE teacher):

{table_md(quality[['system', 'nfe', 'fs_ratio', 'gv_ratio', 'dist_ref']])}

At 1 NFE, IntMeanFlow against the best MeanFlow run ({verdict['best_mf']}, chosen by `dist_ref`); `dist_ref` lower wins,
`fs_ratio` and `gv_ratio` closer to the guided teacher's own values ({ref['fs_ratio']:.3f}, {ref['gv_ratio']:.3f}) win:
{wins_md(verdict['wins'])}.
{eq_md}{budget_md}
""")
    return metrics
