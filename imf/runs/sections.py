"""The closing cell of notebooks 00_corpus, 01_teacher and 02_distill: ``metrics.json`` and the Markdown section.

Each function writes ``results/<notebook>/metrics.json`` (atomically; paths relative to the repository),
writes the notebook's section of ``results/README.md`` (:func:`imf.runs.report.write_section`) and
returns the metrics.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from imf.core.runtime import atomic_write_json
from imf.data import corpus_metrics
from imf.runs.distill import Ablation, DistillRun, QuickCheck, Stages
from imf.runs.open import relative
from imf.runs.profiles import student_run
from imf.runs.report import section_dir, table_md, write_section
from imf.runs.splits import by_split, side_by_side, zero_shot_numbers, zero_shot_text
from imf.runs.teacher import TeacherEval, TeacherRun


def corpus_results(corpus, speakers: pd.DataFrame, build_seconds: float, profile: str, seed: int) -> dict[str, Any]:
    """00_corpus: the corpus's headline numbers (:func:`imf.data.corpus_metrics`), the build time and the
    speaker table."""
    metrics = {**corpus_metrics(corpus), "build_seconds": round(build_seconds, 2), "profile": profile, "seed": seed,
               "corpus": relative(corpus.root)}
    atomic_write_json(section_dir("00_corpus") / "metrics.json", metrics)
    counts = ", ".join(f"{k} {v}" for k, v in metrics["split_counts"].items())
    if corpus.info.get("importer"):  # a real corpus (imf.data.importers)
        write_section("00_corpus", f"""## 00 — imported corpus (`notebooks/00_corpus.ipynb`)

`{corpus.info['importer']}` layout from `{corpus.info['source']}`: {metrics['n_utts']} utterances
({metrics['hours'] * 60:.1f} min, mean {metrics['mean_seconds']:.2f} s) from {metrics['n_speakers']} speakers
(held out whole as `unseen`: {', '.join(corpus.unseen_speakers) or 'none'}); splits: {counts}; {metrics['dropped']}
dropped by the duration filter. Alignments: {'MFA TextGrids' if corpus.aligned else 'none (text only)'}; phone
inventory {metrics['n_phones']} symbols. Ready in {metrics['build_seconds']:.1f} s.

{table_md(speakers)}

![log-mel examples](00_corpus/mels.png)
""")
        return metrics
    write_section("00_corpus", f"""## 00 — embedded corpus (`notebooks/00_corpus.ipynb`)

{metrics['n_utts']} utterances ({metrics['hours'] * 60:.1f} min, mean {metrics['mean_seconds']:.2f} s) from
{metrics['n_speakers']} voices of {metrics['n_engines']} engines; splits: {counts}. Pitch and rate are drawn
per utterance (`pitch_factor`, `rate_factor`: means of the factors relative to each voice's default;
`f0_hz`: mean of the measured per-utterance median F0). Phone inventory: {metrics['n_phones']} symbols
(ARPAbet + `sil`, id 0 = pad). Ready in {metrics['build_seconds']:.1f} s (the build itself took
{metrics['corpus_build_seconds']} s).

{table_md(speakers)}

![log-mel examples, phone boundaries on the first](00_corpus/mels.png)
![F0 by speaker](00_corpus/f0_by_speaker.png)
""")
    return metrics


def teacher_metrics(cfg: TeacherRun, summary: dict[str, Any], ev: TeacherEval) -> dict[str, Any]:
    """01_teacher's recorded numbers: training summary and the plain/guided rows at 1, 2 and the largest NFE."""
    nfes, guided = list(cfg.eval.teacher_nfes), ev.guided.name
    lo, hi = min(nfes), max(nfes)
    two = 2 in nfes
    return {
        "steps": summary["steps"], "params_m": sum(p.numel() for p in ev.teacher.parameters()) / 1e6,
        "sec_per_step": summary.get("sec_per_step"), "final_loss": summary["final_loss"], "cfg_scale": cfg.cfg_scale,
        "n_eval_utts": len(ev.es),
        "fs_ratio_cfg_1": float(ev.row(guided, lo).fs_ratio), "fs_ratio_cfg_max": float(ev.row(guided, hi).fs_ratio),
        "fs_ratio_1": float(ev.row("teacher", lo).fs_ratio), "fs_ratio_max": float(ev.row("teacher", hi).fs_ratio),
        "gv_ratio_1": float(ev.row("teacher", lo).gv_ratio), "gv_ratio_max": float(ev.row("teacher", hi).gv_ratio),
        "noise_corr_1": float(ev.row("teacher", lo).noise_corr), "noise_corr_max": float(ev.row("teacher", hi).noise_corr),
        "fs_ratio_2": float(ev.row("teacher", 2).fs_ratio) if two else None,
        "noise_corr_2": float(ev.row("teacher", 2).noise_corr) if two else None,
        "fs_ratio_cfg_2": float(ev.row(guided, 2).fs_ratio) if two else None,
        "max_nfe": hi, "checkpoint": relative(cfg.run_dir / "checkpoints" / "last.pt"),
    }


def smoothing_text(m: dict[str, Any]) -> str:
    """The over-smoothing paragraph of 01_teacher's section, from its metrics (its wording follows the sign of
    the 1-step ``noise_corr``: negative means the 1-step fine structure is inverted leftover noise)."""
    M = m["max_nfe"]
    text = (f"**Over-smoothing at 1 step.** Unguided, the 1-step sample keeps {m['gv_ratio_1']:.2f} of real speech's "
            f"global variance against {m['gv_ratio_max']:.2f} at {M} steps (the blurry conditional mean). ")
    if m["noise_corr_1"] < 0:
        text += (f"The fine-structure ratio alone does not show it at 1 step ({m['fs_ratio_1']:.2f} vs {m['fs_ratio_max']:.2f}; "
                 f"guided {m['fs_ratio_cfg_1']:.2f} vs {m['fs_ratio_cfg_max']:.2f}): the 1-step sample's fine structure is an "
                 f"inverted copy of its input noise (`noise_corr` {m['noise_corr_1']:+.2f}, against {m['noise_corr_max']:+.2f} "
                 f"at {M} steps, where detail is carved out of the noise), i.e. leftover noise, not harmonics. ")
    else:
        text += f"Fine-structure ratio: {m['fs_ratio_1']:.2f} at 1 step vs {m['fs_ratio_max']:.2f} at {M}. "
    if m["fs_ratio_2"] is not None:
        text += (f"At 2 steps (`noise_corr` {m['noise_corr_2']:+.2f}) the fine-structure ratio is "
                 f"{m['fs_ratio_2']:.2f} at 2 steps vs {m['fs_ratio_max']:.2f} at {M} (guided {m['fs_ratio_cfg_2']:.2f} vs "
                 f"{m['fs_ratio_cfg_max']:.2f}).")
    return text


def teacher_results(cfg: TeacherRun, summary: dict[str, Any], ev: TeacherEval) -> dict[str, Any]:
    """01_teacher: :func:`teacher_metrics` and the section (the NFE x guidance table, the over-smoothing paragraph)."""
    m = teacher_metrics(cfg, summary, ev)
    E, hi = cfg.eval, max(cfg.eval.teacher_nfes)
    splits = by_split(ev.table[ev.table.system == ev.guided.name], ev.unseen, E.split, E.zero_shot_split)
    m["zero_shot"] = dict(zero_shot_numbers(splits, ev.guided.name, hi, seen=E.split, unseen=E.zero_shot_split),
                          split=E.zero_shot_split, voices=ev.unseen_voices, n_utts=None if ev.unseen is None else E.n_utts)
    atomic_write_json(section_dir("01_teacher") / "metrics.json", m)
    splits.to_csv(section_dir("01_teacher") / "nfe_guidance_by_split.csv", index=False)
    table = ev.table[["system", "nfe", "fs_ratio", "gv_ratio", "noise_corr", "dist_ref", "seconds"]]
    zs_table = side_by_side(splits, [ev.guided.name], seen=E.split, unseen=E.zero_shot_split)
    write_section("01_teacher", f"""## 01 — token2mel teacher (`notebooks/01_teacher.ipynb`)

Conditional flow-matching teacher: {m['params_m']:.2f} M parameters, {summary['steps']} steps
(batch {cfg.train.batch_size}), final loss {summary['final_loss']:.4f}. Evaluated on {len(ev.es)} held-out
utterances ({cfg.eval.split} split) with identical noise for every row. `fs_ratio`: harmonic fine-structure
variance of generated vs real log-mel (1 = as detailed as real speech; over-smoothed output is < 1);
`gv_ratio`: global variance ratio; `noise_corr`: correlation of the output's fine structure with its
input noise; `dist_ref`: mean |log-mel difference| to the guided {m['max_nfe']}-NFE
teacher output on the same noise.

{table_md(table)}

{smoothing_text(m)}

Seen voices (`{E.split}` split) and held-out voices (`{E.zero_shot_split}` split, its own {E.n_utts} utterances and
noise), the guided teacher side by side (`dist_ref` within each split; `nfe_guidance_by_split.csv`):

{table_md(zs_table)}

{zero_shot_text(splits, ev.guided.name, hi, voices=ev.unseen_voices, seen=E.split, unseen=E.zero_shot_split)}

![teacher NFE x guidance](01_teacher/nfe_guidance.png)
![teacher samples](01_teacher/teacher_samples.png)
![teacher loss](01_teacher/teacher_loss.png)
""")
    return m


def distill_metrics(cfg: DistillRun, stages: Stages, check: QuickCheck, ablation: Ablation) -> dict[str, Any]:
    """02_distill's recorded numbers: both stages, the quick check's 1-NFE rows and the ablation rows."""
    final, r, ref = check.students[-1].name, check.row, check.reference.name
    return {"steps": stages.summary["steps"], "stage2_steps": stages.summary2["steps"] if stages.summary2 is not None else 0,
            "stage2_p_full": cfg.stage2.p_full if cfg.has_stage2 else None, "final_run": cfg.final_run,
            "teacher_nfe": cfg.imf.teacher_nfe, "cfg_scale": cfg.imf.cfg_scale,
            "final_loss": stages.final_summary["final_loss"],
            "sec_per_step": float(pd.DataFrame(stages.trainer.history)["sec_per_step"].mean()),
            "student_fs_ratio_1": float(r(final, 1).fs_ratio), "teacher_cfg_fs_ratio_max": float(r(ref, check.max_nfe).fs_ratio),
            "student_dist_ref_1": float(r(final, 1).dist_ref), "stage1_dist_ref_1": float(r(check.students[0].name, 1).dist_ref),
            "teacher_cfg_dist_ref_1": float(r(ref, 1).dist_ref), "ablation": ablation.rows}


def distill_results(cfg: DistillRun, stages: Stages, check: QuickCheck, ablation: Ablation) -> dict[str, Any]:
    """02_distill: :func:`distill_metrics` and the section (stages, quick check, ablation)."""
    m = distill_metrics(cfg, stages, check, ablation)
    atomic_write_json(section_dir("02_distill") / "metrics.json", m)
    abl_md = "" if cfg.ablation.teacher_nfes else (
        "\n### Teacher-NFE ablation\n\nNot run in this profile (its `ablation.teacher_nfes` is empty); "
        "the `small-long` profile runs it ([results/small-long](small-long/README.md)).\n")
    if ablation.rows:
        abl_md = f"""
### Teacher-NFE ablation (the paper's Tab. 3 analogue)

One student per total teacher NFE `N`, each trained {ablation.train.steps} steps from the same teacher with the
same seed; seconds per distillation step (batch {ablation.train.batch_size}) and the 1-NFE student's quality on
the evaluation set (`dist_ref_1nfe`: distance to the guided {check.max_nfe}-NFE teacher on the same noise).

{table_md(ablation.table)}

![ablation](02_distill/teacher_nfe_ablation.png)
"""
    stage2_md = "" if stages.trainer2 is None else (
        f"; then a second stage from that student, {stages.summary2['steps']} steps with the whole interval for "
        f"{cfg.stage2.p_full:.0%} of the samples (lr {cfg.stage2.lr:g}, "
        f"{pd.DataFrame(stages.trainer2.history)['sec_per_step'].mean():.2f} s/step)")
    default_run = student_run(cfg.profile)
    final_md = f"The final student is run `{cfg.final_run}`" + ("." if cfg.final_run == default_run else
        f" (03-06 read `{default_run}` by default: pass them STUDENT_RUN={cfg.final_run!r}).")
    i, tr = cfg.imf, cfg.trajectory
    how = (f"N = {i.teacher_nfe} teacher sub-steps over [0, 1] rolled out per sample, CFG {i.cfg_scale:g} in the target, "
           f"freeze = `{cfg.freeze}`, {stages.summary['steps']} steps with the whole interval for {i.p_full:.0%} of the "
           "samples") if cfg.objective.objective == "rollout" else (
           f"trajectory reuse: the guided teacher (CFG {tr.cfg_scale:g}) integrated once per training utterance on the "
           f"{tr.grid_nfe}-step grid ({tr.noises_per_utt} noise(s) each) and cached, pairs (t, r) read off the stored "
           f"trajectories (no teacher call in a training step), freeze = `{cfg.freeze}`, {stages.summary['steps']} steps "
           f"with the whole interval for {tr.p_full:.0%} of the pairs")
    write_section("02_distill", f"""## 02 — IntMeanFlow distillation (`notebooks/02_distill.ipynb`)

Student from the teacher's weights (init strategy), {how} ({m['sec_per_step']:.2f} s/step){stage2_md}. {final_md}
Quick check on the evaluation set (distance to the guided {check.max_nfe}-NFE teacher on the same noise):

{table_md(check.table[['system', 'nfe', 'fs_ratio', 'gv_ratio', 'dist_ref']])}

![student loss](02_distill/student_loss.png)
{abl_md}""")
    return m
