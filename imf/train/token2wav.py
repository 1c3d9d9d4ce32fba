"""One-step Token2Wav with MeanFlow in a VAE latent space (Dai et al., arXiv 2606.18072), CPU-sized.

The stages, each a resumable :class:`~imf.train.trainer.Trainer` run folder::

    train_vae           waveform VAE (mel L1 + MR-STFT + KL)       -> WaveVAE      (runs/<p>/t2w_vae)
    train_generator     DiT-1D on the VAE's latents: "fm" (CFM, sampled in 10 steps)
                        or "meanflow" (JVP objective, sampled in 1) -> DiT1D       (t2w_fm, t2w_mf)
    distill_generator   IntMeanFlow 1-step student of the FM model -> DiT1D       (t2w_imf)
    finetune_decoder    decoder-only FT on latents of the FROZEN 1-step MF generator,
                        target the real waveform                    -> Token2Wav   (t2w_mf_decft)
    finetune_joint      generator + decoder together through the generator's 1-step output,
                        small learning rate                         -> Token2Wav   (t2w_mf_joint)

The two fine-tuning stages use the paper's loss: multi-resolution STFT (+ mel L1) and, with
``gan.enabled``, the ``vocos`` package's adversarial + feature-matching losses
(:mod:`imf.train.gan`; discriminators and their optimizer live in the stage's checkpoint).

:func:`train_stages` runs them in this order from one :class:`T2WStagesConfig`; :func:`train_stage` runs
one, as ``python -m imf.train token2wav --stage vae|fm|meanflow|imf|decoder_ft|joint_ft`` does under
``torchrun`` (data parallel: every stage's ``batch_size`` is the global batch; the GAN terms of the
fine-tuning stages train in one process only).

Data: :class:`imf.data.waves.TokenWaveDataset` (whole utterances, 25 Hz tokens of
:class:`imf.data.tokenizers.PhoneTokenizer`, VAE latents attached after the first stage).
Losses: :mod:`imf.train.wave_losses`; the flow objectives are
:func:`imf.flow.objectives.cfm_loss`, :func:`~imf.flow.objectives.meanflow_loss` and
:func:`~imf.flow.objectives.intmeanflow_loss`, unchanged. Evaluation: :mod:`imf.eval.token2wav`.

Speaker: a learned embedding of a PROMPT latent — the VAE latent of another utterance of the
same speaker, encoded and mean-pooled inside :class:`~imf.models.dit.DiT1D`. Chosen over a
speaker-id table (unseen speakers work from prompt audio alone) and over resemblyzer's
d-vector (which is also the SIM judge: conditioning on it would let the generator game SIM).

Randomness: every crop, prompt choice and noise draw inside an objective comes from the
trainer's generator, so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from imf.core.checkpoints import load_model
from imf.core.config import Config
from imf.core.distributed import barrier, is_main, resolve_device
from imf.core.lock import RunLock
from imf.core.runtime import seed_everything
from imf.data.tokenizers import PhoneTokenizer
from imf.data.waves import T2WDataConfig, TokenWaveDataset, collate_waves, generator_batch
from imf.flow.objectives import CFMConfig, IMFConfig, MeanFlowConfig, cfm_loss, intmeanflow_loss, meanflow_loss
from imf.flow.solvers import Guided
from imf.models.dit import DiT1D, DiTConfig
from imf.models.student import freeze, init_time_mix, student_from_teacher
from imf.models.token2wav import Token2Wav
from imf.models.vae import VAEConfig, WaveVAE
from imf.train.gan import GANConfig, make_adversarial
from imf.train.trainer import TrainConfig, Trainer
from imf.train.wave_losses import RefineObjective, T2WLossConfig, VAEObjective

STAGE_RUNS = ("vae", "fm", "mf", "imf", "mf_decft", "mf_joint")  # run folders of train_stages, in order


@dataclasses.dataclass(frozen=True)
class T2WStagesConfig(Config):
    """Every stage's configs (a profile's ``token2wav`` section without its ``eval``)."""
    vae: VAEConfig = VAEConfig()  # the waveform VAE
    generator: DiTConfig = DiTConfig()  # the DiT-1D latent generators (latent_dim / n_tokens come from the data)
    wave_loss: T2WLossConfig = T2WLossConfig()  # VAE and fine-tuning loss
    gan: GANConfig = GANConfig()  # adversarial + feature-matching terms of decoder-only and joint fine-tuning
    data: T2WDataConfig = T2WDataConfig()  # crops and prompts
    cfm: CFMConfig = CFMConfig()  # the flow-matching generator's objective
    meanflow: MeanFlowConfig = MeanFlowConfig()  # the MeanFlow generator's objective
    imf: IMFConfig = IMFConfig()  # IntMeanFlow distillation of the flow-matching generator
    vae_train: TrainConfig = TrainConfig()  # one TrainConfig per stage
    fm_train: TrainConfig = TrainConfig()
    mf_train: TrainConfig = TrainConfig()
    imf_train: TrainConfig = TrainConfig()
    decft_train: TrainConfig = TrainConfig()
    joint_train: TrainConfig = TrainConfig()


# ---------------------------------------------------------------------------------------------
# Stage 1: the VAE
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def latent_stats(vae: WaveVAE, data: TokenWaveDataset) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and std of ``mu`` over every frame of ``data``, and the RMS posterior std
    ``exp(logvar / 2)``: ((latent_dim,) each). A std of ``mu`` not well above the posterior std
    means the latent carries little information (posterior collapse)."""
    vae = vae.eval()
    s1 = torch.zeros(vae.config.latent_dim, dtype=torch.float64)
    s2, sv = torch.zeros_like(s1), torch.zeros_like(s1)
    n = 0
    for it in data.items:
        mu, logvar = vae.encode(it["wav"][None])
        mu = mu[0].double()
        s1 += mu.sum(-1)
        s2 += (mu ** 2).sum(-1)
        sv += logvar[0].double().exp().sum(-1)
        n += mu.shape[-1]
    mean = s1 / n
    return mean.float(), (s2 / n - mean ** 2).clamp(min=1e-8).sqrt().float(), (sv / n).sqrt().float()


def train_vae(corpus, run_dir: str | Path, model_cfg: VAEConfig = VAEConfig(), train_cfg: TrainConfig = TrainConfig(),
              loss_cfg: T2WLossConfig = T2WLossConfig(), data_cfg: T2WDataConfig = T2WDataConfig(),
              data: TokenWaveDataset | None = None, progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """Train (or resume) the waveform VAE, then store the latent statistics of the train split in
    its checkpoint (buffers ``latent_mean`` / ``latent_std`` of the model and its EMA).

    ``data``: the train :class:`TokenWaveDataset` (built here with a :class:`PhoneTokenizer` if None).
    The trained VAE loads with ``load_model(run_dir / "checkpoints/last.pt")`` (EMA weights).
    """
    if data is None:
        data = TokenWaveDataset(corpus, "train", PhoneTokenizer(model_cfg.stride), model_cfg.stride,
                                min_frames=data_cfg.seg_frames, max_utts=data_cfg.max_utts)
    seed_everything(train_cfg.seed)
    model = WaveVAE(model_cfg)
    objective = VAEObjective(loss_cfg, data_cfg.seg_frames, corpus.mel_config)
    trainer = Trainer(run_dir, model, objective, data, collate_waves, train_cfg,
                      extra_config={"wave_loss": loss_cfg.to_dict(), "data": data_cfg.to_dict(),
                                    "corpus": str(corpus.root)},
                      progress=progress, desc="Token2Wav VAE")
    summary = trainer.fit()
    mean, std, post_std = latent_stats(trainer.ema, data)
    summary["latent_snr"] = float((std / post_std).median())
    if summary["latent_snr"] < 2.0:
        warnings.warn(f"{run_dir}: the VAE latent barely varies beyond its posterior noise (median std(mu) / "
                      f"posterior std = {summary['latent_snr']:.2f}): posterior collapse; lower the learning rate "
                      "or kl_weight, or train longer", stacklevel=2)
    if not (torch.equal(trainer.ema.latent_mean, mean) and torch.equal(trainer.ema.latent_std, std.clamp(min=1e-4))):
        for m in (trainer.model, trainer.ema):
            m.set_latent_stats(mean, std)
        if is_main():  # rank 0 writes; the run is ours again while the statistics go into its checkpoint
            with RunLock(run_dir):
                trainer.save()
        barrier()
    return trainer, summary


# ---------------------------------------------------------------------------------------------
# Stage 2: latent generators (flow matching, MeanFlow) and the IntMeanFlow student
# ---------------------------------------------------------------------------------------------
def train_generator(data: TokenWaveDataset, run_dir: str | Path, kind: str, model_cfg: DiTConfig = DiTConfig(),
                    train_cfg: TrainConfig = TrainConfig(), cfm_cfg: CFMConfig = CFMConfig(),
                    mf_cfg: MeanFlowConfig = MeanFlowConfig(), data_cfg: T2WDataConfig = T2WDataConfig(),
                    progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """Train (or resume) a DiT-1D latent generator on ``data`` (with latents attached).

    ``kind="fm"``: conditional flow matching (:func:`imf.flow.objectives.cfm_loss`), a teacher-style model
    sampled in several steps. ``kind="meanflow"``: a mean-flow model (``time_mix`` at
    ``[I | 0]``) trained from scratch with :func:`imf.flow.objectives.meanflow_loss`, sampled in one step.
    ``latent_dim`` / ``n_tokens`` are taken from the data.
    """
    if kind not in ("fm", "meanflow"):
        raise ValueError(f"kind must be 'fm' or 'meanflow', got {kind!r}")
    data.require_latents()
    model_cfg = model_cfg.replace(latent_dim=int(data.items[0]["latent"].shape[0]),
                                  n_tokens=data.tokenizer.vocab_size(data.corpus), mean_flow=kind == "meanflow")
    seed_everything(train_cfg.seed)
    model = DiT1D(model_cfg)
    if kind == "meanflow":
        init_time_mix(model.time_mix)

    def objective(m, batch, g, rows=None):  # crops of the whole batch, then this shard's rows (data parallel)
        b = generator_batch(data, batch, data_cfg, g)
        if kind == "fm":
            return cfm_loss(m, b["z_1"], b["cond"], b["cond"]["mask"], cfm_cfg, g, rows=rows)
        return meanflow_loss(m, b["z_1"], b["cond"], b["cond"]["mask"], mf_cfg, g, rows=rows)

    extra = {"objective": kind, "data": data_cfg.to_dict(), "corpus": str(data.corpus.root),
             "latents": data.latent_source}
    extra.update({"cfm": cfm_cfg.to_dict()} if kind == "fm" else {"meanflow": mf_cfg.to_dict()})
    trainer = Trainer(run_dir, model, objective, data, collate_waves, train_cfg, extra_config=extra,
                      progress=progress, desc=f"Token2Wav generator ({kind})")
    return trainer, trainer.fit()


def distill_generator(data: TokenWaveDataset, teacher_ckpt: str | Path, run_dir: str | Path,
                      train_cfg: TrainConfig = TrainConfig(), imf_cfg: IMFConfig = IMFConfig(),
                      data_cfg: T2WDataConfig = T2WDataConfig(), freeze_mode: str = "none",
                      progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """IntMeanFlow: a 1-step student of the FM generator in ``teacher_ckpt`` (init strategy,
    guided teacher rollouts of :func:`imf.flow.objectives.intmeanflow_loss`)."""
    data.require_latents()
    seed_everything(train_cfg.seed)
    teacher = load_model(teacher_ckpt).to(resolve_device(train_cfg.device))
    student = student_from_teacher(teacher).train()
    params = freeze(student, freeze_mode)
    guided = Guided(teacher, imf_cfg.cfg_scale)

    def objective(m, batch, g, rows=None):
        b = generator_batch(data, batch, data_cfg, g)
        return intmeanflow_loss(m, guided, b["z_1"], b["cond"], b["cond"]["mask"], imf_cfg, g, rows=rows)

    trainer = Trainer(run_dir, student, objective, data, collate_waves, train_cfg, params=params,
                      extra_config={"imf": imf_cfg.to_dict(), "data": data_cfg.to_dict(), "freeze": freeze_mode,
                                    "teacher": str(teacher_ckpt), "corpus": str(data.corpus.root),
                                    "latents": data.latent_source},
                      progress=progress, desc=f"Token2Wav IntMeanFlow student (N={imf_cfg.teacher_nfe})")
    return trainer, trainer.fit()


# ---------------------------------------------------------------------------------------------
# Stage 3: refinements (decoder-only, then joint)
# ---------------------------------------------------------------------------------------------
def finetune_decoder(data: TokenWaveDataset, vae_ckpt: str | Path, generator_ckpt: str | Path, run_dir: str | Path,
                     train_cfg: TrainConfig = TrainConfig(), loss_cfg: T2WLossConfig = T2WLossConfig(),
                     data_cfg: T2WDataConfig = T2WDataConfig(), progress: bool = True,
                     gan_cfg: GANConfig = GANConfig()) -> tuple[Trainer, dict[str, Any]]:
    """Decoder-only fine-tuning of the VAE decoder on latents of the FROZEN 1-step generator
    (``gan_cfg.enabled``: with the adversarial + feature-matching terms).

    The trained unit is a :class:`Token2Wav` (generator + VAE) so the result loads alone; only
    ``vae.decoder_parameters()`` are optimised, the generator (and encoder) keep their weights
    bit for bit (their EMA too: the EMA of an unchanged weight is that weight).
    """
    data.require_latents()
    seed_everything(train_cfg.seed)
    system = Token2Wav.from_parts(load_model(vae_ckpt), load_model(generator_ckpt))
    system.requires_grad_(False)
    params = system.vae.decoder_parameters()
    for p in params:
        p.requires_grad_(True)
    objective = RefineObjective(data, loss_cfg, data_cfg, joint=False, gan=make_adversarial(gan_cfg, train_cfg))
    trainer = Trainer(run_dir, system, objective, data, collate_waves, train_cfg, params=params,
                      extra_config={"stage": "decoder_ft", "wave_loss": loss_cfg.to_dict(), "gan": gan_cfg.to_dict(),
                                    "data": data_cfg.to_dict(),
                                    "vae": str(vae_ckpt), "generator": str(generator_ckpt),
                                    "corpus": str(data.corpus.root), "latents": data.latent_source},
                      progress=progress, desc="Token2Wav decoder-only FT")
    return trainer, trainer.fit()


def finetune_joint(data: TokenWaveDataset, system_ckpt: str | Path, run_dir: str | Path,
                   train_cfg: TrainConfig = TrainConfig(), loss_cfg: T2WLossConfig = T2WLossConfig(),
                   data_cfg: T2WDataConfig = T2WDataConfig(), progress: bool = True,
                   gan_cfg: GANConfig = GANConfig()) -> tuple[Trainer, dict[str, Any]]:
    """Joint fine-tuning of generator + decoder (from a decoder-FT :class:`Token2Wav` checkpoint)
    through the generator's 1-step output, with the waveform loss (+ the GAN terms with
    ``gan_cfg.enabled``, fresh discriminators); the encoder stays frozen."""
    data.require_latents()
    seed_everything(train_cfg.seed)
    system = load_model(system_ckpt)
    system.requires_grad_(False)
    params = list(system.generator.parameters()) + system.vae.decoder_parameters()
    for p in params:
        p.requires_grad_(True)
    objective = RefineObjective(data, loss_cfg, data_cfg, joint=True, gan=make_adversarial(gan_cfg, train_cfg))
    trainer = Trainer(run_dir, system, objective, data, collate_waves, train_cfg, params=params,
                      extra_config={"stage": "joint_ft", "wave_loss": loss_cfg.to_dict(), "gan": gan_cfg.to_dict(),
                                    "data": data_cfg.to_dict(),
                                    "init": str(system_ckpt), "corpus": str(data.corpus.root),
                                    "latents": data.latent_source},
                      progress=progress, desc="Token2Wav joint FT")
    return trainer, trainer.fit()


# ---------------------------------------------------------------------------------------------
# One stage (the torchrun entry ``python -m imf.train token2wav --stage S``) and all stages in order
# ---------------------------------------------------------------------------------------------
TRAIN_STAGES = ("vae", "fm", "meanflow", "imf", "decoder_ft", "joint_ft")  # train_stage's stages, in order
STAGE_RUN = dict(zip(TRAIN_STAGES, STAGE_RUNS))  # stage -> its run folder key of STAGE_RUNS
STAGE_TRAIN = {"vae": "vae_train", "fm": "fm_train", "meanflow": "mf_train", "imf": "imf_train",
               "decoder_ft": "decft_train", "joint_ft": "joint_train"}  # stage -> its TrainConfig in T2WStagesConfig
STAGE_NEEDS = {"vae": (), "fm": ("vae",), "meanflow": ("vae",), "imf": ("vae", "teacher"),
               "decoder_ft": ("vae", "init"), "joint_ft": ("vae", "init")}  # checkpoints each stage reads


def checkpoints(run_dirs: Mapping[str, str | Path]) -> dict[str, Path]:
    """``{run: run_dir / "checkpoints/last.pt"}`` for the :data:`STAGE_RUNS` folders."""
    return {k: Path(run_dirs[k]) / "checkpoints" / "last.pt" for k in STAGE_RUNS}


def stage_inputs(stage: str, ckpts: Mapping[str, str | Path]) -> dict[str, Path]:
    """The checkpoints ``stage`` reads (:data:`STAGE_NEEDS`: ``vae``, ``teacher``, ``init``) from the
    :func:`checkpoints` of every stage: the VAE (whose latents the generators learn), the flow-matching
    generator (teacher of ``imf``), the MeanFlow generator (``init`` of ``decoder_ft``) and the decoder-FT
    system (``init`` of ``joint_ft``)."""
    src = {"vae": "vae", "teacher": "fm", "init": {"decoder_ft": "mf", "joint_ft": "mf_decft"}.get(stage)}
    return {k: Path(ckpts[src[k]]) for k in STAGE_NEEDS[stage]}


def train_data(corpus, cfg: T2WStagesConfig) -> TokenWaveDataset:
    """The train split every stage reads (``cfg.data.max_utts`` utterances, tokens at the VAE's stride)."""
    stride, d = cfg.vae.stride, cfg.data
    return TokenWaveDataset(corpus, "train", PhoneTokenizer(stride), stride, min_frames=d.seg_frames,
                            max_utts=d.max_utts)


def train_stage(stage: str, corpus, cfg: T2WStagesConfig, run_dir: str | Path, vae: str | Path | None = None,
                teacher: str | Path | None = None, init: str | Path | None = None,
                data: TokenWaveDataset | None = None, progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """Train (or resume) one ``stage`` of :data:`TRAIN_STAGES` into ``run_dir`` with ``cfg``'s configs; (trainer,
    summary).

    ``vae`` / ``teacher`` / ``init``: the checkpoints the stage reads (:data:`STAGE_NEEDS`, :func:`stage_inputs`).
    ``data``: the train split, with the VAE's latents attached for every stage after ``vae`` (None: built
    here from ``corpus`` and ``vae``). The stage's :class:`TrainConfig` (``batch_size``: the global batch) is
    ``cfg``'s :data:`STAGE_TRAIN` field, so 1 and N torchrun processes train the same weights.
    """
    if stage not in TRAIN_STAGES:
        raise ValueError(f"unknown Token2Wav stage {stage!r}; choose one of {list(TRAIN_STAGES)}")
    given = {"vae": vae, "teacher": teacher, "init": init}
    missing = [k for k in STAGE_NEEDS[stage] if not given[k]]
    if missing:
        raise ValueError(f"Token2Wav stage {stage!r} needs the checkpoint(s) {missing} (--{' --'.join(missing)})")
    if data is None:
        data = train_data(corpus, cfg)
        if stage != "vae":
            data.attach_latents(load_model(vae))
    d, t = cfg.data, getattr(cfg, STAGE_TRAIN[stage])
    if stage == "vae":
        return train_vae(corpus, run_dir, cfg.vae, t, cfg.wave_loss, d, data=data, progress=progress)
    if stage in ("fm", "meanflow"):
        return train_generator(data, run_dir, stage, cfg.generator, t, cfm_cfg=cfg.cfm, mf_cfg=cfg.meanflow,
                               data_cfg=d, progress=progress)
    if stage == "imf":
        return distill_generator(data, teacher, run_dir, t, cfg.imf, d, progress=progress)
    if stage == "decoder_ft":
        return finetune_decoder(data, vae, init, run_dir, t, cfg.wave_loss, d, progress=progress, gan_cfg=cfg.gan)
    return finetune_joint(data, init, run_dir, t, cfg.wave_loss, d, progress=progress, gan_cfg=cfg.gan)


def train_stages(corpus, cfg: T2WStagesConfig, run_dirs: Mapping[str, str | Path],
                 progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train (or resume) every stage in order into ``run_dirs[k]`` for ``k`` in :data:`STAGE_RUNS`, in this process.

    The train split (``cfg.data.max_utts``) gets the trained VAE's latents before the generators.
    Returns each stage's summary: ``{"vae", "fm", "meanflow", "imf", "decoder_ft", "joint_ft"}``.
    """
    missing = [k for k in STAGE_RUNS if k not in run_dirs]
    if missing:
        raise KeyError(f"run_dirs has no folder for stage(s) {missing}; give all of {list(STAGE_RUNS)}")
    ckpt = checkpoints(run_dirs)
    train = train_data(corpus, cfg)
    out = {}
    for stage in TRAIN_STAGES:
        if stage == "fm":
            train.attach_latents(load_model(ckpt["vae"]))
        _, out[stage] = train_stage(stage, corpus, cfg, run_dirs[STAGE_RUN[stage]], data=train, progress=progress,
                                    **stage_inputs(stage, ckpt))
    return out
