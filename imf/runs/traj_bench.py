"""Cost against quality of the two IntMeanFlow recipes from one teacher: the paper's per-sample rollout
(:func:`imf.train.token2mel.distill`) and trajectory reuse (:func:`imf.train.trajectories.distill_trajectories`).

Each run evaluates its EMA student at every checkpoint on the fixed-noise evaluation set (02's: identical noise
for every system) and appends one row to ``<out>/<name>.csv``: student steps, teacher rows evaluated so far
(counted by a forward hook on the teacher network: a guided evaluation of B samples is 2B rows), training wall
seconds (evaluation time excluded), 1- and 2-NFE ``dist_ref`` (to the guided 32-NFE teacher), the 1-NFE
fine-structure ratio over the guided 32-NFE teacher's, and how many utterances the 1-NFE student is closer to the
reference than the guided 4-NFE teacher. ``--plot`` draws every CSV of ``<out>`` on one figure::

    IMF_RUNS=... IMF_RESULTS=... python -m imf.runs.traj_bench --method rollout --name rollout --steps 3000
    python -m imf.runs.traj_bench --method trajectory --name traj_k16 --steps 3000 --p-full 0.7
    python -m imf.runs.traj_bench --plot
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from imf.core.checkpoints import load_checkpoint, load_model
from imf.core.runtime import setup_threads
from imf.data import DataConfig, load_corpus
from imf.eval.evalset import EvalSet, make_eval_set
from imf.eval.metrics import distance, fine_structure_ratio
from imf.eval.sweep import generate, utterance_scores
from imf.eval.systems import guided
from imf.flow.objectives import IMFConfig
from imf.flow.schedules import uniform
from imf.flow.trajectories import TrajectoryConfig
from imf.runs.profiles import profile, runs_dir
from imf.runs.report import section_dir, table_md, write_section
from imf.runs.sections_eval import write_csv
from imf.train.token2mel import distill
from imf.train.trainer import TrainConfig, Trainer
from imf.train.trajectories import distill_trajectories
from imf.viz.distill import plot_cost_vs_quality

TARGET_DIST_REF = 0.121  # small-long's student (3000 + 2400 rollout steps), 1-NFE dist_ref
SECTION = "02_trajectory_reuse"  # results/<SECTION>/ (figure, tables, the runs' CSVs) and its README section
OUTPUTS = ("cost_vs_quality.csv", "cost_to_target.csv")  # what --plot writes beside the runs' CSVs


class Judge:
    """The fixed-noise references a student is measured against (computed once, before any timing)."""

    def __init__(self, teacher: torch.nn.Module, es: EvalSet, w: float, batch_size: int = 32):
        self.es, self.batch_size = es, batch_size
        g = guided(teacher, w)
        self.ref, _, _ = generate(g, es, uniform(32), batch_size=batch_size)
        four, _, _ = generate(g, es, uniform(4), batch_size=batch_size)
        self.teacher4 = utterance_scores(es, four, "dist_ref", reference=self.ref)
        real = es.real_logmel()
        self.fs_teacher = fine_structure_ratio(self._mel(self.ref), real, es.mask)
        self.real = real

    def _mel(self, x: torch.Tensor) -> torch.Tensor:
        return self.es.corpus.denormalize(x) * self.es.mask[:, None]

    def __call__(self, student: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for nfe in (1, 2):
            x, _, _ = generate(student, self.es, uniform(nfe), batch_size=self.batch_size)
            d = utterance_scores(self.es, x, "dist_ref", reference=self.ref)
            out[f"dist_ref_{nfe}"] = distance(self._mel(x), self._mel(self.ref), self.es.mask)
            if nfe == 1:
                out["fs_rel_1"] = fine_structure_ratio(self._mel(x), self.real, self.es.mask) / self.fs_teacher
                out["closer_than_teacher4"] = int((d < self.teacher4).sum())
        out["n_utts"] = len(self.es)
        return out


def run(method: str, name: str, prof: str = "small", steps: int = 3000, lr: float = 0.0, ckpt_every: int = 100,
        p_full: float = -1.0, grid_only: bool = False, p_fresh: float = 0.0, noises: int = 1, max_utts: int = 0,
        grid_nfe: int = 16, seed: int = 0, out: str | Path | None = None, eval_utts: int = 0,
        init: str = "", after: str = "") -> pd.DataFrame:
    """Train one student (``method``: ``rollout`` | ``trajectory``) from the profile's teacher, evaluating at
    every checkpoint; returns (and writes) the cost/quality table ``<out>/<name>.csv``. ``eval_utts`` > 0: only
    the first this many utterances of the profile's evaluation set (same noise), for a loaded machine. ``init``: a
    student checkpoint to start from (its EMA weights; e.g. a rollout stage after a trajectory-reuse run); ``after``:
    the name of the run it continues, whose last row's steps, teacher rows and wall seconds are added to this one's."""
    P = profile(prof)
    out = Path(out or section_dir("traj_bench"))
    runs = runs_dir(prof)
    teacher_ckpt = runs / "teacher" / "checkpoints" / "last.pt"
    corpus = load_corpus(load_checkpoint(teacher_ckpt)["config"]["corpus"])
    data = DataConfig.from_dict(P["data"])
    E = P["eval"]
    es = make_eval_set(corpus, E["split"], E["n_utts"], E["seed"], E["max_frames"], data.prompt_frames)
    es = es.subset(list(range(eval_utts))) if 0 < eval_utts < len(es) else es
    imf = IMFConfig.from_dict(P["imf"])
    judge = Judge(load_model(teacher_ckpt), es, imf.cfg_scale, E["batch_size"])
    train = TrainConfig.from_dict(P["student_train"], steps=steps, ckpt_every=ckpt_every, log_every=1, seed=seed,
                                  **({"lr": lr} if lr else {}))
    rows: list[dict[str, Any]] = []
    box: dict[str, int] = {}
    prior = pd.read_csv(out / f"{after}.csv").iloc[-1] if after else None  # the run this one continues
    clock = {"t0": time.perf_counter(), "eval": 0.0}

    def on_checkpoint(tr: Trainer) -> None:
        t = time.perf_counter()
        label = method if prior is None else f"{prior['method']}+{method}"  # e.g. trajectory+rollout
        rows.append({"method": label, "name": name, "step": tr.step, "teacher_rows": box.get("rows", 0),
                     "wall_s": t - clock["t0"] - clock["eval"], **judge(tr.ema)})
        if prior is not None:
            for k in ("step", "teacher_rows", "wall_s"):
                rows[-1][k] += prior[k].item()
        pd.DataFrame(rows).to_csv(out / f"{name}.csv", index=False)
        clock["eval"] += time.perf_counter() - t
        r = rows[-1]
        print(f"[{name}] step {r['step']} rows {r['teacher_rows']} wall {r['wall_s']:.0f}s dist_ref_1 "
              f"{r['dist_ref_1']:.4f} dist_ref_2 {r['dist_ref_2']:.4f} fs_rel {r['fs_rel_1']:.3f} "
              f"closer {r['closer_than_teacher4']}/{r['n_utts']}", flush=True)

    run_dir = runs / "traj_bench" / name
    if method == "rollout":
        imf = imf.replace(p_full=p_full) if p_full >= 0 else imf
        distill(corpus, teacher_ckpt, run_dir, train, imf, data, teacher_rows=box, on_checkpoint=on_checkpoint,
                init=init or None)
    elif method == "trajectory":
        traj = TrajectoryConfig(grid_nfe=grid_nfe, noises_per_utt=noises, max_utts=max_utts, cfg_scale=imf.cfg_scale,
                                grid_only=grid_only, p_fresh=p_fresh, teacher_nfe=imf.teacher_nfe,
                                **({"p_full": p_full} if p_full >= 0 else {}))
        cache = runs / "trajectories" / f"K{grid_nfe}_n{noises}_u{max_utts}_s{seed}"
        if (cache / "meta.json").exists():  # a reused cache: charge its build cost as if paid now
            box["rows"] = int(json.loads((cache / "meta.json").read_text()).get("teacher_rows", 0))
        distill_trajectories(corpus, teacher_ckpt, cache, run_dir, train, traj, data, teacher_rows=box,
                             on_checkpoint=on_checkpoint, init=init or None)
    else:
        raise ValueError(f"--method {method!r}: choose 'rollout' or 'trajectory'")
    return pd.DataFrame(rows)


def cost_table(df: pd.DataFrame, target: float = TARGET_DIST_REF) -> pd.DataFrame:
    """One row per run (``df``: :func:`run`'s rows, several runs): the first evaluated checkpoint whose 1-NFE
    ``dist_ref`` is at or below ``target`` (its step, cumulative teacher rows and training wall seconds; NaN when
    never reached) and the last checkpoint's quality (``dist_ref`` at 1 and 2 NFE, fine-structure ratio over
    the guided 32-NFE teacher's, utterances closer to the reference than the guided 4-NFE teacher)."""
    rows = []
    for name, d in df.groupby("name", sort=False):
        d = d.sort_values("step")
        hit, last = d[d.dist_ref_1 <= target], d.iloc[-1]
        first = hit.iloc[0] if len(hit) else None
        rows.append({"run": name, "method": last.method,
                     "steps_to_target": float(first.step) if first is not None else float("nan"),
                     "teacher_rows_to_target": float(first.teacher_rows) if first is not None else float("nan"),
                     "wall_s_to_target": float(first.wall_s) if first is not None else float("nan"),
                     "last_step": int(last.step), "teacher_rows": int(last.teacher_rows), "wall_s": float(last.wall_s),
                     "dist_ref_1": float(last.dist_ref_1), "dist_ref_2": float(last.dist_ref_2),
                     "fs_rel_1": float(last.fs_rel_1),
                     "closer_than_teacher4": f"{int(last.closer_than_teacher4)}/{int(last.n_utts)}"})
    return pd.DataFrame(rows)


def matched_quality(df: pd.DataFrame, cheap: str, dear: str) -> dict[str, float] | None:
    """Teacher rows and wall seconds each of two runs needed to first reach the best 1-NFE ``dist_ref`` both
    reached (the larger of their minima); None when they share no quality level."""
    a, b = df[df.name == cheap].sort_values("step"), df[df.name == dear].sort_values("step")
    if not len(a) or not len(b):
        return None
    level = max(a.dist_ref_1.min(), b.dist_ref_1.min())
    fa, fb = a[a.dist_ref_1 <= level].iloc[0], b[b.dist_ref_1 <= level].iloc[0]
    return {"dist_ref_1": float(level), f"{cheap}_rows": float(fa.teacher_rows), f"{dear}_rows": float(fb.teacher_rows),
            f"{cheap}_wall_s": float(fa.wall_s), f"{dear}_wall_s": float(fb.wall_s),
            "rows_ratio": float(fa.teacher_rows / max(fb.teacher_rows, 1)), "wall_ratio": float(fa.wall_s / fb.wall_s)}


def write_cost_section(df: pd.DataFrame, out: Path, note: str = "", target: float = TARGET_DIST_REF) -> Path:
    """The cost-vs-quality figure, ``cost_vs_quality.csv`` (every checkpoint), ``cost_to_target.csv``
    (:func:`cost_table`) and the README section, all written from ``df``."""
    write_csv(df, out / "cost_vs_quality.csv")
    table = cost_table(df, target)
    write_csv(table, out / "cost_to_target.csv")
    fig = plot_cost_vs_quality(df, out / "cost_vs_quality.png", target=target)
    methods: dict[str, str] = {}
    for method, run_name in zip(table.method, table.run):
        methods.setdefault(method, run_name)  # the first run of each method (CSVs in name order)
    m = (matched_quality(df, methods["trajectory"], methods["rollout"])
         if {"trajectory", "rollout"} <= methods.keys() else None)
    matched = "" if m is None else (
        f"At the best 1-NFE `dist_ref` both `{methods['trajectory']}` and `{methods['rollout']}` reached "
        f"({m['dist_ref_1']:.3f}), trajectory reuse had used "
        f"{m['rows_ratio']:.1%} of the rollout's teacher forward passes and {m['wall_ratio']:.1%} of its training wall "
        "time (the same machine, at the same time).\n\n")
    return write_section(SECTION, f"""### 02b — cost against quality: per-sample rollout vs trajectory reuse

Both students distilled from the same guided teacher (w = 2), evaluated at every checkpoint on 02's fixed-noise set
(1-NFE `dist_ref` to the guided 32-NFE teacher; target {target:g}, the 1-NFE `dist_ref` of small-long's 3000 + 2400-step
rollout student). `teacher_rows`: teacher network rows evaluated so far, counted by a forward hook (a guided call of B
samples is 2B rows; trajectory reuse pays all of them once, for its cache); `wall_s`: training seconds, evaluation excluded.

{table_md(table)}

{matched}{note}

![cost vs quality]({out.name}/{fig.name})
""")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="trajectory")
    ap.add_argument("--name", default="")
    ap.add_argument("--profile", default="small")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--p-full", type=float, default=-1.0)
    ap.add_argument("--grid-only", action="store_true")
    ap.add_argument("--p-fresh", type=float, default=0.0)
    ap.add_argument("--noises", type=int, default=1)
    ap.add_argument("--max-utts", type=int, default=0)
    ap.add_argument("--grid-nfe", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-utts", type=int, default=0, help="0: the profile's evaluation set")
    ap.add_argument("--init", default="", help="start from this student checkpoint's EMA weights")
    ap.add_argument("--after", default="", help="the run (name) this one continues: its cost is added")
    ap.add_argument("--out", default="")
    ap.add_argument("--plot", action="store_true", help="draw every CSV of --out on one figure, write the table and section")
    ap.add_argument("--note", default="", help="--plot: a paragraph (how the runs were made) put under the table")
    a = ap.parse_args(argv)
    out = Path(a.out or section_dir(SECTION))
    out.mkdir(parents=True, exist_ok=True)
    if a.plot:
        df = pd.concat([pd.read_csv(p) for p in sorted(out.glob("*.csv")) if p.name not in OUTPUTS])
        print(write_cost_section(df, out, a.note))
        return
    setup_threads()
    run(a.method, a.name or a.method, a.profile, a.steps, a.lr, a.ckpt_every, a.p_full, a.grid_only, a.p_fresh,
        a.noises, a.max_utts, a.grid_nfe, a.seed, out, a.eval_utts, a.init, a.after)


if __name__ == "__main__":
    main()
