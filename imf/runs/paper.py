"""The paper-size models and an ESTIMATE of what training them costs on one A100-class GPU.

``paper_models()`` builds each network of the ``paper`` profile (or of F5-TTS's v1 base DiT, the
IntMeanFlow paper's text2mel teacher) at full width with any number of layers; the tests build them
with 1-2 layers and take one forward/backward step on CPU, and count the full-depth parameters on
the ``meta`` device.

``estimate_paper()`` is the cost table of the README's "Scale up" section, reproducibly::

    python -m imf.runs.bench estimate-paper [--util 0.4] [--peak-tflops 312]

Method (an estimate, not a measurement of a GPU): FLOPs of one training step are COUNTED with
``torch.utils.flop_counter.FlopCounterMode`` on CPU, on the real objective (``cfm_loss`` /
``meanflow_loss`` + ``backward``) of the full-width model with 1 and 2 layers at three short lengths
and batch 2; per-sample FLOPs are fitted exactly as ``(a0 + a1 T + a2 T^2) + (L - 1)(b0 + b1 T + b2 T^2)``
(every block costs the same; attention is the T^2 term) and evaluated at the paper's depth, length,
batch and steps. An IntMeanFlow step is the student's forward+backward plus ``2 E[n]`` teacher
forwards (CFG doubles the batch; ``E[n]`` is the mean number of teacher sub-steps of the interval
sampler, computed from :func:`imf.flow.objectives.substep_counts`). Hours = FLOPs / (utilisation x peak).
Not counted: data loading, the mel/STFT front ends (FFTs), optimizer updates, evaluation, communication.
Lengths are the profile's crop maxima, i.e. an upper bound on the average utterance.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from imf.flow.objectives import CFMConfig, IMFConfig, MeanFlowConfig, cfm_loss, meanflow_loss, sample_intervals, substep_counts
from imf.models.backbones.f5 import F5Backbone, F5Config
from imf.models.dit import DiT1D, DiTConfig
from imf.models.token2mel import Token2Mel, Token2MelConfig
from imf.models.vae import VAEConfig, WaveVAE
from imf.models.vocoder import Vocoder, VocoderConfig
from imf.runs.profiles import profile

A100_BF16_TFLOPS = 312.0  # dense bf16 tensor-core peak of an A100
UTILISATION = 0.4  # assumed model-FLOPs utilisation
F5_BATCH_FRAMES = 38_400  # F5-TTS's per-GPU batch in mel frames (307,200 over 8 GPUs)
F5_MAX_FRAMES = 1_000  # ~10.7 s at 24 kHz / hop 256: a typical LibriTTS/Emilia crop
N_TOKENS = 128  # token vocabulary of the token2mel / token2wav models (negligible in FLOPs)


@dataclasses.dataclass(frozen=True)
class PaperModel:
    """A paper-size network: ``build(n_layers)`` at full width, a batch maker and its full depth."""
    name: str
    build: Callable[[int], nn.Module]  # n_layers -> model (CPU, float32)
    batch: Callable[[int, int], tuple[Tensor, dict[str, Tensor], Tensor]]  # (B, T) -> z_1, cond, mask
    n_layers: int  # the paper depth
    velocity: bool = True  # a flow model (x, t, r, cond) -> v, else a plain network (vocoder, VAE)


def _t2m_batch(n_mels: int, prompt_frames: int) -> Callable[[int, int], tuple[Tensor, dict[str, Tensor], Tensor]]:
    def make(b: int, t: int):
        g = torch.Generator().manual_seed(0)
        mask = torch.ones(b, t, dtype=torch.bool)
        cond = {"tokens": torch.randint(1, N_TOKENS, (b, t), generator=g), "mask": mask,
                "prompt": torch.randn(b, n_mels, prompt_frames, generator=g),
                "prompt_mask": torch.ones(b, prompt_frames, dtype=torch.bool)}
        return torch.randn(b, n_mels, t, generator=g), cond, mask
    return make


def _f5_batch(b: int, t: int):
    g = torch.Generator().manual_seed(0)
    cfg = F5Config()
    mask = torch.ones(b, t, dtype=torch.bool)
    cond = {"cond_mel": torch.randn(b, cfg.mel_dim, t, generator=g),
            "text": torch.randint(0, cfg.text_num_embeds, (b, max(1, t // 4)), generator=g), "mask": mask}
    return torch.randn(b, cfg.mel_dim, t, generator=g), cond, mask


def paper_models(name: str = "paper") -> dict[str, PaperModel]:
    """The networks of profile ``name`` (default ``paper``) plus F5-TTS v1 base, by stage name."""
    P = profile(name)
    tm, voc, t2w = P["teacher_model"], P["vocoder"]["model"], P["token2wav"]
    n_mels, pf = 80, P["data"]["prompt_frames"]
    gen, vae = dict(t2w["generator"]), dict(t2w["vae"])
    latent = vae.get("latent_dim", VAEConfig().latent_dim)
    tm_cfg = Token2MelConfig(n_tokens=N_TOKENS, **tm)
    voc_cfg = VocoderConfig(**voc)
    gen_cfg = DiTConfig(latent_dim=latent, n_tokens=N_TOKENS, **gen)
    vae_cfg = VAEConfig(**vae)
    t2w_pf = t2w["data"]["prompt_frames"]
    return {
        "token2mel": PaperModel("token2mel", lambda L: Token2Mel(tm_cfg.replace(n_layers=L)), _t2m_batch(n_mels, pf),
                                tm_cfg.n_layers),
        "f5_text2mel": PaperModel("f5_text2mel", lambda L: F5Backbone(F5Config(depth=L)), _f5_batch, F5Config().depth),
        "vocoder": PaperModel("vocoder", lambda L: Vocoder(voc_cfg.replace(n_layers=L)),
                              lambda b, t: (torch.randn(b, n_mels, t), {}, torch.ones(b, t, dtype=torch.bool)),
                              voc_cfg.n_layers, velocity=False),
        "token2wav_dit": PaperModel("token2wav_dit", lambda L: DiT1D(gen_cfg.replace(n_layers=L)),
                                    _t2m_batch(latent, t2w_pf), gen_cfg.n_layers),
        "token2wav_vae": PaperModel("token2wav_vae", lambda L: WaveVAE(vae_cfg.replace(dec_layers=L)),
                                    lambda b, t: (0.1 * torch.randn(b, t * vae_cfg.hop * math.prod(vae_cfg.down)), {},
                                                  torch.ones(b, t, dtype=torch.bool)),
                                    vae_cfg.dec_layers, velocity=False),
    }


def count_parameters(model: PaperModel, n_layers: int | None = None) -> int:
    """Parameters of ``model`` at ``n_layers`` (default: the paper depth), built on the meta device (no memory;
    a network whose constructor computes tensors from data, e.g. a mel filterbank, is built on CPU instead)."""
    L = model.n_layers if n_layers is None else n_layers
    try:
        with torch.device("meta"):
            net = model.build(L)
    except (NotImplementedError, RuntimeError):  # meta tensors have no data to compute with
        net = model.build(L)
    return sum(p.numel() for p in net.parameters())


def _flops(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def _step(model: PaperModel, net: nn.Module, b: int, t: int, objective: str) -> Callable[[], None]:
    """One training step's compute (no optimizer): ``objective`` in fwd | cfm | meanflow | plain."""
    z_1, cond, mask = model.batch(b, t)
    g = torch.Generator().manual_seed(0)

    def run() -> None:
        if objective == "fwd":
            with torch.no_grad():
                net(z_1, t=torch.rand(b, generator=g), cond=cond) if model.velocity else net(z_1)
            return
        if objective == "cfm":
            loss, _ = cfm_loss(net, z_1, cond, mask, CFMConfig(), generator=g)
        elif objective == "meanflow":
            loss, _ = meanflow_loss(net, z_1, cond, mask, MeanFlowConfig(), generator=g)
        else:  # a plain network: output energy as a stand-in loss (the STFT losses are not counted)
            out = net(z_1)
            loss = sum(o.float().pow(2).mean() for o in (out if isinstance(out, tuple) else (out,)))
        loss.backward()
    return run


def per_sample_flops(model: PaperModel, objective: str, lengths: tuple[int, int, int] = (32, 64, 96),
                     batch: int = 2) -> Callable[[int, int], float]:
    """Counted FLOPs of one sample's ``objective`` step as a function ``(n_layers, T) -> FLOPs``
    (exact quadratic fit in T at 1 and 2 layers, linear in layers)."""
    coef = []
    for L in (1, 2):
        torch.manual_seed(0)
        net = model.build(L)
        if objective == "meanflow":
            net = type(net)(net.config.replace(mean_flow=True))
        ys = [_flops(_step(model, net, batch, t, objective)) / batch for t in lengths]
        coef.append(np.polyfit(np.asarray(lengths, float), np.asarray(ys), 2))
    a, d = coef[0], coef[1] - coef[0]
    return lambda L, T: float(np.polyval(a, T) + (L - 1) * np.polyval(d, T))


def expected_substeps(cfg: IMFConfig, n: int = 200_000) -> float:
    """Mean teacher sub-steps per sample of the IntMeanFlow interval sampler (Monte Carlo, seeded)."""
    t, r = sample_intervals(n, cfg, torch.Generator().manual_seed(0))
    return float(substep_counts(t, r, cfg).double().mean())


def estimate_paper(util: float = UTILISATION, peak_tflops: float = A100_BF16_TFLOPS, name: str = "paper") -> pd.DataFrame:
    """One row per training stage of profile ``name``: parameters, FLOPs/step at the paper sizes,
    steps and ESTIMATED hours on one GPU of ``peak_tflops`` at utilisation ``util`` (see module docstring)."""
    P, M = profile(name), paper_models(name)
    rate = util * peak_tflops * 1e12
    imf_cfg, t2w_imf = IMFConfig(**P["imf"]), IMFConfig(**P["token2wav"]["imf"])
    T_mel, B = P["data"]["max_frames"], P["teacher_train"]["batch_size"]
    voc_T = int(round(P["vocoder"]["seg_seconds"] * 16_000 / 256))
    t2w = P["token2wav"]
    lat_T = t2w["data"]["max_frames"]
    f5_B = F5_BATCH_FRAMES // F5_MAX_FRAMES
    rows = []

    def add(stage, model, b, t, steps, fb, fwd_teacher=0.0, note=""):
        m = M[model]
        flops = b * (fb(m.n_layers, t) + fwd_teacher)
        rows.append({"stage": stage, "model": model, "params_M": count_parameters(m) / 1e6, "batch": b, "frames": t,
                     "steps": steps, "TFLOP_per_step": flops / 1e12, "hours_est": steps * flops / rate / 3600, "note": note})

    t2m_cfm, t2m_fwd = per_sample_flops(M["token2mel"], "cfm"), per_sample_flops(M["token2mel"], "fwd")
    t2m_mf = per_sample_flops(M["token2mel"], "meanflow")
    n_t2m = expected_substeps(imf_cfg)
    L = M["token2mel"].n_layers
    add("00_vocoder", "vocoder", P["vocoder"]["train"]["batch_size"], voc_T, P["vocoder"]["train"]["steps"],
        per_sample_flops(M["vocoder"], "plain"), note="generator only; STFT losses not counted")
    add("01_teacher (CFM)", "token2mel", B, T_mel, P["teacher_train"]["steps"], t2m_cfm)
    add("02_distill (IntMeanFlow)", "token2mel", P["student_train"]["batch_size"], T_mel, P["student_train"]["steps"],
        t2m_cfm, 2 * n_t2m * t2m_fwd(L, T_mel), note=f"+ 2 x E[n]={n_t2m:.2f} guided teacher forwards")
    add("05 MeanFlow baseline (JVP)", "token2mel", P["student_train"]["batch_size"], T_mel, P["meanflow_train"]["steps"],
        t2m_mf)
    f5_cfm, f5_fwd = per_sample_flops(M["f5_text2mel"], "cfm"), per_sample_flops(M["f5_text2mel"], "fwd")
    L5 = M["f5_text2mel"].n_layers
    add("F5 IntMeanFlow (python -m imf.train.f5)", "f5_text2mel", f5_B, F5_MAX_FRAMES, P["student_train"]["steps"],
        f5_cfm, 2 * n_t2m * f5_fwd(L5, F5_MAX_FRAMES), note=f"{F5_BATCH_FRAMES} frames/batch; teacher 2 x E[n]={n_t2m:.2f}")
    vae_steps, vae_B = t2w["vae_train"]["steps"], t2w["vae_train"]["batch_size"]
    add("07 Token2Wav VAE", "token2wav_vae", vae_B, t2w["data"]["seg_frames"], vae_steps,
        per_sample_flops(M["token2wav_vae"], "plain", lengths=(8, 16, 24)), note="waveform segments; STFT losses not counted")
    dit_cfm, dit_fwd = per_sample_flops(M["token2wav_dit"], "cfm"), per_sample_flops(M["token2wav_dit"], "fwd")
    n_t2w = expected_substeps(t2w_imf)
    add("07 Token2Wav flow teacher (CFM)", "token2wav_dit", t2w["fm_train"]["batch_size"], lat_T, t2w["fm_train"]["steps"], dit_cfm)
    add("07 Token2Wav IntMeanFlow", "token2wav_dit", t2w["imf_train"]["batch_size"], lat_T, t2w["imf_train"]["steps"],
        dit_cfm, 2 * n_t2w * dit_fwd(M["token2wav_dit"].n_layers, lat_T), note=f"+ 2 x E[n]={n_t2w:.2f} teacher forwards")
    df = pd.DataFrame(rows)
    df.attrs.update(util=util, peak_tflops=peak_tflops)
    return df
