"""Notebook 08 (text2mel with F5-TTS's DiT): its plan, training, evaluations and the O3S call site.

Each step is one call (the notebook stays thin)::

    plan = text2mel_plan("small")               # profile section ``text2mel``, corpus, run folders
    summaries = train_text2mel(plan.corpus, plan.stages, plan.runs)   # imf.train.text2mel
    ev = evaluate_text2mel(plan, ["wer", "sim"]) # NFE table, paired verdicts, speed ratio, targets
    align = alignment_check(plan, ev)            # WER with the true vs a shuffled text, same noise
    size = teacher_size_table(plan, ev)          # the teacher-size ablation
    o3s = text2mel_o3s(plan, ev)                 # O3S objectives searched on dev, judged on test (student, teacher)

Nothing is written here except checkpoints (training); :mod:`imf.runs.sections_text2mel` writes results.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from imf.core.checkpoints import load_model
from imf.core.runtime import setup_threads
from imf.data import CorpusConfig
from imf.data.importers import ImportConfig
from imf.data.text2mel import Text2MelDataset
from imf.eval.evalset import EvalSet
from imf.eval.judges import JudgesConfig, judge_labels, judge_specs, make_judges
from imf.eval.metrics import distance_per_utterance, higher_is_better, intrinsic_per_utterance, paired_verdict
from imf.eval.o3s_objectives import Bench, ObjectiveStudy, judged_columns, objective_study
from imf.eval.speed import speed_table
from imf.eval.sweep import INTRINSIC, generate, judge_table, nfe_sweep
from imf.eval.systems import System
from imf.eval.text2mel import (SpanJudges, T2MEvalConfig, judged_points, make_t2m_eval_set, t2m_points,
                               with_text_of)
from imf.flow import schedules
from imf.flow.o3s import O3SConfig
from imf.flow.solvers import Guided
from imf.models.vocoder import load_vocoder
from imf.runs.open import open_corpus
from imf.runs.profiles import profile, runs_dir
from imf.runs.report import section_dir
from imf.runs.sections_config import O3SSection
from imf.runs.sections_eval import write_o3s_result
from imf.train.text2mel import STAGES, T2MStagesConfig, train_text2mel

SECTION = "08_text2mel"
STUDENT, TEACHER_TARGET_NFE = "student", 8  # the target: student 3 NFE closer to the reference than the teacher at 8


@dataclasses.dataclass
class T2MPlan:
    """What 08 works on: the corpus, the section's configs, run folders per stage, results folder."""
    profile: str
    corpus: Any
    stages: T2MStagesConfig
    eval: T2MEvalConfig
    runs: dict[str, Path]
    out: Path
    o3s: O3SSection = O3SSection()  # text2mel.o3s: the objectives, NFEs and budget of text2mel_o3s

    def ckpt(self, stage: str) -> Path:
        return self.runs[stage] / "checkpoints" / "last.pt"


RECIPE_KEYS = ("text", "upsampling", "frac_min", "max_frames")  # the teacher-recipe knobs of the alignment search


def text2mel_plan(profile_name: str, seed: int = 0, prefix: str = "t2m", steps: Mapping[str, int] | None = None,
                  n_utts: int = 0, recipe: Mapping[str, Any] | None = None, size_ablation: bool = True,
                  corpus_dir: str = "") -> T2MPlan:
    """08's setup from the profile's ``text2mel`` section. ``steps``: ``teacher, student, small, size`` step counts
    replacing the profile's where > 0. ``recipe`` (a falsy value keeps the profile's): ``text`` ``"phone" | "char"``;
    ``upsampling`` ``"average"`` (F5's ``text_embedding_average_upsampling``, both models) | ``"none"``; ``frac_min``
    (smallest infilled fraction); ``max_frames`` (longest utterance). Give each recipe its own run ``prefix``."""
    P = profile(profile_name)
    S = dict(P["text2mel"])
    setup_threads()
    corpus = open_corpus(CorpusConfig.from_dict(P["corpus"]), corpus_dir,
                         importer=ImportConfig.from_dict(P["corpus_import"]))
    steps = dict(steps or {})
    keys = {"teacher": "teacher_train", "student": "student_train", "small": "small_train", "size": "size_train"}
    unknown = sorted(set(steps) - set(keys))
    if unknown:
        raise KeyError(f"steps: unknown stage(s) {unknown}; known: {sorted(keys)}")
    for k, section in keys.items():
        S[section] = dict(S[section], seed=seed, **({"steps": steps[k]} if steps.get(k) else {}))
    recipe = {k: v for k, v in dict(recipe or {}).items() if v}
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise KeyError(f"recipe: unknown key(s) {unknown}; known: {list(RECIPE_KEYS)}")
    S["data"] = dict(S["data"], **{k: recipe[k] for k in ("text", "frac_min", "max_frames") if k in recipe})
    if "upsampling" in recipe:
        if recipe["upsampling"] not in ("average", "none"):
            raise ValueError(f"recipe['upsampling'] = {recipe['upsampling']!r}: 'average' | 'none' ('': the profile's)")
        for m in ("model", "small_model"):
            S[m] = dict(S[m], text_embedding_average_upsampling=recipe["upsampling"] == "average")
    E = T2MEvalConfig.from_dict(S.pop("eval"), **({"n_utts": n_utts} if n_utts else {}))
    o3s = O3SSection.from_dict(S.pop("o3s", {}))
    S.pop("alignment", None)  # 08a_alignment's study (imf.runs.alignment_study)
    stages = T2MStagesConfig.from_dict(dict(S, size_ablation=size_ablation))
    return T2MPlan(profile_name, corpus, stages, E, {k: runs_dir(profile_name) / f"{prefix}_{k}" for k in STAGES},
                   section_dir(SECTION), o3s)


def train(plan: T2MPlan, progress: bool = True) -> dict[str, dict]:
    """Every stage of :mod:`imf.train.text2mel` into the plan's run folders. -> stage -> training summary."""
    return train_text2mel(plan.corpus, plan.stages, plan.runs, progress)


@dataclasses.dataclass
class T2MEval:
    """:func:`evaluate_text2mel`'s result."""
    es: EvalSet
    data: Text2MelDataset
    teacher: torch.nn.Module
    student: torch.nn.Module
    table: pd.DataFrame  # the NFE table: one row per (system, schedule, NFE)
    reference: Tensor  # the guided teacher at the largest NFE (normalised mels, (N, C, T))
    outputs: dict[tuple[str, int], Tensor]  # (system name, nfe) -> normalised mels of every point
    paired: pd.DataFrame  # student 3 NFE vs guided teacher, per metric
    speed: pd.DataFrame  # speed_table rows
    targets: dict[str, Any]
    judges: SpanJudges | None
    judge_labels: dict[str, str]


def make_span_judges(plan: T2MPlan, judges: Sequence[str], wer: Sequence[str] | None) -> SpanJudges | None:
    """:class:`SpanJudges` with 00_vocoder's vocoder, or None (printed why) without judges or vocoder."""
    voc = runs_dir(plan.profile) / "vocoder" / "checkpoints" / "last.pt"
    if not judges or not voc.exists():
        print(f"no audio judges: JUDGES={list(judges)!r}, vocoder trained (00_vocoder): {voc.exists()}")
        return None
    return SpanJudges(load_vocoder(voc, plan.corpus.mel_config), make_judges(JudgesConfig(judges=judge_specs(judges))),
                      wer)


def _closer(metric: str, a: Tensor, b: Tensor) -> Tensor:
    """Per utterance, how much ``a`` beats ``b`` on ``metric`` (positive: a better). Ratios to real speech
    (``fs_ratio``, ``gv_ratio``) are better the closer to 1 (in log); the others by their direction."""
    if metric in ("fs_ratio", "gv_ratio"):
        return b.log().abs() - a.log().abs()
    return (a - b) if higher_is_better(metric, True) else (b - a)


def paired_table(ev_es: EvalSet, x_a: Tensor, x_b: Tensor, ref: Tensor, name_a: str, name_b: str,
                 judges: SpanJudges | None, x_dist: Tensor | None = None, name_dist: str = "") -> pd.DataFrame:
    """Paired per-utterance verdicts of ``x_a`` vs ``x_b`` on every metric (:func:`paired_verdict`, 2 SE):
    ``fs_ratio``/``gv_ratio`` (closeness to real speech; labelled "(utterance mean)": the means of per-utterance
    ratios, not the NFE table's corpus-level ratios), the judges' columns, and ``dist_ref`` against
    ``x_dist`` (``name_dist``; default ``x_b``: then it is skipped, ``x_b`` being the reference)."""
    es = ev_es
    den = lambda x: es.corpus.denormalize(x) * es.mask[:, None]  # noqa: E731
    per = {k: intrinsic_per_utterance(den(x), es.real_logmel(), es.mask, den(ref)) for k, x in (("a", x_a), ("b", x_b))}
    rows = []
    for m in ("fs_ratio", "gv_ratio"):
        rows.append({"metric": f"{m} (utterance mean)", "first": name_a, "second": name_b,
                     "first_mean": per["a"][m].mean().item(),
                     "second_mean": per["b"][m].mean().item(),
                     **paired_verdict(_closer(m, per["a"][m], per["b"][m]), name_a, name_b)})
    if x_dist is not None:
        d_a, d_b = (distance_per_utterance(den(x), den(ref), es.mask) for x in (x_a, x_dist))
        rows.append({"metric": "dist_ref", "first": name_a, "second": name_dist, "first_mean": d_a.mean().item(),
                     "second_mean": d_b.mean().item(), **paired_verdict(d_b - d_a, name_a, name_dist)})
    if judges is not None:
        ta, tb = judge_table(judges, es, x_a), judge_table(judges, es, x_b)
        for m in [c for c in ("wer", "sim", "mos") if c in ta]:
            a, b = (torch.tensor(t[m].to_numpy(dtype="float64")) for t in (ta, tb))
            rows.append({"metric": m, "first": name_a, "second": name_b, "first_mean": a.nanmean().item(),
                         "second_mean": b.nanmean().item(), **paired_verdict(_closer(m, a, b), name_a, name_b)})
    return pd.DataFrame(rows)


def evaluate_text2mel(plan: T2MPlan, judges: Sequence[str] = (), wer: Sequence[str] | None = None,
                      progress: bool = True) -> T2MEval:
    """The NFE table (:func:`imf.eval.text2mel.t2m_points`, identical noise, every intrinsic metric + judges),
    the paired verdicts of the 3-NFE student against the guided teacher at the largest NFE (dist_ref against
    the guided teacher at 8 NFE), the speed ratio and the issue's two targets."""
    E, S = plan.eval, plan.stages
    teacher, student = load_model(plan.ckpt("teacher")), load_model(plan.ckpt("student"))
    data = Text2MelDataset(plan.corpus, E.split, S.data)
    es = make_t2m_eval_set(data, E.n_utts, E.seed, E.max_prompt_frames)
    points, (ref_sys, ref_nfe) = t2m_points(teacher, student, E)
    reference, _, _ = generate(ref_sys.model, es, ref_sys.grid(ref_nfe))
    aj = make_span_judges(plan, judges, wer)
    table, kept = nfe_sweep(es, points, reference=reference, judges=aj, progress=progress, keep=True,
                            judged=judged_points(E, ref_sys))
    outputs = kept
    s3 = (STUDENT, 3) if (STUDENT, 3) in outputs else (STUDENT, max(E.student_nfes))
    below = [n for n in E.teacher_nfes if n < ref_nfe] or [ref_nfe]  # the reference itself is no competitor
    t8 = (ref_sys.name, min(below, key=lambda n: (abs(n - TEACHER_TARGET_NFE), -n)))
    paired = paired_table(es, outputs[s3], reference, reference, f"student {s3[1]} NFE",
                          f"{ref_sys.name} {ref_nfe} NFE", aj, outputs[t8], f"{ref_sys.name} {t8[1]} NFE")
    speed = speed_table(teacher, student, es.z_0, es.cond, E.cfg_scale, ref_nfe, sorted({s3[1], 1}),
                        E.rtf_repeats, progress=progress)
    row = lambda name, n: table[(table.system == name) & (table.schedule == "uniform") & (table.nfe == n)].iloc[0]  # noqa: E731
    st, t8r, tr = row(STUDENT, s3[1]), row(*t8), row(ref_sys.name, ref_nfe)
    targets = {"student_nfe": s3[1], "teacher_nfe": t8[1], "dist_ref_student": float(st.dist_ref),
               "dist_ref_teacher": float(t8r.dist_ref), "dist_ref_met": bool(st.dist_ref < t8r.dist_ref),
               "fs_ratio_student": float(st.fs_ratio), "fs_ratio_teacher_ref": float(tr.fs_ratio),
               "fs_ratio_met": bool(st.fs_ratio >= 0.9 * tr.fs_ratio)}
    return T2MEval(es, data, teacher, student, table, reference, outputs, paired, speed, targets, aj,
                   {} if aj is None else judge_labels(aj.judges))


def speed_ratios(ev: T2MEval) -> dict[str, float]:
    """Guided teacher (largest NFE, CFG) seconds / student seconds at each student NFE timed."""
    sp = ev.speed
    t_ref = float(sp.seconds.iloc[0])
    return {f"student_{int(r.nfe)}": t_ref / float(r.seconds) for r in sp.itertuples() if r.system == "IntMeanFlow student"}


def alignment_check(plan: T2MPlan, ev: T2MEval, shift: int = 1) -> pd.DataFrame:
    """Does the guided teacher (largest NFE) speak its text? :func:`alignment_of` on 08's evaluation."""
    grid = schedules.uniform(max(plan.eval.teacher_nfes))
    return alignment_of(Guided(ev.teacher, plan.eval.cfg_scale), ev.es, ev.data, grid, ev.reference, ev.judges, shift)


def alignment_of(model, es: EvalSet, data: Text2MelDataset, grid: Tensor, x: Tensor | None = None,
                 judges: SpanJudges | None = None, shift: int = 1) -> pd.DataFrame:
    """The same prompts and noise with the true text and with another utterance's text (:func:`with_text_of`).

    ``model`` (the guided teacher) samples on ``grid``; ``x``: its output with the true text (generated if None).
    Rows: the outputs with the true and the shuffled text, scored against the true text and (shuffled) against the
    text given, then the real recordings and the vocoder's copy synthesis (ceilings). Columns: ``text_effect``, the
    mean |log-mel difference| between the true-text and shuffled-text outputs (0: the text is ignored);
    ``noise_effect``, the same when only the noise changes (the scale); ``text_vs_noise``, the paired per-utterance
    verdict of text_effect against noise_effect (2 SE; ``effect_se`` the SE of their difference); with judges,
    their scores and, on the shuffled row scored against the true text, ``wer_gain`` ± ``wer_gain_se``:
    per-utterance WER(shuffled) - WER(true) on the judged
    voices, ``wer_verdict`` its paired verdict ("true text" beyond 2 SE: the teacher speaks its text)."""
    if x is None:
        x, _, _ = generate(model, es, grid)
    wrong = with_text_of(es, data, shift)
    x_wrong, _, _ = generate(model, wrong, grid)
    den = lambda y: es.corpus.denormalize(y) * es.mask[:, None]  # noqa: E731
    d_text = distance_per_utterance(den(x), den(x_wrong), es.mask)
    d_noise = with_noise_effect(model, es, grid, x, den)
    v = paired_verdict(d_text - d_noise, "text", "noise")
    shared = {"noise_effect": d_noise.mean().item(), "effect_se": v["gain_se"], "text_vs_noise": v["verdict"]}
    rows = [{"text given": "true", "scored against": "true text", "text_effect": 0.0, **shared},
            {"text given": "shuffled", "scored against": "true text", "text_effect": d_text.mean().item(), **shared},
            {"text given": "shuffled", "scored against": "given (shuffled) text", "text_effect": d_text.mean().item(),
             **shared}]
    if judges is not None:
        for r, (s, y) in zip(rows, ((es, x), (es, x_wrong), (wrong, x_wrong))):
            r.update(judges(s, y))
        if "wer" in rows[0]:
            w_true, w_wrong = (torch.tensor(judge_table(judges, es, y)["wer"].to_numpy(dtype="float64"))
                               for y in (x, x_wrong))
            v = paired_verdict(w_wrong - w_true, "true text", "shuffled text")
            rows[1].update(wer_gain=v["gain"], wer_gain_se=v["gain_se"], wer_verdict=v["verdict"])
        rows += [{"text given": "real recordings", "scored against": "true text", **judges.real_audio(es)},
                 {"text given": "vocoder copy-synthesis", "scored against": "true text", **judges(es, es.z_1)}]
    return pd.DataFrame(rows)


def with_noise_effect(model, es: EvalSet, grid: Tensor, x: Tensor, den) -> Tensor:
    """The scale of ``text_effect``, per utterance (N,): the mean |log-mel difference| when only the NOISE changes
    (each row's noise rolled to the next utterance's, cut to its own frames), true text kept."""
    z_0 = torch.roll(es.z_0, 1, 0) * es.cond["mask"][:, None]
    other, _, _ = generate(model, dataclasses.replace(es, z_0=z_0), grid)
    return distance_per_utterance(den(x), den(other), es.mask)


def teacher_size_table(plan: T2MPlan, ev: T2MEval, progress: bool = True) -> pd.DataFrame | None:
    """The teacher-size ablation at the student NFEs: the small student distilled from the BIG teacher, the same
    small student from its own-size teacher, the small model's own output (guided, uniform), the big student;
    identical noise, ``dist_ref`` to the big guided teacher at the largest NFE; the audio judges at
    ``eval.judged_student_nfes`` (every NFE when empty). None without the ablation."""
    if not plan.stages.size_ablation:
        return None
    E = plan.eval
    small = load_model(plan.ckpt("small_teacher"))
    systems = [System("small student from big teacher", load_model(plan.ckpt("small_from_big"))),
               System("small student from own teacher", load_model(plan.ckpt("small_from_own"))),
               System(f"small model, own output (w={E.cfg_scale:g})", Guided(small, E.cfg_scale)),
               System("big student (from big teacher)", ev.student)]
    points = [(s, n) for s in systems for n in E.student_nfes]
    judged = None if not E.judged_student_nfes else {(s.name, n) for s in systems for n in E.judged_student_nfes}
    table, _ = nfe_sweep(ev.es, points, reference=ev.reference, judges=ev.judges, progress=progress, judged=judged)
    table.insert(1, "params_m", [sum(p.numel() for p in (s.model.model if isinstance(s.model, Guided) else s.model)
                                     .parameters()) / 1e6 for s, _ in points])
    return table


def text2mel_o3s(plan: T2MPlan, ev: T2MEval, objectives: Sequence[Any] = (), student_nfes: Sequence[int] = (),
                 teacher_nfes: Sequence[int] = (), max_evals: int = 0, progress: bool = True) -> ObjectiveStudy | None:
    """O3S on the text2mel models, the objective study of notebook 04 (:func:`imf.eval.o3s_objectives.objective_study`):
    each objective (``[]``: the profile's ``text2mel.o3s.objectives``; ``dist_ref``, ``wer``, ``sim``, ``mos``,
    ``fs_closeness`` or a weighted mix) searched on the DEV split for the student at ``student_nfes`` and the guided
    teacher at ``teacher_nfes`` (``[]``: the profile's), from the uniform grid, then judged on the TEST evaluation set
    against uniform, sway and EPSS with the paired verdict (2 SE). ``dist_ref`` is to the guided teacher at the
    largest NFE on the same noise (dev and test). Each found grid goes to ``<out>/o3s/<objective>/<model>_nfe<n>/``.
    Audio objectives need the judges of :func:`evaluate_text2mel` (00_vocoder's vocoder). ``max_evals``: the budget
    per search (0: the profile's; < 0: no O3S, None returned)."""
    if max_evals < 0:
        return None
    E, S, O = plan.eval, plan.stages, plan.o3s
    objectives = list(objectives) or list(O.objectives)
    nfes = {"student": list(student_nfes) or list(O.student_nfes), "teacher": list(teacher_nfes) or list(O.teacher_nfes)}
    audio = sorted(judged_columns(objectives))
    if audio and ev.judges is None:
        raise ValueError(f"O3S objectives {objectives!r} need the audio judges {audio}: run 00_vocoder and give "
                         f"JUDGES (08 ran without them)")
    guided = Guided(ev.teacher, E.cfg_scale)
    dev = make_t2m_eval_set(Text2MelDataset(plan.corpus, "dev", S.data), E.n_utts, E.seed, E.max_prompt_frames)
    bench = Bench({"student": ev.student, "teacher": guided}, dev, ev.es, guided, max(E.teacher_nfes),
                  ev.judges if audio else None)

    def write(obj, system, n, res):
        write_o3s_result(res, plan.out / "o3s" / obj.slug / f"{system}_nfe{n}")

    return objective_study(bench, objectives, nfes, O3SConfig(max_evals=max_evals or O.max_evals, ternary_iters=O.iters),
                           progress=progress, on_search=write)


def nan_to_none(d: Mapping[str, Any]) -> dict[str, Any]:
    """A dict with NaN floats as None (JSON)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


__all__ = ["T2MPlan", "text2mel_plan", "train", "T2MEval", "evaluate_text2mel", "speed_ratios", "alignment_check",
           "teacher_size_table", "text2mel_o3s", "paired_table", "make_span_judges", "INTRINSIC"]
