"""Train and check the log-mel -> waveform vocoder (:class:`imf.models.vocoder.Vocoder`).

Data: whole utterances are held in memory with their log-mel (computed once with the
corpus's :class:`~imf.data.features.LogMel`); every step the objective cuts one random
``seg_frames``-frame segment per utterance with the trainer's generator, so a resumed run
sees the same segments as an uninterrupted one. A segment starting at frame ``f`` is the
mel frames ``[f, f + seg_frames]`` (cut from the whole utterance's mel, so the context at
its edges is real) and the samples ``[f * hop, (f + seg_frames) * hop)``: the vocoder's
``(T - 1) * hop`` output lines up with it sample for sample.

Loss (reconstruction only, NO adversarial term — GAN training is too slow to pay off in a
few CPU minutes, and these two losses already give intelligible audio; the cost is some
buzz/phasiness a discriminator would remove)::

    L = mel_weight * |LogMel(wav_hat) - LogMel(wav)|_1
      + stft_weight * MRSTFT(wav_hat, wav)      # auraloss: spectral convergence + log |STFT|

Evaluation: :func:`copy_synthesis` re-synthesises corpus utterances from their cached mels;
:func:`evaluate_copy_synthesis` scores each pair with the PESQ (wide-band) / STOI judges of
:mod:`imf.eval.judges` (or any judges given).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from imf.core.config import Config, require
from imf.core.runtime import seed_everything
from imf.data.features import LogMel, MelConfig
from imf.models.vocoder import Vocoder, VocoderConfig
from imf.train.trainer import TrainConfig, Trainer


@dataclasses.dataclass(frozen=True)
class VocoderLossConfig(Config):
    mel_weight: float = 1.0  # L1 between natural-log mels of output and target
    stft_weight: float = 1.0  # multi-resolution STFT loss (spectral convergence + log magnitude)
    fft_sizes: tuple[int, ...] = (512, 1024, 2048)  # MR-STFT resolutions (auraloss defaults)
    hop_sizes: tuple[int, ...] = (50, 120, 240)
    win_lengths: tuple[int, ...] = (240, 600, 1200)

    def validate(self) -> None:
        require(self.mel_weight >= 0 and self.stft_weight >= 0, "mel_weight", "weights must be >= 0")
        require(self.mel_weight + self.stft_weight > 0, "mel_weight", "at least one loss weight must be > 0")
        require(len(self.fft_sizes) == len(self.hop_sizes) == len(self.win_lengths) >= 1, "fft_sizes",
                "fft_sizes, hop_sizes and win_lengths must have the same (non-zero) length")
        require(all(w <= n for w, n in zip(self.win_lengths, self.fft_sizes)), "win_lengths",
                "each window must fit its FFT")


def segment_frames(seg_seconds: float, mel_config: MelConfig) -> int:
    """Frames per training segment: ``round(seg_seconds * sr / hop)`` (the output has that many hops)."""
    n = round(seg_seconds * mel_config.sample_rate / mel_config.hop_length)
    if n < 2:
        raise ValueError(f"seg_seconds={seg_seconds} gives {n} frames; need >= 2")
    return n


class UtteranceDataset(torch.utils.data.Dataset):
    """Utterances of one split held in memory: item ``{"id", "wav": (N,), "mel": (n_mels, 1 + N // hop)}``.

    Utterances shorter than ``min_samples`` are zero-padded at the end (their mel is computed
    on the padded audio) so every item holds at least one full segment.
    """

    def __init__(self, corpus, split: str = "train", min_samples: int = 0, max_utts: int | None = None,
                 ids: Iterable[str] | None = None):
        self.mel_config: MelConfig = corpus.mel_config
        logmel = LogMel(self.mel_config)
        ids = list(corpus.split(split)["id"]) if ids is None else list(ids)
        if max_utts is not None:
            ids = ids[:max_utts]
        if not ids:
            raise ValueError(f"split {split!r} of the corpus is empty")
        self.items = []
        with torch.no_grad():
            for uid in ids:
                wav = corpus.load_wav(uid).float().reshape(-1)
                if wav.numel() < min_samples:
                    wav = torch.nn.functional.pad(wav, (0, min_samples - wav.numel()))
                self.items.append({"id": str(uid), "wav": wav, "mel": logmel(wav)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def collate_utterances(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Utterances of different lengths stay lists; the objective cuts equal segments."""
    return {"ids": [it["id"] for it in items], "wav": [it["wav"] for it in items], "mel": [it["mel"] for it in items]}


def random_segments(batch: dict[str, Any], seg_frames: int, hop: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One random frame-aligned segment per utterance -> mel (B, n_mels, seg_frames + 1), wav (B, seg_frames * hop)."""
    mels, wavs = [], []
    for mel, wav in zip(batch["mel"], batch["wav"]):
        last = min(mel.shape[-1] - 1, wav.numel() // hop) - seg_frames  # last valid start frame
        if last < 0:
            raise ValueError(f"utterance of {wav.numel()} samples is shorter than a {seg_frames}-frame segment")
        f = int(torch.randint(0, last + 1, (1,), generator=generator))
        mels.append(mel[:, f:f + seg_frames + 1])
        wavs.append(wav[f * hop:(f + seg_frames) * hop])
    return torch.stack(mels), torch.stack(wavs)


class VocoderObjective(nn.Module):
    """``objective(model, batch, generator) -> (loss, logs)`` for :class:`~imf.train.trainer.Trainer`."""

    def __init__(self, mel_config: MelConfig, seg_frames: int, cfg: VocoderLossConfig = VocoderLossConfig()):
        super().__init__()
        import auraloss

        self.cfg, self.seg_frames, self.hop = cfg, seg_frames, mel_config.hop_length
        self.logmel = LogMel(mel_config)
        self.mrstft = auraloss.freq.MultiResolutionSTFTLoss(
            fft_sizes=list(cfg.fft_sizes), hop_sizes=list(cfg.hop_sizes), win_lengths=list(cfg.win_lengths))

    def losses(self, wav_hat: Tensor, wav: Tensor) -> dict[str, Tensor]:
        """wav_hat, wav (B, N) -> {"loss", "mel_l1", "mrstft"} (scalars)."""
        mel_l1 = (self.logmel(wav_hat) - self.logmel(wav)).abs().mean()
        mrstft = self.mrstft(wav_hat[:, None], wav[:, None])
        loss = self.cfg.mel_weight * mel_l1 + self.cfg.stft_weight * mrstft
        return {"loss": loss, "mel_l1": mel_l1, "mrstft": mrstft}

    def forward(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator):
        mel, wav = random_segments(batch, self.seg_frames, self.hop, generator)
        out = self.losses(model(mel), wav)
        return out["loss"], {k: v.item() for k, v in out.items()}


# The small-profile recipe, measured on synth-small with 1 torch thread on the shared 2-core CPU:
# 0.23-0.43 s/step depending on the load (~4-7 min); losses flatten from ~600 steps. Batch 8 x
# 1000 steps beat batch 16 x 500 steps at equal time; lr 4e-3 was no better than 2e-3.
SMALL_TRAIN = TrainConfig(steps=1000, batch_size=8, lr=2e-3, warmup=50, ema_decay=0.995, ckpt_every=100,
                          log_every=25, threads=1)


def train_vocoder(corpus, run_dir: str | Path, model_cfg: VocoderConfig = VocoderConfig(),
                  train_cfg: TrainConfig = SMALL_TRAIN, seg_seconds: float = 1.0, progress: bool = True,
                  loss_cfg: VocoderLossConfig = VocoderLossConfig(), split: str = "train",
                  max_utts: int | None = None) -> tuple[Trainer, dict[str, Any]]:
    """Train (or resume) a :class:`Vocoder` on ``corpus`` in ``run_dir`` through the shared trainer.

    ``model_cfg``'s mel geometry (n_mels, n_fft, hop_length, sample_rate, f_min, f_max) is taken
    from ``corpus.mel_config``. Each step
    uses ``train_cfg.batch_size`` random segments of ``seg_seconds`` (one per utterance, a
    seeded epoch order over utterances). Returns ``(trainer, summary)``; the trained model is
    ``trainer.ema`` and loads back with :func:`imf.models.vocoder.load_vocoder(run_dir)`.
    """
    mc = corpus.mel_config
    model_cfg = model_cfg.replace(n_mels=mc.n_mels, n_fft=mc.n_fft, hop_length=mc.hop_length,
                                  sample_rate=mc.sample_rate, f_min=mc.f_min, f_max=mc.f_max)
    seg_frames = segment_frames(seg_seconds, mc)
    data = UtteranceDataset(corpus, split, min_samples=seg_frames * mc.hop_length, max_utts=max_utts)
    seed_everything(train_cfg.seed)
    model = Vocoder(model_cfg)
    objective = VocoderObjective(mc, seg_frames, loss_cfg)
    trainer = Trainer(run_dir, model, objective, data, collate_utterances, train_cfg,
                      extra_config={"vocoder_loss": loss_cfg.to_dict(), "seg_seconds": seg_seconds,
                                    "seg_frames": seg_frames, "split": split, "max_utts": max_utts,
                                    "corpus": str(getattr(corpus, "root", "")), "mel": mc.to_dict()},
                      progress=progress, desc="vocoder")
    return trainer, trainer.fit()


# -- copy synthesis ----------------------------------------------------------------------------
def copy_synthesis(vocoder: nn.Module, corpus, ids: Iterable[str]) -> list[tuple[str, Tensor, Tensor]]:
    """Re-synthesise utterances from their cached mels: ``[(id, wav_ref (N,), wav_hat (N,))]``.

    ``vocoder`` is anything with ``vocode(mel) -> wav`` (:class:`Vocoder`, :class:`GriffinLim`).
    ``wav_ref`` is the corpus audio cut to the vocoder's ``(T - 1) * hop`` samples (the tail
    past the last frame centre is dropped), so the pair is sample-aligned.
    """
    out = []
    for uid in ids:
        mel = corpus.load_mel(uid)
        wav = corpus.load_wav(uid).float().reshape(-1)
        wav_hat = vocoder.vocode(mel).float().reshape(-1)
        n = min(wav.numel(), wav_hat.numel())
        out.append((str(uid), wav[:n].clone(), wav_hat[:n].clone()))
    return out


def evaluate_copy_synthesis(vocoder: nn.Module, corpus, ids: Iterable[str], judges=None):
    """Copy-synthesis scores per utterance: a DataFrame indexed by ``id`` with one column per judge.

    ``judges``: :mod:`imf.eval.judges` judges (default: wide-band PESQ and STOI against the
    corpus audio, single-threaded); add ``make_judge("wer")`` etc. for the ASR/MOS ceilings.
    ``summarise(df)`` from the same module gives the means. Also a ``seconds`` column.
    """
    from imf.eval.judges import PESQ, STOI, JudgeItem, evaluate

    judges = [PESQ(progress=False), STOI(progress=False)] if judges is None else list(judges)
    pairs = copy_synthesis(vocoder, corpus, ids)
    items = [JudgeItem(wav=hat.clamp(-1, 1).numpy(), ref_wav=ref.numpy(), id=uid) for uid, ref, hat in pairs]
    df = evaluate(judges, items)
    df["seconds"] = [ref.numel() / corpus.mel_config.sample_rate for _, ref, _ in pairs]
    return df
