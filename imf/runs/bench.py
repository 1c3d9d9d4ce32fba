"""Benchmarks (never unit tests): speed ratios side by side, memory per objective, real-time factors.

    python -m imf.runs.bench speed  --profile small     # teacher 32 NFE + CFG vs student 1/2/4 NFE
    python -m imf.runs.bench memory --profile small     # peak memory and s/step per training objective
    python -m imf.runs.bench rtf    --profile small     # real-time factor, flow alone and end to end

The measurements live in :mod:`imf.eval.speed`; this is the command line.
"""
from __future__ import annotations

import argparse
import sys

import torch

from imf.eval.speed import audio_seconds_of, default_rtf_systems, memory_table, rtf_table, speed_table


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
    a = p.parse_args(argv)
    from imf.runs.profiles import profile, runs_dir, student_run
    P = profile(a.profile)
    if a.cmd == "memory":
        objs = [("cfm", 0)] + [("imf", n) for n in a.teacher_nfes] + [("meanflow", 0)]
        cfg = dict(P["teacher_model"], n_tokens=64)
        df = memory_table(objs, P["student_train"]["batch_size"], P["data"]["max_frames"], cfg)
        print(df.to_string(index=False))
        return 0
    from imf.data import load_corpus
    from imf.eval.evalset import make_eval_set
    from imf.core.runtime import setup_threads
    from imf.core.checkpoints import load_model, load_checkpoint

    setup_threads()
    run = runs_dir(a.profile)
    teacher = load_model(run / "teacher" / "checkpoints" / "last.pt")
    student = load_model(run / student_run(a.profile) / "checkpoints" / "last.pt")  # 02_distill's final student
    corpus = load_corpus(load_checkpoint(run / "teacher" / "checkpoints" / "last.pt")["config"]["corpus"])
    E = P["eval"]
    es = make_eval_set(corpus, E["split"], E["batch_size"], E["seed"], E["max_frames"], P["data"]["prompt_frames"])
    print(f"batch of {len(es)} utterances, {int(es.mask.sum())} frames, {torch.get_num_threads()} threads")
    if a.cmd == "rtf":
        from imf.models.vocoder import load_vocoder

        voc_ckpt = run / "vocoder" / "checkpoints" / "last.pt"
        vocoder = load_vocoder(voc_ckpt if voc_ckpt.exists() else None)
        df = rtf_table(default_rtf_systems(teacher, student, E["cfg_scale"]), es.z_0, es.cond,
                       audio_seconds_of(es), vocoder, a.repeats)
    else:
        df = speed_table(teacher, student, es.z_0, es.cond, E["cfg_scale"], repeats=a.repeats)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
