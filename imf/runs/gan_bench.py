"""Does the adversarial loss pay for its time? Vocoder fine-tunes with and without it (``bench gan-vs-plain``).

From one trained vocoder checkpoint (``init``: notebook 00_vocoder's run), three fine-tunes on the corpus
it was trained on, each with :func:`imf.train.vocoder.train_vocoder` (``init_from``):

- ``plain``: ``steps`` steps of the reconstruction loss (mel L1 + MR-STFT) alone;
- ``gan``: the same ``steps`` steps (same batches) + the ``vocos`` package's adversarial and
  feature-matching losses (:mod:`imf.train.gan`, its default weights; fresh discriminators);
- ``plain-cpu``: the reconstruction loss alone for as many steps as ``gan``'s training CPU time buys
  (``gan``'s CPU-s/step over ``plain``'s, times ``steps``; both arms must have run first, unless the
  step count is given: ``plain_cpu_steps``, to run it beside ``gan`` from an earlier measurement).

Every arm: the init's EMA weights and Adam moments, the init's batch size, loss and segment length, peak
lr = the init's last learning rate, no warm-up, cosine to 10 % over the arm's own steps, no EMA (the
evaluated weights are the last ones: an EMA over 30 steps would hide most of a short fine-tune), one
torch thread. CPU-s per step is the process CPU time between checkpoints of one process over the steps
between them (``<arm>/clock.csv``, kept over resumes; setup and each session's steps before its first
checkpoint excluded); wall-s per step likewise.

Then copy synthesis (:func:`imf.eval.ceilings.copy_synthesis_table`: PESQ / STOI / DNSMOS) of the init
and each finished arm on notebook 00_vocoder's held-out utterances (:func:`copy_synthesis_ids` of the
profile's ``per_voice``: 20 for ``small``). Results: ``<runs>/<profile>/gan-vs-plain/table.{csv,json}``,
one folder per arm beside them (resumable: a finished arm is evaluated, not retrained).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from imf.core.checkpoints import load_checkpoint
from imf.core.runtime import atomic_write_json, atomic_write_text
from imf.data import CorpusConfig
from imf.eval.ceilings import copy_synthesis_ids, copy_synthesis_table, real_recordings
from imf.models.vocoder import VocoderConfig, load_vocoder
from imf.runs.open import open_corpus
from imf.runs.profiles import profile, runs_dir
from imf.train.gan import GANConfig
from imf.train.trainer import TrainConfig, lr_at
from imf.train.vocoder import train_vocoder
from imf.train.wave_losses import WaveLossConfig

ARMS = ("plain", "gan", "plain-cpu")


@dataclasses.dataclass(frozen=True)
class GanBenchConfig:
    steps: int = 30  # fine-tune steps of the plain and gan arms
    seed: int = 1  # data order of the fine-tunes (the same batches in every arm)
    judges: tuple[str, ...] = ("mos",)  # copy-synthesis judges besides PESQ and STOI ("mos": DNSMOS)
    plain_cpu_steps: int = 0  # steps of plain-cpu (0: from the plain and gan arms' measured CPU-s/step)


def _init_recipe(init: Path) -> dict[str, Any]:
    """What the init checkpoint was trained with: train config, loss, segment length, corpus, and its last lr."""
    state = load_checkpoint(init, require=("config", "step", "model_config"))
    cfg = state["config"]
    train = TrainConfig.from_dict(cfg["train"])
    return {"train": train, "loss": WaveLossConfig.from_dict(cfg.get("vocoder_loss", {})), "seg_seconds": cfg["seg_seconds"],
            "corpus": cfg.get("corpus", ""), "model": VocoderConfig.from_dict(state["model_config"]),
            "step": int(state["step"]), "lr_end": lr_at(int(state["step"]) - 1, train)}


def _record_path(folder: Path, arm: str) -> Path:
    return folder / arm / "cpu.json"


def _read_record(folder: Path, arm: str) -> dict[str, Any] | None:
    path = _record_path(folder, arm)
    return pd.read_json(path, typ="series").to_dict() if path.exists() else None


def equal_cpu_steps(folder: Path, steps: int) -> int:
    """``plain-cpu``'s steps: ``steps`` x gan's CPU-s/step / plain's (both arms' records must exist)."""
    plain, gan = _read_record(folder, "plain"), _read_record(folder, "gan")
    if plain is None or gan is None or not (plain["cpu_s_per_step"] > 0 and gan["cpu_s_per_step"] > 0):
        raise FileNotFoundError(f"{folder}: arm 'plain-cpu' needs the 'plain' and 'gan' arms' cpu.json with a "
                                f"measured CPU-s/step first (run --arms plain gan, or give plain_cpu_steps)")
    return max(1, round(steps * gan["cpu_s_per_step"] / plain["cpu_s_per_step"]))


def run_arm(arm: str, init: Path, corpus, folder: Path, cfg: GanBenchConfig, progress: bool = True) -> dict[str, Any]:
    """Fine-tune one arm (or find it finished); its record ``{arm, steps, cpu_s_per_step, wall_s_per_step, ...}``."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose from {ARMS}")
    r = _init_recipe(init)
    steps = (cfg.plain_cpu_steps or equal_cpu_steps(folder, cfg.steps)) if arm == "plain-cpu" else cfg.steps
    every = max(1, steps // 3)
    train = r["train"].replace(steps=steps, lr=r["lr_end"], warmup=0, ema_decay=0.0, ckpt_every=every,
                               log_every=max(1, every // 2), threads=1, seed=cfg.seed)
    clock = folder / arm / "clock.csv"  # (session, step, CPU s, wall s) at every checkpoint, kept over resumes
    session = f"{os.getpid()}-{time.time():.0f}"

    def tick(t) -> None:
        prev = pd.read_csv(clock) if clock.exists() else pd.DataFrame()
        row = pd.DataFrame([{"session": session, "step": t.step, "cpu_s": time.process_time(), "wall_s": time.time()}])
        atomic_write_text(clock, pd.concat([prev, row]).to_csv(index=False))

    _, summary = train_vocoder(corpus, folder / arm, r["model"], train, r["seg_seconds"], progress=progress,
                               loss_cfg=r["loss"], gan_cfg=GANConfig(enabled=arm == "gan"), init_from=init,
                               on_checkpoint=tick)
    old = _read_record(folder, arm)
    if old is not None and old["steps"] == steps:
        return old  # finished before
    marks = pd.read_csv(clock) if clock.exists() else pd.DataFrame(columns=["session", "step", "cpu_s", "wall_s"])
    d = marks.groupby("session", sort=False)[["step", "cpu_s", "wall_s"]].diff().dropna()  # within a session only
    n = int(d["step"].sum())  # timed steps: between checkpoints of one process (its setup excluded)
    rec = {"arm": arm, "steps": steps, "timed_steps": n, "cpu_s_per_step": float(d["cpu_s"].sum() / n) if n else math.nan,
           "wall_s_per_step": float(d["wall_s"].sum() / n) if n else math.nan, "lr": train.lr,
           "final_loss": summary["final_loss"], "load_avg_1m": os.getloadavg()[0], "init": str(init),
           "init_step": r["step"]}
    atomic_write_json(_record_path(folder, arm), rec)
    return rec


def _scores(name: str, ckpt: Path, corpus, real, judges: Sequence[str], folder: Path) -> dict[str, Any]:
    """One vocoder's mean copy-synthesis scores, cached in ``folder/scores/<name>.json`` (kept while the
    checkpoint is not newer), so the init can be scored while the arms still train."""
    cache = folder / "scores" / f"{name}.json"
    if cache.exists() and cache.stat().st_mtime >= ckpt.stat().st_mtime:
        return pd.read_json(cache, typ="series").to_dict()
    table = copy_synthesis_table(corpus, {name: load_vocoder(ckpt, corpus.mel_config)}, real, judges)
    row = table[table["system"] == name].iloc[0].drop("system").to_dict()
    atomic_write_json(cache, row)
    return row


def evaluate_arms(init: Path, corpus, folder: Path, per_voice: int, judges: Sequence[str]) -> pd.DataFrame:
    """Copy synthesis of the init and of every arm with a record: one row each, with the arm's timing."""
    real = real_recordings(corpus, per_voice, [])  # the held-out pick only; its judges are not needed here
    rows = [{"arm": "init", "steps": 0, **_scores("init", init, corpus, real, judges, folder)}]
    for arm in ARMS:
        rec = _read_record(folder, arm)
        if rec is not None:
            rows.append({**{k: rec[k] for k in ("arm", "steps", "cpu_s_per_step", "wall_s_per_step")},
                         **_scores(arm, folder / arm / "checkpoints" / "last.pt", corpus, real, judges, folder)})
    table = pd.DataFrame(rows)
    table["train_cpu_s"] = table["steps"] * table.get("cpu_s_per_step", math.nan)
    table.insert(1, "n_utts", len(copy_synthesis_ids(real)))
    return table


def gan_vs_plain(profile_name: str, init: str | Path, arms: Sequence[str], cfg: GanBenchConfig,
                 evaluate: bool = True, progress: bool = True) -> pd.DataFrame | None:
    """Run ``arms`` in order, then (``evaluate``) the copy-synthesis table, also written beside the arms."""
    P, init = profile(profile_name), Path(init)
    if init.is_dir():
        init = init / "checkpoints" / "last.pt"
    folder = runs_dir(profile_name) / "gan-vs-plain"
    r = _init_recipe(init)
    corpus = open_corpus(CorpusConfig.from_dict(P["corpus"]), r["corpus"] if Path(r["corpus"]).is_dir() else "")
    for arm in arms:
        rec = run_arm(arm, init, corpus, folder, cfg, progress)
        print(f"{arm}: {rec['steps']} steps, {rec['cpu_s_per_step']:.2f} CPU-s/step, {rec['wall_s_per_step']:.2f} wall-s/step")
    if not evaluate:
        return None
    table = evaluate_arms(init, corpus, folder, P["vocoder"]["per_voice"], cfg.judges)
    atomic_write_text(folder / "table.csv", table.to_csv(index=False))
    atomic_write_json(folder / "table.json", {"init": str(init), "steps": cfg.steps, "seed": cfg.seed,
                                              "rows": table.to_dict("records")})
    return table
