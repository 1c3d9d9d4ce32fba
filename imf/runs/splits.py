"""Zero-shot evaluation as the papers do it: the same rows on the seen-speaker test split and on the
unseen split (held-out voices, cross-sentence prompts from the same held-out speaker), side by side.

The seen-split evaluation is left exactly as it was (its tables and numbers do not move); the unseen
split is swept afterwards, under a forked RNG, on its own fixed-noise evaluation set, and the two
tables are stacked with a leading ``split`` column (``*_by_split.csv``). :func:`zero_shot_text`
writes the report's sentence from those numbers: how far the guided teacher's fine-structure ratio
drops on unseen voices, and whether the student tracks the teacher equally on both splits (then
the teacher's zero-shot quality, not distillation, is the limit).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import pandas as pd
import torch

from imf.eval.evalset import EvalSet, make_eval_set
from imf.eval.samples import SampleCache
from imf.eval.sweep import nfe_sweep
from imf.eval.systems import System

TRACKS_EQUALLY = 0.1  # student/teacher fs-ratio ratios closer than this on both splits: "about equally"
T = TypeVar("T")


def on_split(corpus, split: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)`` under a forked RNG (the seen pipeline's random draws stay where they were); None,
    without calling it, when the corpus has no such split or it is empty (``split == ""``: zero-shot off)."""
    if not split or split not in set(corpus.manifest.split):
        return None
    with torch.random.fork_rng(devices=[]):
        return fn(*args, **kwargs)


def unseen_eval_set(corpus, split: str, n_utts: int, seed: int, max_frames: int, prompt_frames: int) -> EvalSet | None:
    """The unseen split's evaluation set (the same size/seed rules as the seen one); None when the corpus has
    no such split or it is empty (``split == ""`` turns zero-shot evaluation off)."""
    return on_split(corpus, split, make_eval_set, corpus, split, n_utts, seed, max_frames, prompt_frames)


def sweep_split(es: EvalSet | None, points: Sequence[tuple[System, int]], reference: tuple[System, int],
                batch_size: int, progress: bool = False, cache: SampleCache | None = None) -> pd.DataFrame | None:
    """:func:`imf.eval.sweep.nfe_sweep` of ``points`` on ``es`` (None: None), under a forked RNG."""
    if es is None:
        return None
    with torch.random.fork_rng(devices=[]):
        table, _ = nfe_sweep(es, points, reference=reference, batch_size=batch_size, progress=progress, cache=cache)
    return table


def by_split(seen: pd.DataFrame, unseen: pd.DataFrame | None, seen_split: str = "test",
             unseen_split: str = "unseen") -> pd.DataFrame:
    """``seen`` and ``unseen`` stacked with a leading ``split`` column (seen rows first, unchanged)."""
    parts = [seen.assign(split=seen_split)]
    if unseen is not None:
        parts.append(unseen.assign(split=unseen_split))
    out = pd.concat(parts, ignore_index=True)
    return out[["split"] + [c for c in out.columns if c != "split"]]


def split_voices(corpus, split: str) -> list[str]:
    """The speakers (e.g. es-nyc-m1, fl-awb) of ``split``, sorted."""
    rows = corpus.manifest[corpus.manifest.split == split]
    col = "speaker" if "speaker" in rows else "voice"
    return sorted(map(str, rows[col].unique()))


def _value(table: pd.DataFrame, split: str, system: str, nfe: int, column: str) -> float | None:
    row = table[(table.split == split) & (table.system == system) & (table.nfe == nfe)]
    return None if row.empty else float(row.iloc[0][column])


def zero_shot_numbers(table: pd.DataFrame, teacher: str, teacher_nfe: int, student: str | None = None,
                      student_nfe: int = 1, seen: str = "test", unseen: str = "unseen",
                      column: str = "fs_ratio") -> dict[str, Any]:
    """Per split: the teacher's ``column`` at ``teacher_nfe``, the student's at ``student_nfe`` and their ratio."""
    out: dict[str, Any] = {}
    for name, split in (("seen", seen), ("unseen", unseen)):
        t = _value(table, split, teacher, teacher_nfe, column)
        s = _value(table, split, student, student_nfe, column) if student else None
        out[f"teacher_{column}_{name}"] = t
        out[f"student_{column}_{name}"] = s
        out[f"student_over_teacher_{name}"] = None if (s is None or not t) else s / t
    return out


def zero_shot_text(table: pd.DataFrame, teacher: str, teacher_nfe: int, student: str | None = None,
                   student_nfe: int = 1, voices: Sequence[str] = (), seen: str = "test", unseen: str = "unseen") -> str:
    """The report's zero-shot sentence, computed from ``table`` (:func:`by_split`'s, fs_ratio column)."""
    z = zero_shot_numbers(table, teacher, teacher_nfe, student, student_nfe, seen, unseen)
    ts, tu = z["teacher_fs_ratio_seen"], z["teacher_fs_ratio_unseen"]
    if ts is None or tu is None:
        return f"Zero-shot: no `{unseen}` split in this corpus, so only seen voices are evaluated."
    who = f" ({', '.join(voices)})" if voices else ""
    text = (f"**Zero-shot.** On the held-out voices{who}, cross-sentence prompts from the same held-out speaker, the "
            f"guided {teacher_nfe}-NFE teacher's fine-structure ratio is {tu:.2f} against {ts:.2f} on seen voices "
            f"(unseen / seen = {tu / ts:.2f}).")
    rs, ru = z["student_over_teacher_seen"], z["student_over_teacher_unseen"]
    if rs is None or ru is None:
        return text
    text += (f" The {student_nfe}-NFE student reaches {rs:.2f}x the teacher's ratio on seen voices and {ru:.2f}x on "
             f"unseen ones")
    if abs(rs - ru) < TRACKS_EQUALLY:
        text += (": it tracks the teacher about equally on both splits, so on unseen voices the teacher's zero-shot "
                 "quality, not distillation, is the limit.")
    else:
        text += (f": distillation itself loses {'more' if ru < rs else 'less'} on unseen voices "
                 f"(the ratios differ by {abs(rs - ru):.2f}, more than {TRACKS_EQUALLY}).")
    return text


def side_by_side(table: pd.DataFrame, systems: Sequence[str], columns: Sequence[str] = ("fs_ratio", "gv_ratio", "dist_ref"),
                 seen: str = "test", unseen: str = "unseen") -> pd.DataFrame:
    """One row per (system, NFE) of ``systems``; each of ``columns`` twice, ``<column> [<seen>]`` and
    ``<column> [<unseen>]``, next to each other (unseen NaN where that split was not swept)."""
    rows = table[table.system.isin(list(systems))]
    wide = rows.pivot_table(index=["system", "nfe"], columns="split", values=list(columns), sort=False)
    out = pd.DataFrame(index=wide.index)
    for c in columns:
        for s in (seen, unseen):
            out[f"{c} [{s}]"] = wide[(c, s)] if (c, s) in wide.columns else float("nan")
    return out.reset_index()
