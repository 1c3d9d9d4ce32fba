"""Benchmarks (never unit tests): speed ratios side by side, memory per objective, real-time factors.

    python -m imf.runs.bench speed  --profile small     # teacher 32 NFE + CFG vs student 1/2/4 NFE
    python -m imf.runs.bench memory --profile small     # peak memory and s/step per training objective
    python -m imf.runs.bench rtf    --profile small     # real-time factor, flow alone and end to end
    python -m imf.runs.bench estimate-paper             # ESTIMATED A100 hours per stage of the paper profile
    python -m imf.runs.bench gan-vs-plain --profile small --steps 30   # vocoder fine-tunes with / without the GAN

The measurements live in :mod:`imf.eval.speed`, :mod:`imf.runs.paper` and :mod:`imf.runs.gan_bench`; this is the
command line.
"""
from __future__ import annotations

import argparse
import sys

import torch

from imf.eval.speed import default_rtf_systems, memory_table, rtf_table, speed_table
from imf.runs.gan_bench import ARMS, GanBenchConfig, gan_vs_plain
from imf.runs.open import open_runs
from imf.runs.paper import A100_BF16_TFLOPS, UTILISATION, estimate_paper
from imf.runs.profiles import profile, runs_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="imf benchmarks")
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed", help="teacher (32 NFE + CFG) vs student (1/2/4 NFE), side by side")
    sp.add_argument("--profile", default="small")
    sp.add_argument("--repeats", type=int, default=3)
    mp = sub.add_parser("memory", help="peak memory and s/step: CFM, IntMeanFlow (several N), MeanFlow")
    mp.add_argument("--profile", default="small")
    mp.add_argument("--teacher-nfes", type=int, nargs="*", default=[4, 16])
    rp = sub.add_parser("rtf", help="real-time factor, flow alone and end to end (with the vocoder), per system and NFE")
    rp.add_argument("--profile", default="small")
    rp.add_argument("--repeats", type=int, default=3)
    ep = sub.add_parser("estimate-paper", help="estimated hours per stage of the paper profile on one GPU (counted FLOPs)")
    ep.add_argument("--profile", default="paper")
    ep.add_argument("--util", type=float, default=UTILISATION, help="assumed model-FLOPs utilisation")
    ep.add_argument("--peak-tflops", type=float, default=A100_BF16_TFLOPS, help="GPU peak (A100 dense bf16: 312)")
    gp = sub.add_parser("gan-vs-plain", help="vocoder fine-tunes from a trained vocoder: plain, + GAN, plain for GAN's CPU time")
    gp.add_argument("--profile", default="small")
    gp.add_argument("--init", default="", help="vocoder checkpoint or run folder (default: runs/<profile>/vocoder)")
    gp.add_argument("--steps", type=int, default=GanBenchConfig.steps, help="steps of the plain and gan arms")
    gp.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS, help="arms to train, in order")
    gp.add_argument("--seed", type=int, default=GanBenchConfig.seed)
    gp.add_argument("--plain-cpu-steps", type=int, default=0, help="steps of plain-cpu (0: gan's CPU time / plain's CPU-s/step)")
    gp.add_argument("--no-eval", action="store_true", help="train only (evaluate later with --arms and no new arm)")
    a = p.parse_args(argv)
    if a.cmd == "gan-vs-plain":
        init = a.init or runs_dir(a.profile) / "vocoder"
        df = gan_vs_plain(a.profile, init, a.arms, GanBenchConfig(steps=a.steps, seed=a.seed, plain_cpu_steps=a.plain_cpu_steps), evaluate=not a.no_eval)
        if df is not None:
            print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return 0
    if a.cmd == "estimate-paper":
        df = estimate_paper(a.util, a.peak_tflops, a.profile)
        print(f"ESTIMATE: counted FLOPs/step, one GPU at {a.util:.0%} of {a.peak_tflops:g} TFLOP/s (see imf/runs/paper.py)")
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        print(f"total: {df.hours_est.sum():.1f} GPU-hours")
        return 0
    P = profile(a.profile)
    if a.cmd == "memory":
        objs = [("cfm", 0)] + [("imf", n) for n in a.teacher_nfes] + [("meanflow", 0)]
        cfg = dict(P["teacher_model"], n_tokens=64)
        df = memory_table(objs, P["student_train"]["batch_size"], P["data"]["max_frames"], cfg)
        print(df.to_string(index=False))
        return 0
    # the teacher, 02_distill's final student, their corpus and one batch of eval.batch_size utterances
    wb = open_runs(a.profile, None, n_utts=P["eval"]["batch_size"])  # no results folder
    es, cfg_scale = wb.es, P["eval"]["cfg_scale"]
    print(f"batch of {len(es)} utterances, {int(es.mask.sum())} frames, {torch.get_num_threads()} threads")
    if a.cmd == "rtf":
        df = rtf_table(default_rtf_systems(wb.teacher, wb.student, cfg_scale), es, wb.vocoder(), a.repeats)
    else:
        df = speed_table(wb.teacher, wb.student, es.z_0, es.cond, cfg_scale, repeats=a.repeats)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
