"""Speed and memory, measured side by side (benchmarks and notebooks, never unit tests).

Timings are ratios measured in one process on the same batch; memory is measured in a
fresh subprocess per objective (``ru_maxrss`` growth over one training step) so the numbers
do not mix (``python -m imf.eval.speed _memstep '<json>'`` is that subprocess).
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import pandas as pd
import torch

from imf.flow import schedules
from imf.flow.solvers import Guided, sample


def time_call(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def speed_table(teacher, student, x_0: torch.Tensor, cond: dict, cfg_scale: float = 2.0,
                teacher_nfe: int = 32, student_nfes: Sequence[int] = (1, 2, 4), repeats: int = 3,
                extra: dict[str, Callable] | None = None) -> pd.DataFrame:
    """Seconds per batch for the guided teacher and the student at several NFE, on one batch.

    Returns a table with ``seconds`` and ``speedup`` (guided teacher time / row time).
    ``extra`` adds rows: name -> model (sampled with the same grid rules, student-style).
    """
    rows = []
    g_teacher = Guided(teacher, cfg_scale)
    t_ref = time_call(lambda: sample(g_teacher, x_0, schedules.uniform(teacher_nfe), cond), repeats)
    rows.append({"system": f"teacher + CFG {cfg_scale:g}", "nfe": teacher_nfe, "seconds": t_ref})
    t_plain = time_call(lambda: sample(teacher, x_0, schedules.uniform(teacher_nfe), cond), repeats)
    rows.append({"system": "teacher (no CFG)", "nfe": teacher_nfe, "seconds": t_plain})
    models = {"IntMeanFlow student": student, **(extra or {})}
    for name, m in models.items():
        for n in student_nfes:
            rows.append({"system": name, "nfe": n,
                         "seconds": time_call(lambda: sample(m, x_0, schedules.uniform(n), cond), repeats)})
    df = pd.DataFrame(rows)
    df["speedup"] = t_ref / df["seconds"]
    return df


@torch.no_grad()
def rtf_table(systems: Sequence[tuple[str, Callable, Sequence[int]]], x_0: torch.Tensor, cond: dict,
              audio_seconds: float, vocoder=None, repeats: int = 3) -> pd.DataFrame:
    """Real-time factor (compute seconds / seconds of audio) of each (name, model, NFEs), for
    the flow module alone and, with a ``vocoder``, end to end; all on one batch, one process.

    ``x_0`` (B, C, T) noise and ``cond`` of the batch; ``audio_seconds``: total audio the batch
    represents. ``speedup`` columns divide the first row's time by each row's.
    """
    rows = []
    for name, model, nfes in systems:
        for n in nfes:
            grid = schedules.uniform(n)
            t_flow = time_call(lambda: sample(model, x_0, grid, cond), repeats)
            row = {"system": name, "nfe": n, "flow_s": t_flow, "rtf_flow": t_flow / audio_seconds}
            if vocoder is not None:
                x, _ = sample(model, x_0, grid, cond)
                mask = cond["mask"]

                def voc():
                    for i in range(x.shape[0]):
                        vocoder.vocode(x[i:i + 1, :, : int(mask[i].sum())])
                t_voc = time_call(voc, repeats)
                row.update(vocoder_s=t_voc, rtf_e2e=(t_flow + t_voc) / audio_seconds)
            rows.append(row)
    df = pd.DataFrame(rows)
    df["speedup_flow"] = df["flow_s"].iloc[0] / df["flow_s"]
    if "rtf_e2e" in df:
        df["speedup_e2e"] = df["rtf_e2e"].iloc[0] / df["rtf_e2e"]
    return df


# ---------------------------------------------------------------------------------------
# memory per objective (each in a fresh subprocess)
# ---------------------------------------------------------------------------------------
def _memstep(objective: str, teacher_nfe: int, batch: int, frames: int, model_cfg: dict, steps: int) -> dict:
    """Run inside a fresh process: peak RSS growth over ONE training step, then s/step."""
    from imf.flow.objectives import CFMConfig, IMFConfig, MeanFlowConfig, cfm_loss, intmeanflow_loss, meanflow_loss
    from imf.models import Token2Mel, Token2MelConfig, student_from_teacher
    from imf.core.runtime import setup_threads

    setup_threads()
    torch.manual_seed(0)
    cfg = Token2MelConfig.from_dict(model_cfg)
    teacher = Token2Mel(cfg).requires_grad_(False).eval()
    # CFM trains a teacher-shaped network; the others train a student made from the teacher
    model = Token2Mel(cfg) if objective == "cfm" else student_from_teacher(teacher)
    g = torch.Generator().manual_seed(0)
    z_1 = torch.randn(batch, cfg.n_mels, frames, generator=g)
    cond = {"tokens": torch.randint(1, cfg.n_tokens, (batch, frames), generator=g),
            "mask": torch.ones(batch, frames, dtype=torch.bool),
            "prompt": torch.randn(batch, cfg.n_mels, 96, generator=g),
            "prompt_mask": torch.ones(batch, 96, dtype=torch.bool)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    guided = Guided(teacher, 2.0)

    def step():
        if objective == "cfm":
            loss, _ = cfm_loss(model, z_1, cond, None, CFMConfig(), g)
        elif objective == "imf":
            loss, _ = intmeanflow_loss(model, guided, z_1, cond, None, IMFConfig(teacher_nfe=teacher_nfe), g)
        elif objective == "meanflow":
            loss, _ = meanflow_loss(model, z_1, cond, None, MeanFlowConfig(), g)
        else:
            raise ValueError(f"unknown objective {objective!r}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    secs = time_call(step, repeats=steps, warmup=0)
    return {"objective": objective, "teacher_nfe": teacher_nfe if objective == "imf" else None,
            "added_peak_mb": (peak - base) / 1024, "sec_per_step": secs, "batch": batch, "frames": frames}


def memory_table(objectives: Sequence[tuple[str, int]], batch: int, frames: int, model_cfg: dict,
                 steps: int = 3, progress: bool = True) -> pd.DataFrame:
    """One fresh subprocess per (objective, teacher_nfe); returns their measurements."""
    from tqdm.auto import tqdm

    rows = []
    for objective, n in tqdm(objectives, desc="memory", disable=not progress):
        args = json.dumps({"objective": objective, "teacher_nfe": n, "batch": batch, "frames": frames,
                           "model_cfg": model_cfg, "steps": steps})
        out = subprocess.run([sys.executable, "-m", "imf.eval.speed", "_memstep", args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"memory run {objective} (N={n}) failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return pd.DataFrame(rows)


def default_rtf_systems(teacher, student, cfg_scale: float) -> list[tuple[str, Callable, list[int]]]:
    """The guided teacher at 32/16/4 NFE (first row = the reference), then the student at 1/2/4."""
    return [(f"teacher + CFG {cfg_scale:g}", Guided(teacher, cfg_scale), [32, 16, 4]),
            ("IntMeanFlow student", student, [1, 2, 4])]


def audio_seconds_of(es) -> float:
    """Seconds of audio represented by an eval set's valid frames."""
    mc = es.corpus.mel_config
    return float(es.mask.sum()) * mc.hop_length / mc.sample_rate


if __name__ == "__main__":
    if sys.argv[1:2] == ["_memstep"]:
        print(json.dumps(_memstep(**json.loads(sys.argv[2]))))
