"""One call from text + reference audio to a waveform with an F5-TTS teacher or its few-step student.

``speak_f5(model, text, ref_audio, ref_text, nfe=3)`` does what F5-TTS's inference does, with our
sampler: the reference is loaded, made mono, RMS-raised to 0.1 if quieter, turned into F5's mel;
the transcript is ``ref_text`` (with F5's pause appended) + ``text`` through F5's tokenizer; the
total length follows F5's rule (prompt frames scaled by the text's UTF-8 length); the prompt mel
is the infilling condition; :func:`imf.flow.solvers.sample` integrates from seeded noise; the
prompt frames are cut and the rest vocoded.

Defaults: a student (``config.mean_flow``) runs unguided on the uniform grid (its jump rule);
a teacher runs as F5 does, guided with ``w = 3`` (F5's ``cfg_strength`` s = 2, ``w = s + 1``)
on F5's EPSS+sway grid. Vocoder: a local Vocos checkpoint folder (``config.yaml`` +
``pytorch_model.bin``, the ``vocos`` package) if given, else Griffin-Lim — the result says which.

:func:`make_f5_eval_set` builds a fixed-noise infilling :class:`~imf.eval.evalset.EvalSet` from F5
data, so :func:`imf.eval.sweep.nfe_sweep`, ``grid_metric`` and O3S run on F5 models unchanged.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn

from imf.core.checkpoints import load_model
from imf.data.f5_text import F5Text, estimate_frames, f5_mel, infill_cond, prompt_text_with_pause, read_audio, span_mask
from imf.eval.evalset import EvalSet
from imf.flow.schedules import F5_CFG_STRENGTH, epss_f5, uniform, validate_grid
from imf.flow.solvers import Guided, sample
from imf.models.backbones.f5 import F5Backbone, F5Config

TARGET_RMS = 0.1  # F5-TTS raises quieter references to this RMS and scales the output back


class F5GriffinLim(nn.Module):
    """F5 log mel (B, n_mels, N) -> wav (B, (N - 1) hop): least-squares inverse of F5's HTK, unnormalised
    filterbank, then Griffin-Lim (64 iterations, momentum 0.99, zero initial phase: deterministic)."""

    def __init__(self, cfg: F5Config = F5Config(), n_iter: int = 64):
        super().__init__()
        self.cfg, self.n_iter = cfg, n_iter
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=cfg.n_fft // 2 + 1, n_mels=cfg.mel_dim, sample_rate=cfg.sample_rate, norm=None, mel_scale="htk")
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)

    @torch.inference_mode()
    def forward(self, mel: Tensor) -> Tensor:
        c = self.cfg
        mag = self.inverse_mel(torch.exp(mel.float()) * (mel > math.log(1e-5) + 1e-6))
        return torchaudio.functional.griffinlim(
            mag, window=self.window, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length, power=1.0,
            n_iter=self.n_iter, momentum=0.99, length=(mel.shape[-1] - 1) * c.hop_length, rand_init=False)


def load_f5_vocoder(path: str | Path | None, cfg: F5Config = F5Config()) -> tuple[Any, str]:
    """``(vocode(mel (B, C, N)) -> wav (B, S), description)``: Vocos from a local folder, else Griffin-Lim."""
    if path is None:
        msg = ("griffin-lim (no Vocos checkpoint given: muffled, phasey audio; pass vocoder=<folder with "
               "config.yaml and pytorch_model.bin of charactr/vocos-mel-24khz>)")
        return F5GriffinLim(cfg).eval(), msg
    path = Path(path)
    files = [path / "config.yaml", path / "pytorch_model.bin"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"Vocos checkpoint folder {path}: missing {missing}")
    from vocos import Vocos

    voc = Vocos.from_hparams(str(files[0]))
    voc.load_state_dict(torch.load(files[1], map_location="cpu", weights_only=True))
    voc.eval()
    return (lambda mel: voc.decode(mel.float())), f"vocos ({path})"


@dataclasses.dataclass
class F5Speech:
    """The output of :func:`speak_f5`: ``wav`` (S,) at ``sample_rate``, the generated ``mel`` (C, N), and
    ``info`` (NFE, grid, guidance, vocoder, frames) — ``info["vocoder"]`` says whether Griffin-Lim was used."""
    wav: Tensor
    sample_rate: int
    mel: Tensor
    info: dict[str, Any]


@torch.no_grad()
def speak_f5(model: F5Backbone | str | Path, text: str, ref_audio: str | Path | tuple[Tensor, int], ref_text: str,
             nfe: int = 3, *, time_grid: Tensor | None = None, w: float | None = None, vocoder: str | Path | None = None,
             vocab: str | Path | None = None, speed: float = 1.0, seed: int = 0) -> F5Speech:
    """Synthesize ``text`` in the voice of ``ref_audio`` (whose transcript is ``ref_text``).

    ``model``: an :class:`F5Backbone` (teacher or student) or a checkpoint path (:func:`load_model`).
    ``nfe``: steps (1-3 for a student); ``time_grid`` overrides the default grid (e.g. an O3S grid).
    ``w``: our guidance (``v_u + w (v_c - v_u)``; F5's ``cfg_strength`` is ``w - 1``); default 1
    (none) for a student, 3 for a teacher. ``vocab``: default ``model.config.vocab``.
    """
    if not isinstance(model, nn.Module):
        model = load_model(model)
    if not isinstance(model, F5Backbone):
        raise TypeError(f"speak_f5: needs an F5Backbone, got {type(model).__name__}")
    cfg: F5Config = model.config
    student = bool(cfg.mean_flow)
    w = (1.0 if student else F5_CFG_STRENGTH + 1.0) if w is None else float(w)
    grid = validate_grid(time_grid) if time_grid is not None else (uniform(nfe) if student else epss_f5(nfe))
    tok = F5Text(vocab or cfg.vocab, cfg.tokenizer)
    p = next(model.parameters())

    wav, sr = read_audio(ref_audio) if isinstance(ref_audio, (str, Path)) else ref_audio
    wav = wav.float().reshape(-1)
    rms = wav.pow(2).mean().sqrt().item()
    if 0 < rms < TARGET_RMS:
        wav = wav * TARGET_RMS / rms
    if sr != cfg.sample_rate:
        wav = torchaudio.functional.resample(wav, sr, cfg.sample_rate)
    prompt = f5_mel(wav, cfg.sample_rate, cfg)  # (C, Np), Np = 1 + samples // hop
    ref_text = prompt_text_with_pause(ref_text)
    n_ref = wav.shape[-1] // cfg.hop_length  # F5 measures and cuts the reference in samples // hop frames
    n_p = prompt.shape[-1]
    ids = tok.ids([ref_text + text]).to(p.device)
    # CFM.sample's floor: at least the text / the prompt plus one frame
    n = max(estimate_frames(n_ref, ref_text, text, speed), max(int((ids != -1).sum()), n_p) + 1)

    cond_mel = torch.zeros(1, cfg.mel_dim, n, dtype=p.dtype, device=p.device)
    cond_mel[0, :, :n_p] = prompt.to(cond_mel)
    cond = {"cond_mel": cond_mel, "text": ids}
    g = torch.Generator().manual_seed(seed)
    z_0 = torch.randn(1, cfg.mel_dim, n, generator=g, dtype=torch.float64).to(cond_mel)
    velocity = model if w == 1.0 else Guided(model, w)
    x, calls = sample(velocity, z_0, grid.to(p.device), cond)
    x[:, :, :n_p] = cond_mel[:, :, :n_p]  # F5 pastes the prompt back, then cuts at samples // hop
    mel = x[0, :, n_ref:]
    vocode, voc_name = load_f5_vocoder(vocoder, cfg)
    if voc_name.startswith("griffin"):
        warnings.warn(f"speak_f5: vocoder = {voc_name}", stacklevel=2)
    out = vocode(mel[None].float().cpu())[0]
    if 0 < rms < TARGET_RMS:
        out = out * rms / TARGET_RMS
    info = {"model": cfg.model_name, "student": student, "nfe": len(grid) - 1, "model_calls": calls,
            "grid": [round(v, 6) for v in grid.tolist()],
            "guidance": "none (w = 1)" if w == 1.0 else f"w = {w:g} (F5 cfg_strength s = w - 1 = {w - 1:g})",
            "vocoder": voc_name, "prompt_frames": n_ref, "frames": n - n_ref, "seed": seed}
    return F5Speech(out, cfg.sample_rate, mel.cpu(), info)


class RawMel:
    """The ``corpus`` of an F5 :class:`EvalSet`: F5 mels are raw log mels, so (de)normalising is the identity."""

    def normalize(self, mel: Tensor) -> Tensor:
        return mel

    def denormalize(self, x: Tensor) -> Tensor:
        return x


def make_f5_eval_set(dataset, collate, n: int = 16, seed: int = 1234, frac: tuple[float, float] = (0.7, 1.0)) -> EvalSet:
    """A fixed infilling evaluation set for F5 models, usable by :mod:`imf.eval.sweep` and O3S unchanged.

    ``n`` items of ``dataset`` (:class:`~imf.data.f5_text.F5Dataset`) picked by a seeded shuffle,
    collated by ``collate`` (:func:`~imf.data.f5_text.make_collate`); one span per utterance
    (F5's 70-100 %) from the same seed is to be generated. ``EvalSet.mask`` is that span (the
    metrics look at generated frames only); ``cond`` holds F5's ``cond_mel`` / ``text`` /
    ``mask`` (valid frames); ``z_0`` is noise on every valid frame, as F5 starts from.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g)[:n].tolist()
    batch = collate([dataset[i] for i in order])
    span = span_mask(batch["lengths"], frac, batch["z_1"].shape[-1], g) & batch["mask"]
    z_0 = torch.randn(batch["z_1"].shape, generator=g) * batch["mask"][:, None]
    return EvalSet(list(batch["ids"]), batch["z_1"], span, infill_cond(batch["z_1"], batch["text"], batch["mask"], span),
                   z_0, RawMel(), [dataset.items[i][2] for i in order] if hasattr(dataset, "items") else [])
