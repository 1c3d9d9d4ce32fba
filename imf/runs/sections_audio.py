"""What notebooks 00_vocoder and 07_token2wav open and record: their plans (a profile and the
notebook's parameters resolved into validated configs, the corpus and the run folders) and
their results sections (``results/<name>/metrics.json``, CSV tables, the README section).

The runs layer may read ``results/``: :func:`reliable_wer_voices` reads the voice list
notebook 00_vocoder recorded, for notebook 07.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from imf.core.checkpoints import load_model
from imf.core.runtime import atomic_write_json, setup_threads
from imf.data import CorpusConfig
from imf.data.importers import ImportConfig
from imf.eval.ceilings import RealRecordings, copy_synthesis_ids
from imf.eval.judges import judges_note
from imf.eval.token2wav import JUDGED, STAGES, T2WEvalConfig, T2WResult, judge_split
from imf.models.vocoder import VocoderConfig
from imf.runs.launch import default_nproc
from imf.runs.launch import train as launch_train
from imf.runs.open import open_corpus, relative
from imf.runs.profiles import profile, runs_dir
from imf.runs.report import section_dir, table_md, write_section
from imf.runs.splits import by_split, on_split, side_by_side, split_voices
from imf.train.gan import GANConfig
from imf.train.token2wav import STAGE_RUN, STAGE_RUNS, TRAIN_STAGES, T2WStagesConfig, checkpoints, stage_inputs
from imf.train.token2wav import train_stages as train_t2w_stages
from imf.train.trainer import TrainConfig
from imf.train.wave_losses import WaveLossConfig


def _corpus(P: dict[str, Any], corpus_dir: str):
    return open_corpus(CorpusConfig.from_dict(P["corpus"]), corpus_dir, importer=ImportConfig.from_dict(P["corpus_import"]))


def _train_cfg(d: dict[str, Any], seed: int, steps: int) -> dict[str, Any]:
    """A profile's train section with the notebook's seed and (if > 0) step count."""
    return dict(d, seed=seed, **({"steps": steps} if steps else {}))


# ---------------------------------------------------------------------------------------------
# 00_vocoder
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VocoderPlan:
    corpus: Any
    model: VocoderConfig
    train: TrainConfig
    loss: WaveLossConfig
    seg_seconds: float  # training segment length
    per_voice: int  # held-out utterances per voice for the real-recording judges
    run_dir: Path  # runs/<profile>/<run_name>
    out: Path  # results/00_vocoder
    gan: GANConfig = GANConfig()  # adversarial training (off: reconstruction losses only)

    @property
    def ckpt(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"


def vocoder_plan(profile_name: str, seed: int = 0, steps: int = 0, run_name: str = "vocoder", per_voice: int = 0,
                 corpus_dir: str = "") -> VocoderPlan:
    """Notebook 00_vocoder's setup: threads, corpus (built if missing), configs (``steps`` /
    ``per_voice`` 0: the profile's) and folders."""
    P = profile(profile_name)
    V = P["vocoder"]
    setup_threads()
    corpus = _corpus(P, corpus_dir)
    return VocoderPlan(corpus, VocoderConfig.from_dict(V["model"]), TrainConfig.from_dict(_train_cfg(V["train"], seed, steps)),
                       WaveLossConfig.from_dict(V.get("loss", {})), V["seg_seconds"], per_voice or V["per_voice"],
                       runs_dir(profile_name) / run_name, section_dir("00_vocoder"), GANConfig.from_dict(V.get("gan", {})))


def _gan_words(gan: GANConfig) -> str:
    return ("+ adversarial and feature-matching losses (vocos MPD + MRD)" if gan.enabled else
            "no adversarial loss (on CPU a GAN step with the vocos discriminators costs ~70x a reconstruction step and, at equal CPU, scored below plain steps: 00_vocoder's gan-vs-plain table)")


def write_vocoder_section(plan: VocoderPlan, summary: Mapping[str, Any], real: RealRecordings, wer_voices: list[str],
                          wer_max: float, sim: pd.DataFrame | None, copy: pd.DataFrame) -> dict[str, Any]:
    """Write results/00_vocoder (CSV tables, metrics.json) and its README section; return the metrics."""
    real.by_voice.to_csv(plan.out / "real_per_voice.csv", index=False)
    copy.to_csv(plan.out / "copy_synthesis.csv", index=False)
    sim_rows = [] if sim is None else sim.to_dict("records")
    metrics = {"vocoder_steps": summary["steps"], "vocoder_final_loss": summary["final_loss"],
               "per_voice": real.by_voice.to_dict("records"), "wer_voices": wer_voices, "wer_max": wer_max,
               "sim_real": sim_rows, "copy_synthesis": copy.to_dict("records"), "checkpoint": relative(plan.ckpt)}
    atomic_write_json(plan.out / "metrics.json", metrics)
    m = plan.model
    write_section("00_vocoder", f"""## 00 — vocoder and judge ceilings (`notebooks/00_vocoder.ipynb`)

Vocoder: the `vocos` package's VocosBackbone ({m.dim} x {m.n_layers}) + ISTFTHead{' (log-magnitude residual on the mel pseudo-inverse)' if m.mag_prior else ''}, mel L1 + multi-resolution
STFT loss, {_gan_words(plan.gan)}, {summary['steps']} steps. Judges run offline: WER = Whisper tiny.en (faster-whisper,
beam 5, Whisper English normaliser, jiwer, corpus-level), SIM = resemblyzer d-vector cosine, MOS = DNSMOS P.808.

**Real recordings per voice** ({plan.per_voice} held-out utterances each):

{table_md(real.by_voice)}

Voices used for WER from here on (real-recording WER <= {wer_max:.0%}): {', '.join(wer_voices) or 'none'}.

**Speaker similarity of real recordings** (same speaker, different utterances vs different speakers):

{table_md(pd.DataFrame(sim_rows)) if sim_rows else '(not measured)'}

**Copy synthesis** (ground-truth mel -> waveform, {len(copy_synthesis_ids(real))} utterances; PESQ/STOI against the original audio;
the "real recordings" row is the reference itself, judged by MOS only):

{table_md(copy)}

![vocoder loss](00_vocoder/vocoder_loss.png)
""")
    return metrics


# ---------------------------------------------------------------------------------------------
# 07_token2wav
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Token2WavPlan:
    corpus: Any
    stages: T2WStagesConfig
    eval: T2WEvalConfig
    runs: dict[str, Path]  # STAGE_RUNS -> runs/<profile>/<prefix>_<run>
    out: Path  # results/07_token2wav

    @property
    def ckpts(self) -> dict[str, Path]:
        return checkpoints(self.runs)


def token2wav_plan(profile_name: str, seed: int = 0, prefix: str = "t2w", steps: Mapping[str, int] | None = None,
                   n_utts: int = 0, fm_nfe: int = 0, fm_cfg: float = 0.0, rtf_repeats: int = 0,
                   corpus_dir: str = "") -> Token2WavPlan:
    """Notebook 07's setup from the profile's ``token2wav`` section: ``steps`` per stage
    (``vae, fm, mf, imf, decft, joint``) and the eval overrides replace the profile's where > 0."""
    P = profile(profile_name)
    S = P["token2wav"]
    setup_threads()
    corpus = _corpus(P, corpus_dir)
    steps = dict(steps or {})
    unknown = sorted(set(steps) - {"vae", "fm", "mf", "imf", "decft", "joint"})
    if unknown:
        raise KeyError(f"steps: unknown stage(s) {unknown}; known: vae, fm, mf, imf, decft, joint")
    stages = {k: (_train_cfg(v, seed, steps.get(k[:-len("_train")], 0)) if k.endswith("_train") else v)
              for k, v in S.items() if k != "eval"}
    overrides = {k: v for k, v in {"n_utts": n_utts, "fm_nfe": fm_nfe, "rtf_repeats": rtf_repeats,
                                   "fm_cfg": fm_cfg}.items() if v}
    return Token2WavPlan(corpus, T2WStagesConfig.from_dict(stages), T2WEvalConfig.from_dict(S["eval"], **overrides),
                         {k: runs_dir(profile_name) / f"{prefix}_{k}" for k in STAGE_RUNS}, section_dir("07_token2wav"))


def train_token2wav(plan: Token2WavPlan, nproc: int | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train (or resume) every Token2Wav stage of ``plan``; each stage's summary (``vae, fm, meanflow, imf,
    decoder_ft, joint_ft``). ``nproc`` (default ``IMF_NPROC``, ``make reproduce NPROC=N``): 1 trains in this
    process (:func:`imf.train.token2wav.train_stages`); N > 1 runs each stage in turn as
    ``torchrun -m imf.train token2wav --stage S`` (:func:`imf.runs.launch.train`) with the same global batches, so
    the same weights up to float rounding (``tests/test_distributed.py``). A fine-tuning stage with the GAN
    terms (``gan.enabled``) trains in one process: its discriminator step is not data-parallel."""
    nproc = default_nproc() if nproc is None else nproc
    if nproc <= 1:
        return train_t2w_stages(plan.corpus, plan.stages, plan.runs, progress=progress)
    out, ckpts = {}, plan.ckpts
    for stage in TRAIN_STAGES:
        n = nproc
        if stage in ("decoder_ft", "joint_ft") and plan.stages.gan.enabled:
            warnings.warn(f"Token2Wav stage {stage!r} trains in one process (gan.enabled: the discriminator step "
                          f"is not data-parallel), not on {nproc}", stacklevel=2)
            n = 1
        _, out[stage] = launch_train("token2wav", n, plan.corpus.root, plan.runs[STAGE_RUN[stage]],
                                     {"token2wav": plan.stages}, progress=progress, stage=stage,
                                     **stage_inputs(stage, ckpts))
    return out


def token2wav_unseen(plan: Token2WavPlan, result: T2WResult) -> pd.DataFrame | None:
    """``result``'s rows judged on the zero-shot split (``plan.eval.zero_shot_split``, held-out voices; its own
    utterances and noise, under a forked RNG: :func:`imf.runs.splits.on_split`); None when there is no such split."""
    E = plan.eval
    judge = lambda: judge_split(plan.corpus, result, load_model(plan.ckpts["vae"]), E, E.zero_shot_split,  # noqa: E731
                                plan.stages.data.prompt_frames)
    return on_split(plan.corpus, E.zero_shot_split, judge)


def _zero_shot_md(plan: Token2WavPlan, splits: pd.DataFrame, unseen: pd.DataFrame | None) -> str:
    E = plan.eval
    if unseen is None:
        return f"Zero-shot: no `{E.zero_shot_split or 'unseen'}` split in this corpus, so only seen voices are judged."
    cols = [c for c in JUDGED if c in unseen and unseen[c].notna().any()]
    if not cols:
        return f"Zero-shot: the `{E.zero_shot_split}` split was synthesised but no judge ran (`table_by_split.csv`)."
    voices = ", ".join(split_voices(plan.corpus, E.zero_shot_split))
    return f"""**Seen vs held-out voices** (`{E.split}` split and `{E.zero_shot_split}` split: {voices}; each its own
{E.n_utts} utterances and noise, cross-sentence prompts from the same speaker; `table_by_split.csv`):

{table_md(side_by_side(splits, list(splits.system.unique()), cols, E.split, E.zero_shot_split))}"""


def write_token2wav_section(plan: Token2WavPlan, summaries: Mapping[str, Mapping[str, Any]],
                            result: T2WResult, unseen: pd.DataFrame | None = None) -> dict[str, Any]:
    """Write results/07_token2wav (table.csv, table_by_split.csv with ``unseen``'s rows (:func:`token2wav_unseen`),
    metrics.json) and its README section; return the metrics."""
    table, es, speed, orderings, E = result.table, result.es, result.speed, result.orderings, plan.eval
    s = plan.stages
    table.to_csv(plan.out / "table.csv", index=False)
    splits = by_split(table, unseen, E.split, E.zero_shot_split)
    splits.to_csv(plan.out / "table_by_split.csv", index=False)
    fields = ("steps", "final_loss", "sec_per_step", "seconds_this_session", "latent_snr")
    metrics = {"table": table.to_dict("records"), "rtf": result.rtf.to_dict("records"),
               "speed_ratio_fm_mf": speed["end_to_end"], "speed_ratio_fm_mf_generator": speed["generator_only"],
               "orderings": orderings, "stages": {k: {f: v.get(f) for f in fields} for k, v in summaries.items()},
               "n_utts": len(es), "audio_seconds": es.audio_seconds, "wer_voices": result.wer_voices,
               "judges": result.judges, "judge_labels": result.judge_labels, "vae": s.vae.to_dict(), "generator": s.generator.to_dict(),
               "eval": E.to_dict(), "checkpoints": {k: relative(v) for k, v in plan.ckpts.items()},
               "zero_shot": {"split": E.zero_shot_split, "table": None if unseen is None else unseen.to_dict("records"),
                             "voices": split_voices(plan.corpus, E.zero_shot_split) if unseen is not None else []}}
    atomic_write_json(plan.out / "metrics.json", metrics)
    vae, gen, vs = s.vae, s.generator, summaries["vae"]
    fm_name = result.points[1][0].name
    by_system = table.set_index("system")
    verdict = "\n".join(f"- **{c}**: No-FT < Decoder-FT < Joint-FT {'holds' if ok else 'does NOT hold'} ("
                        + " / ".join(f"{by_system.loc[n, c]:.3f}" for n in STAGES) + ")"
                        for c, ok in orderings.items()) or "- (no judges run)"
    health = ('healthy' if vs.get('latent_snr', 0) >= 1 else
              '**posterior collapse: the latents carry almost nothing, every row below sounds alike**')
    write_section("07_token2wav", f"""## 07 — one-step Token2Wav (`notebooks/07_token2wav.ipynb`)

Waveform VAE 16 kHz -> {vae.frame_rate:g} Hz x {vae.latent_dim} latents (log-mel front end + strided convs; decoder
from the vocos package's VocosBackbone + ISTFTHead, {vs['steps']} steps; latent SNR std(mu) / posterior std = {vs.get('latent_snr', float('nan')):.2f},
{health}); DiT-1D generator {gen.dim} x {gen.n_layers} (adaLN-zero) on 25 Hz phone tokens + a
speaker prompt latent. FM: flow matching, {E.fm_nfe} Euler steps, CFG {E.fm_cfg:g}; MF: MeanFlow (JVP, guidance {s.meanflow.cfg_scale:g} folded into the target), 1 step; IMF: IntMeanFlow
student of FM (teacher N = {s.imf.teacher_nfe}, CFG {s.imf.cfg_scale:g}), 1 step. Decoder-FT: decoder trained on the frozen MF
generator's 1-step latents against the real waveform, {_gan_words(s.gan)} ({summaries['decoder_ft']['steps']} steps); Joint-FT: generator + decoder together
({summaries['joint_ft']['steps']} steps). {len(es)} held-out utterances ({es.audio_seconds:.0f} s), identical noise. CPU scale: minutes of
training, so absolute numbers are far below the paper's; the comparison between rows is the point.

{table_md(table)}

{judges_note(result.judge_labels)}

{_zero_shot_md(plan, splits, unseen)}

Speed ratio {fm_name} (CFG {E.fm_cfg:g}) / MF 1-step, measured side by side on the same batch: **{speed['end_to_end']:.1f}x end to end**
(latents + decoding), {speed['generator_only']:.1f}x for the latent generator alone (paper: up to 17x end to end). At this
scale the decoder is a large share of the 1-step system's time, which caps the end-to-end ratio.

Ordering No-FT < Decoder-FT < Joint-FT per judge (higher is better except WER), holds on {sum(orderings.values())} of {len(orderings)}:

{verdict}

![Token2Wav](07_token2wav/token2wav.png)
""")
    return metrics
