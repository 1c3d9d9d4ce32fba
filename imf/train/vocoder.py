"""Train the log-mel -> waveform vocoder (:class:`imf.models.vocoder.Vocoder`).

Data: :class:`imf.data.waves.MelWaveDataset` holds whole utterances with their log-mel
(computed once with the corpus's :class:`~imf.models.features.LogMel`); every step the
objective cuts one random ``seg_frames``-frame segment per utterance with the trainer's
generator (:func:`imf.data.waves.mel_segments`), so a resumed run sees the same segments as an
uninterrupted one. Loss: :class:`imf.train.wave_losses.WaveLoss` (mel L1 + multi-resolution
STFT), plus the ``vocos`` package's adversarial and feature-matching losses with a GAN
(:mod:`imf.train.gan`, ``gan_cfg.enabled``). Copy-synthesis evaluation: :mod:`imf.eval.ceilings`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from imf.core.checkpoints import load_checkpoint, load_weights
from imf.core.runtime import seed_everything
from imf.data.waves import MelWaveDataset, collate_waves, segment_frames
from imf.models.vocoder import Vocoder, VocoderConfig
from imf.train.gan import GANConfig, make_adversarial
from imf.train.trainer import TrainConfig, Trainer
from imf.train.wave_losses import VocoderObjective, WaveLossConfig


# The small-profile recipe, measured on synth-small with 1 torch thread on the shared 2-core CPU:
# 0.23-0.43 s/step depending on the load (~4-7 min); losses flatten from ~600 steps. Batch 8 x
# 1000 steps beat batch 16 x 500 steps at equal time; lr 4e-3 was no better than 2e-3.
SMALL_TRAIN = TrainConfig(steps=1000, batch_size=8, lr=2e-3, warmup=50, ema_decay=0.995, ckpt_every=100,
                          log_every=25, threads=1)


def train_vocoder(corpus, run_dir: str | Path, model_cfg: VocoderConfig = VocoderConfig(),
                  train_cfg: TrainConfig = SMALL_TRAIN, seg_seconds: float = 1.0, progress: bool = True,
                  loss_cfg: WaveLossConfig = WaveLossConfig(), split: str = "train",
                  max_utts: int | None = None, gan_cfg: GANConfig = GANConfig(),
                  init_from: str | Path | None = None,
                  on_checkpoint: Callable[[Trainer], None] | None = None) -> tuple[Trainer, dict[str, Any]]:
    """Train (or resume) a :class:`Vocoder` on ``corpus`` in ``run_dir`` through the shared trainer.

    ``model_cfg``'s mel geometry (n_mels, n_fft, hop_length, sample_rate, f_min, f_max) is taken
    from ``corpus.mel_config``. Each step
    uses ``train_cfg.batch_size`` random segments of ``seg_seconds`` (one per utterance, a
    seeded epoch order over utterances); ``gan_cfg.enabled`` adds a discriminator step and the
    adversarial + feature-matching terms (the discriminators and their optimizer are saved in the
    checkpoint). ``init_from`` (a vocoder checkpoint, ``.../checkpoints/last.pt``) makes the run a
    fine-tune: it starts from that checkpoint's EMA weights (as model and EMA) and its optimizer's
    moments, at step 0 of ``train_cfg``'s schedule (a resumed run continues from its own checkpoint).
    ``on_checkpoint(trainer)`` is called after each checkpoint (a benchmark's clock).
    Returns ``(trainer, summary)``; the trained model is
    ``trainer.ema`` and loads back with :func:`imf.models.vocoder.load_vocoder(run_dir)`.
    """
    mc = corpus.mel_config
    model_cfg = model_cfg.replace(n_mels=mc.n_mels, n_fft=mc.n_fft, hop_length=mc.hop_length,
                                  sample_rate=mc.sample_rate, f_min=mc.f_min, f_max=mc.f_max)
    seg_frames = segment_frames(seg_seconds, mc)
    data = MelWaveDataset(corpus, split, min_samples=seg_frames * mc.hop_length, max_utts=max_utts)
    seed_everything(train_cfg.seed)
    model = Vocoder(model_cfg)
    if mc.win_length != mc.n_fft:
        raise ValueError(f"corpus {getattr(corpus, 'root', '')}: the vocoder's front end assumes win_length == n_fft, "
                         f"the corpus MelConfig has {mc.win_length} / {mc.n_fft}")
    init = None
    if init_from is not None:
        init = load_checkpoint(init_from, require=("ema", "optimizer", "model_config"))
        if VocoderConfig.from_dict(init["model_config"]) != model_cfg:
            raise ValueError(f"init_from {init_from}: its model_config {init['model_config']} differs from the "
                             f"run's {model_cfg.to_dict()}")
        load_weights(model, init["ema"], init_from, "ema")  # before the Trainer copies the model into its EMA
    objective = VocoderObjective(mc, seg_frames, loss_cfg, make_adversarial(gan_cfg, train_cfg))
    extra = {"vocoder_loss": loss_cfg.to_dict(), "gan": gan_cfg.to_dict(), "seg_seconds": seg_seconds,
             "seg_frames": seg_frames, "split": split, "max_utts": max_utts,
             "corpus": str(getattr(corpus, "root", "")), "mel": mc.to_dict()}
    if init_from is not None:
        extra["init_from"] = str(init_from)
    trainer = Trainer(run_dir, model, objective, data, collate_waves, train_cfg, extra_config=extra,
                      progress=progress, desc="vocoder", on_checkpoint=on_checkpoint)
    if init is not None:
        trainer.opt.load_state_dict(init["optimizer"])  # Adam's moments (a resumed run replaces them with its own)
    return trainer, trainer.fit()
