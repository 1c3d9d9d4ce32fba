"""The closing cell of notebook 08_text2mel: ``results/08_text2mel/`` (metrics.json, CSV tables, figures)
and its README section (:func:`imf.runs.report.write_section`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from imf.core.runtime import atomic_write_json
from imf.eval.judges import judges_note
from imf.eval.o3s_objectives import ObjectiveStudy, objective_note
from imf.runs.open import relative
from imf.runs.report import table_md, write_section
from imf.runs.sections_eval import write_csv
from imf.runs.text2mel import SECTION, T2MEval, T2MPlan, speed_ratios
from imf.viz.plots import plot_mels, plot_metric_vs_nfe

FIELDS = ("steps", "final_loss", "sec_per_step", "seconds_this_session")


def plot_text2mel(plan: T2MPlan, ev: T2MEval) -> list[Path]:
    """``nfe_curves.png`` (every metric of the NFE table against NFE, one line per system) and
    ``samples.png`` (the first evaluation utterance with its prompt: real, teacher and student outputs; the outputs
are zero on the prompt frames, which the metrics do not score)."""
    t = ev.table
    shown = [c for c in ("dist_ref", "fs_ratio", "gv_ratio", "noise_corr", "wer", "sim", "mos") if c in t and t[c].notna().any()]
    curve = plot_metric_vs_nfe(t, shown, plan.out / "nfe_curves.png", refs={"fs_ratio": 1.0, "gv_ratio": 1.0},
                               title="text2mel (F5 DiT): identical noise; dotted: real speech")
    student = [k for k in ev.outputs if k[0] == "student"]
    keys = [k for k in ev.outputs if k[0] != "student" and "sway" not in k[0] and "EPSS" not in k[0]][-2:] + student[-1:]
    es, valid = ev.es, ev.es.cond["mask"][0]
    mels = {"real (prompt | target)": es.corpus.denormalize(es.z_1[0])[:, valid]}
    mels.update({f"{k[0]}, {k[1]} NFE": es.corpus.denormalize(ev.outputs[k][0])[:, valid] for k in keys})
    return [curve, plot_mels(mels, plan.out / "samples.png",
                             title=f"{es.ids[0]} after its prompt {es.prompt_ids[0]}: same noise for every row")]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _records(df: pd.DataFrame | None) -> list[dict] | None:
    return None if df is None else _clean(df.to_dict("records"))


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def write_text2mel_section(plan: T2MPlan, summaries: Mapping[str, Mapping[str, Any]], ev: T2MEval,
                           align: pd.DataFrame, size: pd.DataFrame | None,
                           o3s: ObjectiveStudy | None) -> dict[str, Any]:
    """Write results/08_text2mel (metrics.json, nfe_table.csv, paired.csv, speed.csv, alignment.csv,
    teacher_size.csv, o3s.csv (held-out verdicts) and o3s_searches.csv, the figures of :func:`plot_text2mel`) and the
    README section; return the metrics."""
    out, E, S = plan.out, plan.eval, plan.stages
    plot_text2mel(plan, ev)
    tables = {"nfe_table": ev.table, "paired": ev.paired, "speed": ev.speed, "alignment": align,
              "teacher_size": size, "o3s": None if o3s is None else o3s.table,
              "o3s_searches": None if o3s is None else o3s.searches}
    for name, df in tables.items():
        if df is not None:
            write_csv(df, out / f"{name}.csv")
    ratios = speed_ratios(ev)
    params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in (("teacher", ev.teacher), ("student", ev.student))}
    metrics = _clean({
        "stages": {k: {f: v.get(f) for f in FIELDS} for k, v in summaries.items()}, "params_m": params,
        "text": S.data.text, "model": S.model.to_dict(), "small_model": S.small_model.to_dict(), "eval": E.to_dict(),
        "n_utts": len(ev.es), **{f"table_{k}": _records(v) for k, v in tables.items()},
        "o3s_objectives": None if o3s is None else [o.spec() for o in o3s.objectives],
        "o3s_note": None if o3s is None else objective_note(o3s.table), "speed_ratio": ratios, "targets": ev.targets,
        "judge_labels": ev.judge_labels, "checkpoints": {k: relative(plan.ckpt(k)) for k in summaries},
    })
    atomic_write_json(out / "metrics.json", metrics)
    T = ev.targets
    speed = ", ".join(f"{v:.1f}x at {k.split('_')[1]} NFE" for k, v in ratios.items())
    sizes = "" if size is None else f"""
**Teacher size** (paper Tab. 1, "impact of teacher size"): a smaller DiT ({S.small_model.dim} x {S.small_model.depth})
trained as its own teacher, then distilled into two students both initialised from it, one from the big teacher
and one from itself; `dist_ref` is to the BIG guided teacher on the same noise (`teacher_size.csv`):

{table_md(size.drop(columns=['grid'], errors='ignore'))}
"""
    o3s_md = "" if o3s is None else f"""
**O3S** (the objective study of 04 on the text2mel models: each objective searched on `dev` from the uniform grid, for
the student and the guided teacher, then the found grid judged on `{E.split}` against uniform, sway and EPSS, paired per
utterance; `o3s.csv`, searches `o3s_searches.csv`, grids under `08_text2mel/o3s/`). {objective_note(o3s.table)}

{table_md(o3s.table[["objective", "system", "nfe", "baseline", "test_found", "test_baseline", "gain", "gain_se", "verdict"]])}
"""
    write_section(SECTION, f"""## 08 — text2mel with F5-TTS's DiT (`notebooks/08_text2mel.ipynb`)

The real `f5_tts` DiT (through `imf.models.backbones.f5`), {S.model.dim} x {S.model.depth} ({params['teacher']:.2f} M parameters),
trained with F5's infilling objective on the embedded corpus ({S.data.text} input, no durations; span
{S.data.frac_min:g}-{S.data.frac_max:g} of each utterance of at most {S.data.max_frames} frames; audio drop {S.infill.p_audio_drop:g},
audio+text drop {S.infill.p_cond_drop:g}; {summaries['teacher']['steps']} steps, final loss {summaries['teacher']['final_loss']:.4f}); an IntMeanFlow
student (teacher N = {S.imf.teacher_nfe}, guidance w = {S.imf.cfg_scale:g} = F5's s + 1, {summaries['student']['steps']} steps). Evaluation: {len(ev.es)}
`{E.split}` utterances, each generated after a whole other utterance of its speaker as the prompt (F5 inference,
oracle length), identical noise for every row; `dist_ref` is the distance to the guided teacher at
{max(E.teacher_nfes)} NFE on the same noise.

**Alignment check** (does the teacher speak its text? the guided teacher at {max(E.teacher_nfes)} NFE with the true text and with
another utterance's text, same prompts and noise; `text_effect`: mean |log-mel| change from the text swap, `noise_effect`:
from a noise swap, for scale; `alignment.csv`):

{table_md(align)}

**NFE table** (`nfe_table.csv`, figure `nfe_curves.png`):

{table_md(ev.table.drop(columns=['grid']))}

{judges_note(ev.judge_labels) if ev.judge_labels else '(no audio judges run)'}

**Student at {T['student_nfe']} NFE vs the guided teacher**, paired per utterance (2 SE; `paired.csv`;
the fine-structure and global-variance ratios here are means of per-utterance ratios, not the NFE table's corpus-level ones):

{table_md(ev.paired)}

Targets: the student's `dist_ref` at {T['student_nfe']} NFE ({T['dist_ref_student']:.4f}) below the guided teacher's at {T['teacher_nfe']} NFE
({T['dist_ref_teacher']:.4f}): {_met(T['dist_ref_met'])}; its fine-structure ratio ({T['fs_ratio_student']:.3f}) at least 0.9 of the guided
{max(E.teacher_nfes)}-NFE teacher's ({T['fs_ratio_teacher_ref']:.3f}): {_met(T['fs_ratio_met'])}.

Speed ratio, guided teacher ({max(E.teacher_nfes)} NFE + CFG) / student, measured side by side on the evaluation batch: {speed}.
{sizes}{o3s_md}
![NFE curves](08_text2mel/nfe_curves.png)
![samples](08_text2mel/samples.png)
""")
    return metrics
