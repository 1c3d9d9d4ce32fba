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

Tokens: :class:`PhoneTokenizer` resamples the corpus's frame-level phone alignment (62.5 Hz,
16 ms mel frames) to the latent rate (25 Hz) by majority vote over the mel frames whose
centres fall in each 40 ms latent frame (ties: the frame nearest the latent frame's centre).
It stands in for CosyVoice2's 25 Hz semantic tokens; any object with ``vocab_size(corpus)``
and ``tokens(corpus, id, n_frames) -> LongTensor (n_frames,)`` replaces it (:class:`Tokenizer`).

Speaker: a learned embedding of a PROMPT latent — the VAE latent of another utterance of the
same speaker, encoded and mean-pooled inside :class:`~imf.models.dit.DiT1D`. Chosen over a
speaker-id table (unseen speakers work from prompt audio alone) and over resemblyzer's
d-vector (which is also the SIM judge: conditioning on it would let the generator game SIM).

Randomness: every crop, prompt choice and noise draw inside an objective comes from the
trainer's generator, so a resumed run sees the same batches as an uninterrupted one.

Losses (no adversarial term on CPU, as the vocoder): ``mel_weight |LogMel(w^) - LogMel(w)|_1
+ stft_weight MRSTFT(w^, w)`` (+ ``kl_weight KL`` for the VAE). The flow objectives are
:func:`imf.flow.objectives.cfm_loss`, :func:`~imf.flow.objectives.meanflow_loss` and
:func:`~imf.flow.objectives.intmeanflow_loss`, unchanged.

Evaluation (:func:`make_eval_set`, :func:`synthesize_all`, :func:`score_systems`,
:func:`rtf_table`): whole test utterances, fixed noise, prompts from another test utterance
of the same speaker; judges of :mod:`imf.eval.judges` through
:class:`imf.eval.audio.AudioJudges`; RTF measured side by side in one process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from imf.core.config import Config, require
from imf.core.runtime import seed_everything
from imf.flow.objectives import CFMConfig, IMFConfig, MeanFlowConfig, cfm_loss, intmeanflow_loss, meanflow_loss
from imf.models.dit import DiT1D, DiTConfig
from imf.models.token2wav import Token2Wav
from imf.eval.systems import synthesize  # TODO(layout): T2W evaluation moves to imf.eval
from imf.models.student import freeze, init_time_mix, student_from_teacher
from imf.models.vae import VAEConfig, WaveVAE, kl_divergence
from imf.flow.solvers import Guided
from imf.core.checkpoints import load_model
from imf.train.trainer import TrainConfig, Trainer


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------
class Tokenizer(Protocol):
    """What the Token2Wav stages need from a tokenizer (swap in semantic tokens here)."""

    def vocab_size(self, corpus) -> int: ...

    def tokens(self, corpus, ident: str, n_frames: int | None = None) -> Tensor: ...


def resample_labels(labels: np.ndarray, src_hop: int, dst_hop: int, n_out: int) -> np.ndarray:
    """Frame labels at hop ``src_hop`` (frame k centred on sample ``k * src_hop``) -> ``n_out``
    labels at hop ``dst_hop`` (frame j covers samples ``[j dst_hop, (j + 1) dst_hop)``).

    Majority over the source frames whose centres fall in the window; a tie (or no source
    frame in the window) takes the source frame nearest the window centre. Indices past the
    end are clamped to the last source frame. (n_src,) -> (n_out,).
    """
    n_src = len(labels)
    out = np.empty(n_out, dtype=labels.dtype)
    for j in range(n_out):
        lo = -(-(j * dst_hop) // src_hop)  # ceil
        hi = -(-((j + 1) * dst_hop) // src_hop)
        seg = labels[np.clip(np.arange(lo, hi), 0, n_src - 1)]
        nearest = labels[min(n_src - 1, int(round((j + 0.5) * dst_hop / src_hop)))]
        if len(seg) == 0:
            out[j] = nearest
            continue
        vals, counts = np.unique(seg, return_counts=True)
        best = vals[counts == counts.max()]
        out[j] = best[0] if len(best) == 1 else nearest
    return out


@dataclasses.dataclass(frozen=True)
class PhoneTokenizer:
    """25 Hz phone tokens from the corpus alignments (see the module docstring).

    ``stride``: samples per token frame (the VAE's stride, 640 at 16 kHz -> 25 Hz).
    ``tokens(corpus, id, n_frames)`` -> LongTensor (n_frames,), default ``ceil(N / stride)``.
    """
    stride: int = 640

    def vocab_size(self, corpus) -> int:
        return int(corpus.n_tokens)

    def tokens(self, corpus, ident: str, n_frames: int | None = None) -> Tensor:
        frame_tokens = corpus.tokens(ident).numpy()
        if n_frames is None:
            n_frames = math.ceil(int(corpus.row(ident)["n_samples"]) / self.stride)
        hop = corpus.mel_config.hop_length
        return torch.from_numpy(resample_labels(frame_tokens, hop, self.stride, n_frames)).long()


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class T2WDataConfig(Config):
    seg_frames: int = 25  # latent frames per waveform training segment (VAE, fine-tuning): 25 = 1 s
    max_frames: int = 128  # generator training crop in latent frames (128 = 5.1 s: whole corpus utterances)
    prompt_frames: int = 50  # speaker-prompt crop in latent frames (2 s)
    max_utts: int = 0  # > 0: use only the first max_utts utterances of the split (tests)

    def validate(self) -> None:
        require(self.seg_frames >= 2, "seg_frames", "must be >= 2")
        require(self.max_frames >= 4, "max_frames", "must be >= 4")
        require(self.prompt_frames >= 2, "prompt_frames", "must be >= 2")
        require(self.max_utts >= 0, "max_utts", "must be >= 0")


class Utterances(torch.utils.data.Dataset):
    """Whole utterances of one split in memory, item ``i`` ->

    ``{"id", "wav": (T * stride,) zero-padded, "n_samples": int (before padding), "tokens": (T,),
    "speaker": str, "text": str}`` and, after :meth:`attach_latents`, ``"latent": (C, T)``
    (the VAE's standardised ``mu``). ``T = max(ceil(N / stride), min_frames)``.
    """

    def __init__(self, corpus, split: str, tokenizer: Tokenizer, stride: int, min_frames: int = 0,
                 max_utts: int = 0, ids: Sequence[str] | None = None):
        self.corpus, self.split, self.stride = corpus, split, stride
        self.tokenizer = tokenizer
        rows = corpus.split(split)
        if ids is not None:
            rows = rows[rows["id"].isin(set(ids))].set_index("id").loc[list(ids)].reset_index()
        if max_utts:
            rows = rows.iloc[:max_utts]
        if len(rows) == 0:
            raise ValueError(f"split {split!r} of {corpus.root} has no utterances")
        self.items: list[dict[str, Any]] = []
        for ident, speaker, text in zip(rows["id"], rows["speaker"], rows["text"]):
            wav = corpus.load_wav(ident).float()
            n = wav.numel()
            t = max(math.ceil(n / stride), min_frames)
            wav = torch.nn.functional.pad(wav, (0, t * stride - n))
            self.items.append({"id": str(ident), "wav": wav, "n_samples": n,
                               "tokens": tokenizer.tokens(corpus, str(ident), t), "speaker": str(speaker),
                               "text": str(text)})
        self.index = {it["id"]: i for i, it in enumerate(self.items)}
        self.latent_source: str | None = None  # fingerprint of the VAE that encoded the latents
        self.by_speaker: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            self.by_speaker.setdefault(it["speaker"], []).append(i)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]

    def prompt_candidates(self, i: int) -> list[int]:
        """Other utterances of item ``i``'s speaker in this split (itself if it is the only one)."""
        others = [k for k in self.by_speaker[self.items[i]["speaker"]] if k != i]
        return others or [i]

    @torch.no_grad()
    def attach_latents(self, vae: WaveVAE) -> "Utterances":
        """Encode every utterance (one at a time, whole) with ``vae``: ``item["latent"]`` (C, T) standardised.

        ``latent_source`` becomes a fingerprint of the VAE's weights; the generator and
        fine-tuning runs record it, so resuming one of them on latents of a different VAE is
        refused instead of silently mixing latent spaces.
        """
        vae = vae.eval()
        for it in self.items:
            mu, _ = vae.encode(it["wav"][None])
            it["latent"] = vae.normalize(mu)[0]
        self.latent_source = state_fingerprint(vae)
        return self


def state_fingerprint(model: nn.Module) -> str:
    """SHA-1 (16 hex digits) of a model's state dict: names, shapes and float32 bytes."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the items: objectives crop and pad them with the trainer's generator."""
    return list(items)


def _randint(hi: int, g: torch.Generator) -> int:
    """Uniform int in [0, hi] from ``g``."""
    return int(torch.randint(0, hi + 1, (1,), generator=g)) if hi > 0 else 0


def _pad_stack(tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """[(C, T_i)] or [(T_i,)] -> zero-padded (B, C, T) / (B, T) and a bool mask (B, T)."""
    lengths = torch.tensor([t.shape[-1] for t in tensors])
    n = int(lengths.max())
    out = tensors[0].new_zeros((len(tensors), *tensors[0].shape[:-1], n))
    for b, t in enumerate(tensors):
        out[b, ..., :t.shape[-1]] = t
    return out, torch.arange(n)[None] < lengths[:, None]


def prompt_of(data: Utterances, i: int, prompt_frames: int, g: torch.Generator | None) -> tuple[Tensor, str]:
    """A prompt latent (C, <= prompt_frames) of another utterance of item ``i``'s speaker.

    ``g`` given: random utterance and window; ``None``: deterministic per (item id) — for eval sets.
    """
    cands = data.prompt_candidates(i)
    if g is None:
        k = cands[zlib.crc32(data.items[i]["id"].encode()) % len(cands)]
        start = 0
    else:
        k = cands[_randint(len(cands) - 1, g)]
        start = None
    lat = data.items[k]["latent"]
    if start is None:
        start = _randint(lat.shape[-1] - prompt_frames, g)
    return lat[:, start:start + prompt_frames], data.items[k]["id"]


def generator_batch(data: Utterances, items: list[dict[str, Any]], cfg: T2WDataConfig,
                    g: torch.Generator) -> dict[str, Any]:
    """Random crops of at most ``max_frames`` latent frames + prompts -> padded batch.

    Returns ``x1`` (B, C, L) standardised latents, ``cond`` {tokens (B, L), mask (B, L), prompt
    (B, C, Lp), prompt_mask (B, Lp)}, ``starts`` / ``lengths`` (B,) frames, ``items``.
    """
    lat, tok, prompts, starts = [], [], [], []
    for it in items:
        t = it["latent"].shape[-1]
        f = _randint(t - cfg.max_frames, g)
        lat.append(it["latent"][:, f:f + cfg.max_frames])
        tok.append(it["tokens"][f:f + cfg.max_frames])
        prompts.append(prompt_of(data, data.index[it["id"]], cfg.prompt_frames, g)[0])
        starts.append(f)
    x1, mask = _pad_stack(lat)
    tokens, _ = _pad_stack(tok)
    prompt, prompt_mask = _pad_stack(prompts)
    return {"x1": x1, "cond": {"tokens": tokens, "mask": mask, "prompt": prompt, "prompt_mask": prompt_mask},
            "starts": torch.tensor(starts), "lengths": mask.sum(1), "items": items}


def segment_starts(lengths: Tensor, seg_frames: int, g: torch.Generator) -> list[int]:
    """A random first frame per utterance for a ``seg_frames`` segment inside its ``lengths`` frames."""
    out = []
    for n in lengths.tolist():
        if n < seg_frames:
            raise ValueError(f"an utterance of {n} latent frames is shorter than seg_frames={seg_frames}")
        out.append(_randint(n - seg_frames, g))
    return out


def wav_segments(items: list[dict[str, Any]], frame_starts: Sequence[int], offsets: Sequence[int], seg_frames: int,
                 stride: int) -> Tensor:
    """(B, seg_frames * stride) waveform segments; item b starts at latent frame ``offsets[b] + frame_starts[b]``."""
    segs = []
    for it, f, o in zip(items, frame_starts, offsets):
        s = (o + f) * stride
        segs.append(it["wav"][s:s + seg_frames * stride])
    return torch.stack(segs)


# ---------------------------------------------------------------------------------------------
# Waveform losses
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WaveLossConfig(Config):
    mel_weight: float = 1.0  # L1 between natural-log mels (the corpus LogMel) of output and target
    stft_weight: float = 1.0  # multi-resolution STFT loss (auraloss: spectral convergence + log |STFT|)
    kl_weight: float = 1e-3  # VAE only: KL(q(z|x) || N(0, I)), mean per latent element
    fft_sizes: tuple[int, ...] = (512, 1024, 2048)  # MR-STFT resolutions (auraloss defaults)
    hop_sizes: tuple[int, ...] = (50, 120, 240)
    win_lengths: tuple[int, ...] = (240, 600, 1200)

    def validate(self) -> None:
        require(self.mel_weight >= 0 and self.stft_weight >= 0 and self.kl_weight >= 0, "mel_weight",
                "weights must be >= 0")
        require(self.mel_weight + self.stft_weight > 0, "mel_weight", "one waveform loss weight must be > 0")
        require(len(self.fft_sizes) == len(self.hop_sizes) == len(self.win_lengths) >= 1, "fft_sizes",
                "fft_sizes, hop_sizes and win_lengths must have the same (non-zero) length")


class WaveLoss(nn.Module):
    """``loss(wav_hat, wav) -> {"loss", "mel_l1", "mrstft"}``; wav_hat, wav (B, N)."""

    def __init__(self, cfg: WaveLossConfig = WaveLossConfig(), mel_config=None):
        super().__init__()
        import auraloss

        from imf.data.features import LogMel, MelConfig

        self.cfg = cfg
        self.logmel = LogMel(mel_config or MelConfig())
        self.mrstft = auraloss.freq.MultiResolutionSTFTLoss(
            fft_sizes=list(cfg.fft_sizes), hop_sizes=list(cfg.hop_sizes), win_lengths=list(cfg.win_lengths))

    def forward(self, wav_hat: Tensor, wav: Tensor) -> dict[str, Tensor]:
        mel_l1 = (self.logmel(wav_hat) - self.logmel(wav)).abs().mean()
        mrstft = self.mrstft(wav_hat[:, None], wav[:, None])
        return {"loss": self.cfg.mel_weight * mel_l1 + self.cfg.stft_weight * mrstft, "mel_l1": mel_l1,
                "mrstft": mrstft}


def _logs(out: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Stage 1: the VAE
# ---------------------------------------------------------------------------------------------
class VAEObjective(nn.Module):
    """One random ``seg_frames`` segment per utterance -> encode, sample, decode -> wave loss + KL."""

    def __init__(self, loss_cfg: WaveLossConfig, seg_frames: int, mel_config=None):
        super().__init__()
        self.wave_loss, self.kl_weight, self.seg = WaveLoss(loss_cfg, mel_config), loss_cfg.kl_weight, seg_frames

    def forward(self, model: WaveVAE, items: list[dict[str, Any]], g: torch.Generator):
        stride = model.config.stride
        lengths = torch.tensor([it["wav"].numel() // stride for it in items])
        wav = wav_segments(items, segment_starts(lengths, self.seg, g), [0] * len(items), self.seg, stride)
        mu, logvar = model.encode(wav)
        eps = torch.randn(mu.shape, generator=g)
        wav_hat = model.decode(mu + torch.exp(0.5 * logvar) * eps)
        out = self.wave_loss(wav_hat, wav)
        out["kl"] = kl_divergence(mu, logvar)
        out["loss"] = out["loss"] + self.kl_weight * out["kl"]
        return out["loss"], _logs(out)


@torch.no_grad()
def latent_stats(vae: WaveVAE, data: Utterances) -> tuple[Tensor, Tensor, Tensor]:
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
              loss_cfg: WaveLossConfig = WaveLossConfig(), data_cfg: T2WDataConfig = T2WDataConfig(),
              data: Utterances | None = None, progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """Train (or resume) the waveform VAE, then store the latent statistics of the train split in
    its checkpoint (buffers ``latent_mean`` / ``latent_std`` of the model and its EMA).

    ``data``: the train :class:`Utterances` (built here with a :class:`PhoneTokenizer` if None).
    The trained VAE loads with ``load_model(run_dir / "checkpoints/last.pt")`` (EMA weights).
    """
    if data is None:
        data = Utterances(corpus, "train", PhoneTokenizer(model_cfg.stride), model_cfg.stride,
                          min_frames=data_cfg.seg_frames, max_utts=data_cfg.max_utts)
    seed_everything(train_cfg.seed)
    model = WaveVAE(model_cfg)
    objective = VAEObjective(loss_cfg, data_cfg.seg_frames, corpus.mel_config)
    trainer = Trainer(run_dir, model, objective, data, collate_items, train_cfg,
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
        trainer.save()
    return trainer, summary


# ---------------------------------------------------------------------------------------------
# Stage 2: latent generators (flow matching, MeanFlow) and the IntMeanFlow student
# ---------------------------------------------------------------------------------------------
def _require_latents(data: Utterances) -> None:
    if data.latent_source is None:
        raise ValueError("data has no latents: call data.attach_latents(vae) first")


def train_generator(data: Utterances, run_dir: str | Path, kind: str, model_cfg: DiTConfig = DiTConfig(),
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
    _require_latents(data)
    model_cfg = model_cfg.replace(latent_dim=int(data.items[0]["latent"].shape[0]),
                                  n_tokens=data.tokenizer.vocab_size(data.corpus), mean_flow=kind == "meanflow")
    seed_everything(train_cfg.seed)
    model = DiT1D(model_cfg)
    if kind == "meanflow":
        init_time_mix(model.time_mix)

    def objective(m, items, g):
        b = generator_batch(data, items, data_cfg, g)
        if kind == "fm":
            return cfm_loss(m, b["x1"], b["cond"], b["cond"]["mask"], cfm_cfg, g)
        return meanflow_loss(m, b["x1"], b["cond"], b["cond"]["mask"], mf_cfg, g)

    extra = {"objective": kind, "data": data_cfg.to_dict(), "corpus": str(data.corpus.root),
             "latents": data.latent_source}
    extra.update({"cfm": cfm_cfg.to_dict()} if kind == "fm" else {"meanflow": mf_cfg.to_dict()})
    trainer = Trainer(run_dir, model, objective, data, collate_items, train_cfg, extra_config=extra,
                      progress=progress, desc=f"Token2Wav generator ({kind})")
    return trainer, trainer.fit()


def distill_generator(data: Utterances, teacher_ckpt: str | Path, run_dir: str | Path,
                      train_cfg: TrainConfig = TrainConfig(), imf_cfg: IMFConfig = IMFConfig(),
                      data_cfg: T2WDataConfig = T2WDataConfig(), freeze_mode: str = "none",
                      progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """IntMeanFlow: a 1-step student of the FM generator in ``teacher_ckpt`` (init strategy,
    guided teacher rollouts of :func:`imf.flow.objectives.intmeanflow_loss`)."""
    _require_latents(data)
    seed_everything(train_cfg.seed)
    teacher = load_model(teacher_ckpt)
    student = student_from_teacher(teacher).train()
    params = freeze(student, freeze_mode)
    guided = Guided(teacher, imf_cfg.cfg_scale)

    def objective(m, items, g):
        b = generator_batch(data, items, data_cfg, g)
        return intmeanflow_loss(m, guided, b["x1"], b["cond"], b["cond"]["mask"], imf_cfg, g)

    trainer = Trainer(run_dir, student, objective, data, collate_items, train_cfg, params=params,
                      extra_config={"imf": imf_cfg.to_dict(), "data": data_cfg.to_dict(), "freeze": freeze_mode,
                                    "teacher": str(teacher_ckpt), "corpus": str(data.corpus.root),
                                    "latents": data.latent_source},
                      progress=progress, desc=f"Token2Wav IntMeanFlow student (N={imf_cfg.teacher_nfe})")
    return trainer, trainer.fit()


# ---------------------------------------------------------------------------------------------
# Stage 3: refinements (decoder-only, then joint)
# ---------------------------------------------------------------------------------------------
class RefineObjective(nn.Module):
    """Generate latents in ONE step for whole utterances, decode one random ``seg_frames``
    segment of each, compare with the real waveform segment.

    ``joint=False``: the generator runs under ``no_grad`` (decoder-only fine-tuning);
    ``joint=True``: gradients flow through the generator's 1-step output into it.
    """

    def __init__(self, data: Utterances, loss_cfg: WaveLossConfig, data_cfg: T2WDataConfig, joint: bool):
        super().__init__()
        self.data, self.data_cfg, self.joint = data, data_cfg, joint
        self.wave_loss = WaveLoss(loss_cfg, data.corpus.mel_config)

    def forward(self, model: Token2Wav, items: list[dict[str, Any]], g: torch.Generator):
        b = generator_batch(self.data, items, self.data_cfg, g)
        z_0 = torch.randn(b["x1"].shape, generator=g)
        with torch.set_grad_enabled(self.joint and torch.is_grad_enabled()):
            x = model.one_step(z_0, b["cond"])
        seg = self.data_cfg.seg_frames
        starts = segment_starts(b["lengths"], seg, g)
        x_seg = torch.stack([x[i, :, f:f + seg] for i, f in enumerate(starts)])
        wav = wav_segments(items, starts, b["starts"].tolist(), seg, model.vae.config.stride)
        out = self.wave_loss(model.decode(x_seg), wav)
        return out["loss"], _logs(out)


def finetune_decoder(data: Utterances, vae_ckpt: str | Path, generator_ckpt: str | Path, run_dir: str | Path,
                     train_cfg: TrainConfig = TrainConfig(), loss_cfg: WaveLossConfig = WaveLossConfig(),
                     data_cfg: T2WDataConfig = T2WDataConfig(),
                     progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """Decoder-only fine-tuning of the VAE decoder on latents of the FROZEN 1-step generator.

    The trained unit is a :class:`Token2Wav` (generator + VAE) so the result loads alone; only
    ``vae.decoder_parameters()`` are optimised, the generator (and encoder) keep their weights
    bit for bit (their EMA too: the EMA of an unchanged weight is that weight).
    """
    _require_latents(data)
    seed_everything(train_cfg.seed)
    system = Token2Wav.from_parts(load_model(vae_ckpt), load_model(generator_ckpt))
    system.requires_grad_(False)
    params = system.vae.decoder_parameters()
    for p in params:
        p.requires_grad_(True)
    trainer = Trainer(run_dir, system, RefineObjective(data, loss_cfg, data_cfg, joint=False), data, collate_items,
                      train_cfg, params=params,
                      extra_config={"stage": "decoder_ft", "wave_loss": loss_cfg.to_dict(), "data": data_cfg.to_dict(),
                                    "vae": str(vae_ckpt), "generator": str(generator_ckpt),
                                    "corpus": str(data.corpus.root), "latents": data.latent_source},
                      progress=progress, desc="Token2Wav decoder-only FT")
    return trainer, trainer.fit()


def finetune_joint(data: Utterances, system_ckpt: str | Path, run_dir: str | Path,
                   train_cfg: TrainConfig = TrainConfig(), loss_cfg: WaveLossConfig = WaveLossConfig(),
                   data_cfg: T2WDataConfig = T2WDataConfig(), progress: bool = True) -> tuple[Trainer, dict[str, Any]]:
    """Joint fine-tuning of generator + decoder (from a decoder-FT :class:`Token2Wav` checkpoint)
    through the generator's 1-step output, with the waveform loss; the encoder stays frozen."""
    _require_latents(data)
    seed_everything(train_cfg.seed)
    system = load_model(system_ckpt)
    system.requires_grad_(False)
    params = list(system.generator.parameters()) + system.vae.decoder_parameters()
    for p in params:
        p.requires_grad_(True)
    trainer = Trainer(run_dir, system, RefineObjective(data, loss_cfg, data_cfg, joint=True), data, collate_items,
                      train_cfg, params=params,
                      extra_config={"stage": "joint_ft", "wave_loss": loss_cfg.to_dict(), "data": data_cfg.to_dict(),
                                    "init": str(system_ckpt), "corpus": str(data.corpus.root),
                                    "latents": data.latent_source},
                      progress=progress, desc="Token2Wav joint FT")
    return trainer, trainer.fit()


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class T2WEvalSet:
    """Whole utterances with fixed noise; duck-types :class:`imf.eval.sweep.EvalSet` for
    :class:`imf.eval.audio.AudioJudges` (``corpus``, ``ids``, ``texts``, ``speakers``, ``prompt_ids``).

    cond: tokens (N, T), mask (N, T), prompt (N, C, Tp), prompt_mask (N, Tp); z_0 (N, C, T);
    n_samples: real length of each utterance; wavs: padded real audio (T_i * stride,).
    """
    ids: list[str]
    texts: list[str]
    speakers: Tensor
    prompt_ids: list[str]
    cond: dict[str, Tensor]
    z_0: Tensor
    n_samples: list[int]
    wavs: list[Tensor]
    corpus: Any

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def audio_seconds(self) -> float:
        return sum(self.n_samples) / self.corpus.sample_rate


def make_eval_set(data: Utterances, n: int, seed: int = 1234, prompt_frames: int = 50,
                  max_frames: int = 0) -> T2WEvalSet:
    """``n`` utterances of ``data`` (latents attached; whole, at most ``max_frames`` frames if > 0)
    by a seeded shuffle; prompts deterministic per id; noise from its own generator."""
    g = torch.Generator().manual_seed(seed)
    order = [i for i in torch.randperm(len(data), generator=g).tolist()
             if not max_frames or data.items[i]["tokens"].numel() <= max_frames][:n]
    if not order:
        raise ValueError("no utterance fits the eval set")
    items = [data.items[i] for i in order]
    prompts = [prompt_of(data, i, prompt_frames, None) for i in order]
    lat, mask = _pad_stack([it["latent"] for it in items])
    tokens, _ = _pad_stack([it["tokens"] for it in items])
    prompt, prompt_mask = _pad_stack([p[0] for p in prompts])
    z_0 = torch.randn(lat.shape, generator=g) * mask[:, None]
    corpus = data.corpus
    return T2WEvalSet(
        ids=[it["id"] for it in items], texts=[it["text"] for it in items],
        speakers=torch.tensor([corpus.speaker_id(it["speaker"]) for it in items]),
        prompt_ids=[p[1] for p in prompts],
        cond={"tokens": tokens, "mask": mask, "prompt": prompt, "prompt_mask": prompt_mask}, z_0=z_0,
        n_samples=[it["n_samples"] for it in items], wavs=[it["wav"] for it in items], corpus=corpus)


@dataclasses.dataclass
class T2WSystem:
    """A row of the table: a :class:`Token2Wav` sampled on ``time_grid`` (through ``model``, e.g. a
    guided wrapper of its generator, if given); ``oracle=True``: VAE reconstruction of the real audio."""
    name: str
    system: Token2Wav
    time_grid: Tensor | None = None
    model: Callable[..., Tensor] | None = None
    oracle: bool = False

    @property
    def nfe(self) -> int:
        return 0 if self.oracle else len(self.time_grid) - 1

    @torch.no_grad()
    def __call__(self, es: T2WEvalSet) -> Tensor:
        """Batched synthesis of the whole eval set -> padded wav (N, T * stride)."""
        if self.oracle:
            wav, _ = _pad_stack(es.wavs)
            vae = self.system.vae
            return vae.decode(vae.encode(wav)[0])
        return synthesize(self.system, es.z_0, es.cond, self.time_grid, self.model)


def synthesize_all(systems: Sequence[T2WSystem], es: T2WEvalSet) -> dict[str, list[Tensor]]:
    """name -> list of (n_samples_i,) waveforms, clamped to [-1, 1]."""
    out = {}
    for s in systems:
        s.system.eval()
        wav = s(es)
        out[s.name] = [wav[i, :n].float().clamp(-1, 1) for i, n in enumerate(es.n_samples)]
    return out


def score_systems(wavs: dict[str, list[Tensor]], es: T2WEvalSet, judges: Sequence[Any],
                  wer_speakers: Sequence[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """Judge every system's audio: (summary DataFrame one row per system, per-utterance tables).

    WER (if among the judges) only on ``wer_speakers`` (voices the ASR transcribes reliably).
    """
    import pandas as pd

    from imf.eval.audio import AudioJudges

    aj = AudioJudges(None, judges, wer_speakers)
    rows, tables = [], {}
    for name, ws in wavs.items():
        rows.append({"system": name, **aj.score_wavs(es, ws)})
        tables[name] = aj.last_table
    return pd.DataFrame(rows), tables


@torch.no_grad()
def rtf_table(systems: Sequence[T2WSystem], es: T2WEvalSet, repeats: int = 3):
    """Seconds per eval-set batch, side by side in one process: generator alone (``flow_s``) and
    end to end (``total_s``, latent generation + decoding), and real-time factors.

    Timing is interleaved: each of ``repeats`` rounds times every system once (after one
    warm-up round), and a system's time is its fastest round, so a burst of load from another
    process does not land on one row only.
    """
    import pandas as pd

    from imf.eval.speed import time_call
    from imf.flow.solvers import sample

    calls = {}
    for s in systems:
        s.system.eval()
        model = s.system.generator if s.model is None else s.model
        flow = None if s.oracle else (lambda s=s, model=model: sample(model, es.z_0, s.time_grid, es.cond))
        calls[s.name] = (flow, lambda s=s: s(es))
    times = {name: ([], []) for name in calls}
    for r in range(repeats + 1):
        for name, (flow, total) in calls.items():
            if flow is not None:
                times[name][0].append(time_call(flow, repeats=1, warmup=0))
            times[name][1].append(time_call(total, repeats=1, warmup=0))
    rows = []
    for s in systems:
        flow_t, total_t = (t[1:] for t in times[s.name])  # round 0 is the warm-up
        rows.append({"system": s.name, "nfe": s.nfe, "flow_s": min(flow_t) if flow_t else float("nan"),
                     "total_s": min(total_t)})
    df = pd.DataFrame(rows)
    df["rtf"] = df["total_s"] / es.audio_seconds
    df["rtf_flow"] = df["flow_s"] / es.audio_seconds
    return df


def ordering(df, column: str, names: Sequence[str], higher_is_better: bool) -> bool:
    """Whether ``column`` strictly improves along ``names`` (rows of ``df`` by ``system``)."""
    v = [float(df.set_index("system").loc[n, column]) for n in names]
    if any(math.isnan(x) for x in v):
        return False
    return all((b > a) if higher_is_better else (b < a) for a, b in zip(v, v[1:]))


def plot_spectrograms(wavs: dict[str, list[Tensor]], es: T2WEvalSet, index: int, path: str | Path,
                      table=None, columns: Sequence[str] = ()) -> Path:
    """Log-mel of utterance ``index`` for the reference and every system (one panel each) and,
    with ``table``, a bar chart per column of the systems' scores. Saved as PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from imf.data.features import LogMel
    from imf.core.runtime import atomic_path

    logmel = LogMel(es.corpus.mel_config)
    panels = [("reference", es.wavs[index][:es.n_samples[index]])] + [(k, v[index]) for k, v in wavs.items()]
    cols = [c for c in columns if table is not None and c in table]
    n_rows = len(panels) + (1 if cols else 0)
    fig = plt.figure(figsize=(10, 1.6 * n_rows + 0.5))
    for k, (name, w) in enumerate(panels):
        ax = fig.add_subplot(n_rows, 1, k + 1)
        with torch.no_grad():
            ax.imshow(logmel(w.float()).numpy(), origin="lower", aspect="auto", vmin=-11, vmax=2, cmap="magma")
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    if cols:
        gs = fig.add_gridspec(n_rows, len(cols))
        for j, c in enumerate(cols):
            ax = fig.add_subplot(gs[n_rows - 1, j])
            ax.bar(range(len(table)), table[c].astype(float).values, color="C0")
            ax.set_title(c, fontsize=8)
            ax.set_xticks(range(len(table)))
            ax.set_xticklabels([str(s)[:10] for s in table["system"]], rotation=60, fontsize=6)
    fig.suptitle(f"Token2Wav: {es.ids[index]}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def build_systems(vae_ckpt, fm_ckpt, mf_ckpt, imf_ckpt, decft_ckpt, joint_ckpt, fm_cfg_scale: float = 2.0,
                  fm_nfe: int = 10, fm_schedule: str = "uniform") -> list[T2WSystem]:
    """The table's six rows from the stages' checkpoints (EMA weights)."""
    from imf.flow import schedules

    vae = load_model(vae_ckpt)
    fm = load_model(fm_ckpt)
    one = schedules.uniform(1)
    fm_sys = Token2Wav.from_parts(vae, fm)
    return [
        T2WSystem("VAE oracle", Token2Wav.from_parts(vae, fm), oracle=True),
        T2WSystem(f"FM {fm_nfe}-step", fm_sys, schedules.make_grid(fm_schedule, fm_nfe),
                  Guided(fm_sys.generator, fm_cfg_scale) if fm_cfg_scale != 1.0 else None),
        T2WSystem("MF No-FT", Token2Wav.from_parts(vae, load_model(mf_ckpt)), one),
        T2WSystem("MF Decoder-FT", load_model(decft_ckpt), one),
        T2WSystem("MF Joint-FT", load_model(joint_ckpt), one),
        T2WSystem("IMF-distilled (1 step)", Token2Wav.from_parts(vae, load_model(imf_ckpt)), one),
    ]
