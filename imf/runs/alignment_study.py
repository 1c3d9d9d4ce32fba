"""Notebook 08a_alignment: which F5 teacher recipe learns to speak its text on 2 cores (issue 15's search).

One call per step (the notebook stays thin)::

    cfg = study_config("small")                  # the profile's text2mel.alignment (recipes, steps, utterances)
    study = alignment_study("small", cfg, ["wer"])
    write_alignment_section(study)               # results/08a_alignment/ and its README section

Each recipe (:class:`~imf.runs.sections_config.T2MRecipe`: phones or characters, F5's average-upsampled text
embedding, the smallest infilled fraction, the longest utterance) trains ONLY 08's teacher, for the same number of
steps, in its own run folder ``runs/<profile>/t2m_align_<name>_<steps>_teacher`` (resumable; a finished run is reused;
the step count is in the name because resuming a finished run to more steps would re-enter its cosine schedule, not
train the longer run),
and is judged on the same evaluation utterances, prompts and noise by :func:`imf.runs.text2mel.alignment_of`: the
guided teacher at 08's largest NFE with the true and with a shuffled text. A recipe "speaks its text" when the text
changes its output more than the noise does AND the true text beats the shuffled one on WER, each beyond two
standard errors, paired per utterance. Not part of ``make reproduce`` (about 15 minutes per recipe on 2 cores):
``make alignment-study``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from imf.core.checkpoints import load_model
from imf.core.runtime import atomic_write_json
from imf.data.text2mel import Text2MelDataset
from imf.eval.judges import judges_note, judge_labels
from imf.eval.text2mel import make_t2m_eval_set
from imf.flow import schedules
from imf.flow.solvers import Guided
from imf.runs.open import relative
from imf.runs.profiles import profile
from imf.runs.report import section_dir, table_md, write_section
from imf.runs.sections_config import AlignmentStudySection
from imf.runs.sections_eval import write_csv
from imf.runs.text2mel import alignment_of, make_span_judges, text2mel_plan
from imf.train.text2mel import train_text2mel_teacher
from imf.viz.plots import plot_alignment_study

SECTION = "08a_alignment"
RUN_PREFIX = "t2m_align"


@dataclasses.dataclass
class AlignmentStudy:
    """:func:`alignment_study`'s result: one row per recipe and each recipe's :func:`alignment_of` table."""
    profile: str
    config: AlignmentStudySection
    table: pd.DataFrame
    checks: dict[str, pd.DataFrame]
    judge_labels: dict[str, str]

    def _repr_html_(self) -> str:
        return self.table._repr_html_()


def study_config(profile_name: str, recipes: Sequence[dict[str, Any]] = (), teacher_steps: int = 0,
                 n_utts: int = 0) -> AlignmentStudySection:
    """The profile's ``text2mel.alignment`` with the notebook's overrides (empty / 0: the profile's)."""
    d = dict(profile(profile_name)["text2mel"].get("alignment", {}))
    d.update({k: v for k, v in (("recipes", list(recipes)), ("teacher_steps", teacher_steps), ("n_utts", n_utts)) if v})
    cfg = AlignmentStudySection.from_dict(d)
    if not cfg.recipes:
        raise ValueError(f"profile {profile_name!r} has no text2mel.alignment recipes: pass RECIPES, e.g. "
                         '[{"name": "base"}, {"name": "average", "upsampling": "average"}]')
    return cfg


def _minutes(run_dir: Path, steps: int) -> float:
    """Training minutes of ``steps`` at the run's median logged seconds per step (whole run, across resumes)."""
    log = pd.read_csv(run_dir / "metrics.csv")
    return float(log.sec_per_step.median()) * steps / 60


def alignment_study(profile_name: str, cfg: AlignmentStudySection, judges: Sequence[str] = ("wer",),
                    wer: Sequence[str] | None = None, seed: int = 0, progress: bool = True,
                    corpus_dir: str = "") -> AlignmentStudy:
    """Train each recipe's teacher for ``cfg.teacher_steps`` and check its alignment (module doc). Every recipe is
    judged on the same utterances of the profile's evaluation split (its data filter, not the recipe's), prompts and
    noise. Columns: the recipe's knobs as resolved, ``params`` (M), ``train_min`` (at the median s/step), the final
    loss, ``text_effect`` / ``noise_effect`` and their verdict, WER with the true / shuffled text and the paired
    WER verdict."""
    base = text2mel_plan(profile_name, seed, RUN_PREFIX, size_ablation=False, corpus_dir=corpus_dir)
    aj = make_span_judges(base, judges, wer)
    rows, checks = [], {}
    for r in cfg.recipes:
        prefix = f"{RUN_PREFIX}_{r.name}_{cfg.teacher_steps}"
        plan = text2mel_plan(profile_name, seed, prefix, {"teacher": cfg.teacher_steps}, cfg.n_utts, r.recipe(), False,
                             corpus_dir)
        S, E = plan.stages, plan.eval
        _, summary = train_text2mel_teacher(plan.corpus, plan.runs["teacher"], S.model, S.teacher_train, S.data,
                                            S.infill, progress, f"alignment study: {r.name}")
        teacher = load_model(plan.ckpt("teacher"))
        eval_data = dataclasses.replace(S.data, max_frames=base.stages.data.max_frames)  # the same utterances for all
        data = Text2MelDataset(plan.corpus, E.split, eval_data)
        es = make_t2m_eval_set(data, E.n_utts, E.seed, E.max_prompt_frames)
        check = alignment_of(Guided(teacher, E.cfg_scale), es, data, schedules.uniform(max(E.teacher_nfes)),
                             judges=aj)
        checks[r.name] = check
        true, wrong = check.iloc[0], check.iloc[1]
        row = {"recipe": r.name, "text": S.data.text,
               "upsampling": "average" if S.model.text_embedding_average_upsampling else "none",
               "frac_min": S.data.frac_min, "max_frames": S.data.max_frames,
               "params_M": sum(p.numel() for p in teacher.parameters()) / 1e6, "steps": summary["steps"],
               "train_min": _minutes(plan.runs["teacher"], summary["steps"]), "final_loss": summary["final_loss"],
               "text_effect": wrong.text_effect, "noise_effect": wrong.noise_effect, "effect_se": wrong.effect_se,
               "text_vs_noise": wrong.text_vs_noise}
        if "wer" in check:
            row.update(wer_true=true.wer, wer_shuffled=wrong.wer, wer_gain=wrong.wer_gain,
                       wer_gain_se=wrong.wer_gain_se, wer_verdict=wrong.wer_verdict)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["speaks_text"] = (table.text_vs_noise == "text") & (table.get("wer_verdict", "") == "true text")
    return AlignmentStudy(profile_name, cfg, table, checks, {} if aj is None else judge_labels(aj.judges))


def conclusion(study: AlignmentStudy) -> str:
    """One sentence: the cheapest recipe that speaks its text, or that none does and which moved most."""
    t, steps = study.table, study.config.teacher_steps
    ok = t[t.speaks_text]
    if len(ok):
        best = ok.sort_values("train_min").iloc[0]
        return (f"The cheapest recipe that speaks its text within {steps} steps: **{best.recipe}** "
                f"({best.train_min:.1f} min of training on this machine).")
    ratio = (t.text_effect / t.noise_effect).to_numpy()
    i = int(ratio.argmax())
    top, others = t.iloc[i], [r for j, r in enumerate(ratio) if j != i]
    text_wins = ", ".join(t.recipe[t.text_vs_noise == "text"]) or "none"
    return (f"**No recipe speaks its text within {steps} steps** (WER with the true text not below the shuffled "
            f"text's beyond 2 SE, or the text moving the output less than the noise). The text moves the output more "
            f"than the noise for: {text_wins}; the largest text / noise ratio: **{top.recipe}** "
            f"({top.text_effect:.3f} / {top.noise_effect:.3f} = {ratio[i]:.2f}"
            + (f"; the other recipes: at most {max(others):.3f})." if others else ")."))


def write_alignment_section(study: AlignmentStudy) -> dict[str, Any]:
    """``results/08a_alignment/`` (study.csv, one ``check_<recipe>.csv`` per recipe, study.png) and the README
    section; returns the table's records and the figure's path."""
    out = section_dir(SECTION)
    write_csv(study.table, out / "study.csv")
    for name, check in study.checks.items():
        write_csv(check, out / f"check_{name}.csv")
    fig = plot_alignment_study(study.table, out / "study.png",
                         title=f"text2mel teacher recipes after {study.config.teacher_steps} steps each")
    c = study.config
    write_section(SECTION, f"""## 08a — which teacher recipe speaks its text? (`notebooks/08a_alignment.ipynb`)

Issue 15's alignment search: each recipe trains 08's teacher DiT alone, {c.teacher_steps} steps each, and the guided
teacher is judged on the same {c.n_utts} test utterances, prompts and noise with the true text and with another
utterance's text. `text_effect`: mean |log-mel| change from the text swap; `noise_effect`: from a noise swap (the
scale); `text_vs_noise`: their paired verdict (2 SE, `effect_se`); `wer_true` / `wer_shuffled`: WER against the
true text of the outputs given the true / the shuffled text, `wer_verdict` the paired verdict. A recipe speaks its
text when both verdicts say so (`speaks_text`). Profile `{study.profile}`; not part of `make reproduce`
(`make alignment-study`). Each recipe's full check: `08a_alignment/check_<recipe>.csv`.

{table_md(study.table)}

{conclusion(study)}

{judges_note(study.judge_labels) if study.judge_labels else '(no audio judges run)'}

![alignment study](08a_alignment/study.png)
""")
    record = {"profile": study.profile, "config": c.to_dict(), "conclusion": conclusion(study),
              "judge_labels": study.judge_labels,
              "table": study.table.to_dict("records"), "figure": relative(fig)}
    atomic_write_json(out / "metrics.json", record)
    return dict(record, figure=str(fig))
