"""The log-mel -> waveform vocoder: frame alignment, Griffin-Lim fallback, training, checkpoints."""
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from imf.core.config import ConfigError
from imf.models.features import LogMel, MelConfig
from imf.core.checkpoints import MODELS
from imf.models.vocoder import GriffinLim, Vocoder, VocoderConfig, load_vocoder
from imf.train.trainer import TrainConfig
from imf.core.checkpoints import load_model
from imf.data.waves import MelWaveDataset, collate_waves, mel_segments, segment_frames
from imf.eval.ceilings import copy_synthesis, evaluate_copy_synthesis
from imf.train.vocoder import train_vocoder

SR, HOP = 16000, 256


def harmonic(seconds: float, f0=(120.0, 220.0), seed: int = 0) -> torch.Tensor:
    """A speech-like test signal (N,): gliding f0, 1/k harmonics, syllable-rate envelope, a little noise."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    f = f0[0] + (f0[1] - f0[0]) * t / seconds + 10 * torch.sin(2 * math.pi * 5 * t)
    phase = 2 * math.pi * torch.cumsum(f, 0) / SR
    x = sum(torch.sin(k * phase) / k * (k * f < SR / 2) for k in range(1, 30))
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t + 1.0) ** 2
    x = 0.1 * x * env + 0.003 * torch.randn(n, generator=g, dtype=torch.float64)
    return x.float()


class FakeCorpus:
    """The ``imf.data`` corpus contract on synthetic harmonic utterances."""

    def __init__(self, n: int = 8, seconds: float = 0.6):
        self.root, self.mel_config = "fake", MelConfig()
        self.wavs = {f"u{i}": harmonic(seconds + 0.05 * i, (100 + 15 * i, 180 + 10 * i), seed=i) for i in range(n)}
        self.logmel = LogMel(self.mel_config)

    def split(self, name):
        return pd.DataFrame({"id": list(self.wavs)})

    def load_wav(self, uid):
        return self.wavs[uid]

    def load_mel(self, uid):
        return self.logmel(self.wavs[uid])


def mel_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


TINY = VocoderConfig(dim=32, n_layers=1, intermediate_dim=64)


# -- shapes and alignment ------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [2, 3, 17, 64])
def test_output_length_is_frames_minus_one_hops(frames):
    torch.manual_seed(0)
    mel = torch.randn(2, 80, frames) - 5
    assert Vocoder(TINY)(mel).shape == (2, (frames - 1) * HOP)
    assert Vocoder(TINY).vocode(mel[0]).shape == ((frames - 1) * HOP,)
    assert GriffinLim(n_iter=2).vocode(mel).shape == (2, (frames - 1) * HOP)
    # inverse of the feature's frame count: T = 1 + N // hop
    assert MelConfig().n_frames((frames - 1) * HOP) == frames


def test_bad_shapes_and_configs_are_refused():
    with pytest.raises(ValueError, match=r"\(B, 80, T\)"):
        Vocoder(TINY)(torch.zeros(1, 40, 10))
    with pytest.raises(ValueError):
        GriffinLim().vocode(torch.zeros(80, 1))
    with pytest.raises(ConfigError, match="padding"):
        VocoderConfig(padding="valid")
    with pytest.raises(ConfigError, match="mag_prior"):
        VocoderConfig(front_end="vocos")
    with pytest.raises(ConfigError, match="hop_length"):
        VocoderConfig(hop_length=1024)


def test_segments_are_frame_aligned_with_the_audio():
    """A segment cut at frame f: its mel slice equals LogMel of its own audio away from the edges."""
    corpus = FakeCorpus(n=2, seconds=1.0)
    data = MelWaveDataset(corpus)
    k = segment_frames(0.5, corpus.mel_config)
    mel, wav = mel_segments(collate_waves([data[0], data[1]]), k, HOP, torch.Generator().manual_seed(1))
    assert mel.shape == (2, 80, k + 1) and wav.shape == (2, k * HOP)
    own = LogMel()(wav)
    # frames whose 1024-sample window lies inside the segment see identical samples
    inner = slice(2, k - 1)
    assert torch.allclose(mel[..., inner], own[..., inner], atol=1e-4)
    assert not torch.allclose(mel[..., inner], LogMel()(torch.roll(wav, HOP, -1))[..., inner], atol=1e-2)


# -- Griffin-Lim fallback --------------------------------------------------------------------------
def _flite(tmp_path):
    if shutil.which("flite") is None:
        pytest.skip("flite not installed")
    import soundfile as sf
    import torchaudio

    path = tmp_path / "x.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", "Griffin and Lim recover the phase.", "-o", str(path)],
                   check=True, capture_output=True)
    wav, sr = sf.read(path, dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(wav), sr, SR)


@pytest.mark.parametrize("source", ["harmonic", "flite"])
def test_griffin_lim_reproduces_the_mel(source, tmp_path):
    wav = harmonic(1.5) if source == "harmonic" else _flite(tmp_path)
    mel = LogMel()(wav)
    out = GriffinLim(n_iter=32).vocode(mel)
    assert out.shape == ((mel.shape[-1] - 1) * HOP,) and torch.isfinite(out).all()
    assert mel_corr(LogMel()(out), mel) > 0.8


def test_magnitude_prior_is_the_griffin_lim_magnitude():
    """Both invert the same slaney filterbank by least squares (pinv vs lstsq)."""
    mel = LogMel()(harmonic(0.5))
    prior = torch.exp(Vocoder(VocoderConfig(dim=8, n_layers=1)).prior_log_mag(mel[None]))[0]
    gl = GriffinLim().magnitude(mel[None])[0]
    big = gl > 1e-3 * gl.max()
    assert torch.allclose(prior[big], gl[big], rtol=1e-3, atol=1e-4)


def test_load_vocoder_none_warns_and_falls_back():
    with pytest.warns(UserWarning, match="Griffin-Lim"):
        v = load_vocoder(None)
    assert isinstance(v, GriffinLim)


# -- training through the shared Trainer, checkpoints ------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("voc") / "run"
    corpus = FakeCorpus()
    cfg = TrainConfig(steps=15, batch_size=4, lr=3e-3, warmup=2, ema_decay=0.5, ckpt_every=15, log_every=1,
                      seed=0, threads=1)
    trainer, summary = train_vocoder(corpus, run, TINY, cfg, seg_seconds=0.25, progress=False)
    return corpus, run, trainer, summary


def test_tiny_vocoder_trains_and_loss_goes_down(trained):
    _, run, trainer, summary = trained
    assert summary["steps"] == 15
    loss = [h["loss"] for h in trainer.history]
    assert np.mean(loss[-3:]) < 0.9 * np.mean(loss[:3])
    assert {"mel_l1", "mrstft"} <= set(trainer.history[0])
    assert (run / "metrics.csv").exists() and (run / "config.json").exists()


def test_checkpoint_round_trip_reproduces_outputs_exactly(trained):
    corpus, run, trainer, _ = trained
    mel = corpus.load_mel("u3")
    ref = trainer.ema.eval().vocode(mel)
    assert "Vocoder" in MODELS
    via_loop = load_model(run / "checkpoints" / "last.pt")
    via_helper = load_vocoder(run)
    assert isinstance(via_helper, Vocoder) and via_helper.config == trainer.model.config
    assert torch.equal(via_loop.vocode(mel), ref)
    assert torch.equal(via_helper.vocode(mel), ref)
    with pytest.raises(FileNotFoundError):
        load_vocoder(run / "nothing")


def test_resume_refuses_a_different_segment_length(trained):
    corpus, run, trainer, _ = trained
    with pytest.raises(ValueError, match="seg_"):
        train_vocoder(corpus, run, TINY, trainer.cfg, seg_seconds=0.5, progress=False)


def test_fine_tune_starts_from_the_checkpoints_ema_weights_and_adam_moments(trained, tmp_path):
    corpus, run, trainer, _ = trained
    init = run / "checkpoints" / "last.pt"
    mel = corpus.load_mel("u3")
    # one step at a negligible lr, no EMA: the fine-tuned vocoder is the init's EMA vocoder
    cfg = trainer.cfg.replace(steps=1, lr=1e-12, warmup=0, ema_decay=0.0, ckpt_every=1)
    ft, summary = train_vocoder(corpus, tmp_path / "ft", TINY, cfg, seg_seconds=0.25, progress=False, init_from=init)
    assert summary["steps"] == 1
    assert torch.allclose(load_vocoder(tmp_path / "ft").vocode(mel), trainer.ema.eval().vocode(mel), atol=1e-5)
    fresh, _ = train_vocoder(corpus, tmp_path / "fresh", TINY, cfg, seg_seconds=0.25, progress=False)
    assert not torch.allclose(fresh.ema.vocode(mel), trainer.ema.vocode(mel), atol=1e-2)
    # Adam continues the init's moments: its step count goes on from the init's 15 steps
    assert all(int(st["step"]) == 16 for st in ft.opt.state.values())
    assert all(int(st["step"]) == 1 for st in fresh.opt.state.values())
    with pytest.raises(ValueError, match="init_from"):  # another architecture is refused, naming the checkpoint
        train_vocoder(corpus, tmp_path / "other", TINY.replace(dim=48), cfg, seg_seconds=0.25, progress=False,
                      init_from=init)


# -- copy synthesis and reconstruction metrics --------------------------------------------------------
def test_copy_synthesis_pairs_are_aligned_and_scored():
    corpus = FakeCorpus(n=2, seconds=1.0)
    pairs = copy_synthesis(GriffinLim(n_iter=16), corpus, ["u0", "u1"])
    for uid, ref, hat in pairs:
        assert ref.shape == hat.shape == ((corpus.load_mel(uid).shape[-1] - 1) * HOP,)

    class Identity:  # a perfect "vocoder" scores the PESQ/STOI ceiling
        def vocode(self, mel):
            return corpus.load_wav(uid)

    uid = "u1"
    same = evaluate_copy_synthesis(Identity(), corpus, [uid])
    assert same.pesq[uid] > 4.5 and same.stoi[uid] > 0.99
    df = evaluate_copy_synthesis(GriffinLim(n_iter=16), corpus, ["u0", "u1"])
    assert list(df.index) == ["u0", "u1"] and {"pesq", "stoi", "seconds"} <= set(df.columns)
    assert (df.stoi < 0.99).all() and df.pesq.notna().all()
