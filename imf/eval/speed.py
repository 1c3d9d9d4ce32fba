"""Speed and memory, measured side by side (benchmarks and notebooks, never unit tests).

Timings are ratios measured in one process on the same batch; memory is measured in a
fresh subprocess per objective (``ru_maxrss`` growth over one training step) so the numbers
do not mix (``python -m imf.eval.speed _memstep '<json>'`` is that subprocess).
"""
from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from imf.eval.evalset import EvalSet
from imf.eval.systems import System
from imf.flow.solvers import Guided, sample

UNGUIDED = "teacher (no CFG)"  # the speed and RTF tables' name of the teacher without guidance


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


def _sample_call(system: System, nfe: int, z_0: torch.Tensor, cond: dict) -> Callable[[], object]:
    grid = system.grid(nfe)
    return lambda: sample(system.model, z_0, grid, cond, method=system.method)


@torch.no_grad()
def speed_table(teacher, student, z_0: torch.Tensor, cond: dict, cfg_scale: float = 2.0,
                teacher_nfe: int = 32, student_nfes: Sequence[int] = (1, 2, 4), repeats: int = 3,
                extra: Sequence[System] = (), progress: bool = True) -> pd.DataFrame:
    """Seconds per batch for the guided teacher and the student at several NFE, on one batch
    ``z_0`` (B, C, T) with ``cond``; each time is the median of ``repeats`` after one warm-up.

    Returns a table with ``seconds`` and ``speedup`` (guided teacher time / row time).
    ``extra`` adds systems, each timed at ``student_nfes`` on its own grid rule. ``progress``: a bar
    over the rows (updated between timings, never inside one).
    """
    ref = System(f"teacher + CFG {cfg_scale:g}", Guided(teacher, cfg_scale))
    points = [(ref, teacher_nfe), (System(UNGUIDED, teacher), teacher_nfe)]
    points += [(system, n) for system in [System("IntMeanFlow student", student), *extra] for n in student_nfes]
    rows = []
    for system, n in tqdm(points, desc="speed", unit="row", disable=not progress):
        rows.append({"system": system.name, "nfe": n, "seconds": time_call(_sample_call(system, n, z_0, cond), repeats)})
    t_ref = rows[0]["seconds"]
    df = pd.DataFrame(rows)
    df["speedup"] = t_ref / df["seconds"]
    return df


def _vocode_each(vocoder, x: torch.Tensor, mask: torch.Tensor) -> None:
    """Vocode each utterance's valid frames alone (as listening and the judges do)."""
    for i in range(x.shape[0]):
        vocoder.vocode(x[i:i + 1, :, : int(mask[i].sum())])


def _warm_up(system: System, nfe: int, z_0: torch.Tensor, cond: dict) -> None:
    """One model call at the first step of the system's own grid: the same shapes and kernels as its timed
    sampling, at 1/nfe of its cost."""
    g = system.grid(nfe)
    t = torch.full((z_0.shape[0],), float(g[0]), dtype=z_0.dtype)
    r = torch.full((z_0.shape[0],), float(g[1]), dtype=z_0.dtype)
    system.model(z_0, t=t, r=r, cond=cond)


@torch.no_grad()
def rtf_table(points: Sequence[tuple[System, int]], es: EvalSet, vocoder=None, repeats: int = 3,
              reference: int | str = 0, progress: bool = True) -> pd.DataFrame:
    """Real-time factor (compute seconds / seconds of audio) of each ``(system, nfe)`` point on
    the whole eval set ``es`` as one batch, side by side in one process.

    Columns: ``flow_s`` sampling along ``system.grid(nfe)`` (NaN for a reconstruction row) and
    ``rtf_flow = flow_s / es.audio_seconds``; when any row makes audio, ``decode_s`` making the
    waveform from that output — the system's ``decode`` (Token2Wav), its ``reconstruct`` hook
    (a reference row, no flow) or ``vocoder.vocode`` over each utterance's valid frames (mel
    systems) —, ``total_s = flow_s + decode_s`` and ``rtf_e2e = total_s / es.audio_seconds``.
    ``speedup_flow`` / ``speedup_e2e``: the ``reference`` row's time (a row position or a
    system name; default the first row) divided by each row's.

    Warm-up costs a step, not a sampling: before any timing each point makes one model call at the first step
    of its grid (the same shapes and kernels), and the decoder of a point warms up on the first utterance
    of the point's first timed output (a reconstruction row is warmed up by one whole call). Timing is
    interleaved: each of ``repeats`` rounds times every point once, the first round's output feeds the
    point's decoder, and a point's time is its fastest round, so a burst of load from another process does
    not land on one row only. ``progress``: a bar over the rounds (updated between them).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    mask = es.mask[:, None]
    flows, fed = [], [None] * len(points)
    for system, nfe in points:
        if system.reconstruct is not None:
            system.reconstruct(es)
            flows.append(None)
        else:
            _warm_up(system, nfe, es.z_0, es.cond)
            flows.append(_sample_call(system, nfe, es.z_0, es.cond))
    audible = vocoder is not None or any(s.decode is not None or s.reconstruct is not None for s, _ in points)
    times = [([], []) for _ in points]
    for _ in tqdm(range(repeats), desc="RTF rounds", unit="round", disable=not progress):
        for i, ((system, nfe), flow, (t_flow, t_decode)) in enumerate(zip(points, flows, times)):
            if flow is not None:
                t0 = time.perf_counter()
                x, _ = flow()
                t_flow.append(time.perf_counter() - t0)
                if fed[i] is None and (system.decode is not None or vocoder is not None):
                    fed[i] = x * mask.to(x.dtype)
                    _decode(system, vocoder, fed[i][:1], es.mask[:1])  # the decoder's warm-up
            if system.reconstruct is not None:
                t_decode.append(time_call(lambda s=system: s.reconstruct(es), repeats=1, warmup=0))
            elif fed[i] is not None:
                t_decode.append(time_call(lambda s=system, x=fed[i]: _decode(s, vocoder, x, es.mask), repeats=1,
                                          warmup=0))
    audio = es.audio_seconds
    rows = []
    for (system, nfe), (t_flow, t_decode) in zip(points, times):
        flow_s = min(t_flow) if t_flow else math.nan
        row = {"system": system.name, "nfe": 0 if system.reconstruct is not None else nfe, "flow_s": flow_s,
               "rtf_flow": flow_s / audio}
        if audible:
            decode_s = min(t_decode) if t_decode else math.nan
            total_s = (0.0 if system.reconstruct is not None else flow_s) + decode_s
            row.update(decode_s=decode_s, total_s=total_s, rtf_e2e=total_s / audio)
        rows.append(row)
    df = pd.DataFrame(rows)
    ref = _row_index(df, reference)
    df["speedup_flow"] = df["flow_s"].iloc[ref] / df["flow_s"]
    if audible:
        df["speedup_e2e"] = df["total_s"].iloc[ref] / df["total_s"]
    return df


def _decode(system: System, vocoder, x: torch.Tensor, mask: torch.Tensor) -> None:
    """The waveform of a point's output ``x`` (B, C, T): the system's own decoder, else the vocoder per utterance."""
    if system.decode is not None:
        system.decode(x)
    else:
        _vocode_each(vocoder, x, mask)


def _row_index(df: pd.DataFrame, reference: int | str) -> int:
    if isinstance(reference, str):
        hits = [i for i, name in enumerate(df["system"]) if name == reference]
        if not hits:
            raise KeyError(f"reference {reference!r} is not a system of the table: {list(df['system'])}")
        return hits[0]
    if not -len(df) <= reference < len(df):
        raise IndexError(f"reference row {reference} is out of range for {len(df)} rows")
    return reference


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


def default_rtf_systems(teacher, student, cfg_scale: float, teacher_nfes: Sequence[int] = (32, 16, 4),
                        student_nfes: Sequence[int] = (1, 2, 4), unguided: bool = False) -> list[tuple[System, int]]:
    """``(system, nfe)`` points: the guided teacher at ``teacher_nfes`` (first row = the reference), with
    ``unguided`` the teacher without guidance at the first of them, then the student at ``student_nfes``."""
    teacher_cfg = System(f"teacher + CFG {cfg_scale:g}", Guided(teacher, cfg_scale))
    student_sys = System("IntMeanFlow student", student)
    plain = [(System(UNGUIDED, teacher), teacher_nfes[0])] if unguided else []
    return [(teacher_cfg, n) for n in teacher_nfes] + plain + [(student_sys, n) for n in student_nfes]


def speed_view(rtf: pd.DataFrame, student: str = "IntMeanFlow student") -> pd.DataFrame:
    """The speed table of an :func:`rtf_table` measured on one batch: its first row (the reference), the
    unguided teacher's and the ``student``'s rows, with ``seconds`` (= ``flow_s``) and ``speedup`` (the first
    row's time / each row's): the same timings seen as a speed-up, not measured again."""
    keep = [0] + [i for i in range(1, len(rtf)) if rtf["system"].iloc[i] in (UNGUIDED, student)]
    df = rtf.iloc[keep][["system", "nfe", "flow_s"]].rename(columns={"flow_s": "seconds"}).reset_index(drop=True)
    df["speedup"] = df["seconds"].iloc[0] / df["seconds"]
    return df


if __name__ == "__main__":
    if sys.argv[1:2] == ["_memstep"]:
        print(json.dumps(_memstep(**json.loads(sys.argv[2]))))
