"""F5-TTS's DiT (the ``f5-tts`` package, 1.1.x) as a velocity model of the workbench.

``F5Backbone(F5Config(...))`` builds the REAL ``f5_tts.model.DiT`` (imported lazily: install the
``f5`` extra) and calls its own forward. Layout and conditioning::

    model(x, *, t, r=None, cond) -> v          x, v (B, n_mels, N); t, r (B,); t = 0 noise -> 1 data

    cond["cond_mel"]  (B, n_mels, N) float   F5's masked-infilling condition: the known mel frames
                                               (the prompt), zeros where speech is to be generated
    cond["text"]      (B, Nt) long           F5 text ids (vocab indices, batch padding -1; F5 adds
                                               1 and fills up to N with its filler 0)
    cond["mask"]      (B, N) bool, optional  valid frames (F5's attention mask)
    cond["drop"]      (B,) bool, optional    drop audio prompt AND text: F5's null condition (CFG)
    cond["drop_audio"] / cond["drop_text"]   (B,) bool, optional: F5's finer flags
                                               (``drop_audio_cond`` / ``drop_text``)

F5 works in (B, N, mel); the adapter transposes. F5 writes guidance as ``pred + (pred - null) s``
(``cfg_strength`` s, default 2): that is ``Guided(model, w)`` with ``w = s + 1`` (default 3).

Checkpoints: :func:`read_f5_state_dict` reads F5's trainer files (``model_state_dict`` /
``ema_model_state_dict`` with ``ema_model.`` prefixes and ``initted`` / ``step`` entries) and
the released ``.safetensors``; :meth:`F5Backbone.from_f5` builds a teacher from a checkpoint +
model config name (``F5TTS_v1_Base``, ``F5TTS_Small``, ... read from the installed package) +
``vocab.txt``. The adapter's own state dict is the DiT's (a student adds ``time_mix.weight``),
so a student checkpoint written by :class:`imf.train.trainer.Trainer` loads with
:func:`imf.core.checkpoints.load_model` and its DiT part with F5-TTS's own code.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from imf.core.checkpoints import register
from imf.core.config import Config, ConfigError, require
from imf.models.backbones.adapter import MIX, Backbone

Cond = Mapping[str, Tensor]
AUDIO, TEXT = 1, 2  # bits of a row's drop mode
F5_MODELS = ("F5TTS_v1_Base", "F5TTS_Base", "F5TTS_Small", "F5TTS_v1_Small")  # configs shipped with f5-tts
_BOOKKEEPING = ("initted", "step")  # ema_pytorch counters stored beside the EMA weights
_CFM_ONLY = ("mel_spec.",)  # CFM's mel front end buffers (older checkpoints carry them)


def f5_dit_class() -> type[nn.Module]:
    """``f5_tts.model.DiT``, or an error saying how to install it."""
    try:
        from f5_tts.model import DiT
    except ImportError as e:
        raise ImportError(f"F5-TTS is not installed ({e}): pip install -e '.[f5]' (the f5-tts package)") from e
    return DiT


@dataclasses.dataclass(frozen=True)
class F5Config(Config):
    model_name: str = "F5TTS_v1_Base"  # the F5-TTS model config these shapes come from (a label; see from_f5)
    vocab: str = ""  # path of the vocab.txt whose line numbers the text ids are (recorded, not read here)
    tokenizer: str = "pinyin"  # F5's text tokenizer: "pinyin" | "char" | "custom" (how text becomes ids)
    # -- DiT shapes (f5_tts.model.DiT keyword arguments; defaults: F5TTS_v1_Base) --
    dim: int = 1024  # transformer width
    depth: int = 22  # DiT blocks
    heads: int = 16  # attention heads
    dim_head: int = 64  # width per head
    ff_mult: int = 2  # feed-forward expansion
    dropout: float = 0.1  # F5's dropout in attention and feed-forward (active in train mode only)
    mel_dim: int = 100  # mel bins
    text_num_embeds: int = 2545  # vocab size (lines of vocab.txt); the embedding has one more row (filler 0)
    text_dim: int = 512  # text embedding width
    text_mask_padding: bool = True  # mask filler/padding in the text ConvNeXt (v1 True, v0 False)
    text_embedding_average_upsampling: bool = False  # ZipVoice-style text upsampling (newer f5-tts only)
    qk_norm: str | None = None  # None | "rms_norm"
    conv_layers: int = 4  # ConvNeXtV2 blocks of the text encoder
    pe_attn_head: int | None = None  # heads with rotary position (None: all; F5TTS_Small: 1)
    attn_backend: str = "torch"  # F5's attention implementation ("torch" | "flash_attn")
    attn_mask_enabled: bool = False  # use the frame mask inside attention
    long_skip_connection: bool = False  # F5's optional long skip
    checkpoint_activations: bool = False  # recompute activations (memory)
    # -- mel front end the network was trained on (F5's "vocos" mel) --
    sample_rate: int = 24000  # Hz
    hop_length: int = 256  # samples per frame
    win_length: int = 1024  # STFT window
    n_fft: int = 1024  # FFT size
    mel_spec_type: str = "vocos"  # F5's mel type ("vocos" | "bigvgan")
    # -- the workbench's --
    time_embed: str = "time_embed"  # attribute path of the time-embedding module (the student's r goes there)
    mean_flow: bool = False  # True: student u(x, t, r) with W [e_t, e_r], W = [I | 0] at init

    def validate(self) -> None:
        require(self.dim > 0 and self.depth >= 1 and self.heads >= 1, "dim", "dim, depth, heads must be positive")
        require(self.text_num_embeds >= 1, "text_num_embeds", "must be >= 1 (the vocab size)")
        require(self.tokenizer in ("pinyin", "char", "custom", "byte"), "tokenizer", "pinyin | char | custom | byte")
        require(0.0 <= self.dropout < 1.0, "dropout", "must lie in [0, 1)")

    def dit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``f5_tts.model.DiT``; a non-default field it does not know raises."""
        params = inspect.signature(f5_dit_class().__init__).parameters
        names = ("dim", "depth", "heads", "dim_head", "ff_mult", "dropout", "mel_dim", "text_num_embeds", "text_dim",
                 "text_mask_padding", "text_embedding_average_upsampling", "qk_norm", "conv_layers", "pe_attn_head",
                 "attn_backend", "attn_mask_enabled", "long_skip_connection", "checkpoint_activations")
        out, defaults = {}, F5Config()
        for n in names:
            v = getattr(self, n)
            if n in params:
                out[n] = v
            elif v != getattr(defaults, n):
                raise ConfigError(f"parameter {n!r}: the installed f5_tts DiT has no such argument (value {v!r})")
        return out


def f5_model_config(name: str, vocab: str | Path, **overrides: Any) -> F5Config:
    """The :class:`F5Config` of F5-TTS's model config ``name`` (its YAML in the installed package).

    ``vocab``: the model's ``vocab.txt``; ``text_num_embeds`` is its number of lines, as F5's
    tokenizer counts them. ``overrides``: any F5Config field (e.g. a smaller ``depth``).
    """
    import importlib.resources

    import yaml

    f5_dit_class()
    path = importlib.resources.files("f5_tts") / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"f5_tts has no model config {name!r} ({path}); shipped: {F5_MODELS}")
    model = yaml.safe_load(path.read_text())["model"]
    if model.get("backbone", "DiT") != "DiT":
        raise ValueError(f"{path}: backbone {model.get('backbone')!r}; only F5's DiT is adapted here")
    arch = dict(model["arch"])
    arch["attn_backend"] = "torch" if arch.get("attn_backend") in (None, "sdpa", "torch") else arch["attn_backend"]
    mel = model.get("mel_spec", {})
    fields = {f.name for f in dataclasses.fields(F5Config)}
    unknown = sorted(set(arch) - fields)
    if unknown:
        raise ConfigError(f"{path}: arch keys {unknown} have no F5Config field")
    cfg = dict(arch, model_name=name, tokenizer=model.get("tokenizer", "pinyin"),
               sample_rate=mel.get("target_sample_rate", 24000), hop_length=mel.get("hop_length", 256),
               win_length=mel.get("win_length", 1024), n_fft=mel.get("n_fft", 1024),
               mel_dim=mel.get("n_mel_channels", 100), mel_spec_type=mel.get("mel_spec_type", "vocos"))
    vocab = Path(vocab)
    if not vocab.is_file():
        raise FileNotFoundError(f"vocab file {vocab} does not exist (F5-TTS's vocab.txt of this checkpoint)")
    cfg.update(vocab=str(vocab), text_num_embeds=len(read_vocab_lines(vocab)))
    cfg.update(overrides)
    return F5Config.from_dict(cfg)


def read_vocab_lines(path: str | Path) -> list[str]:
    """Tokens of an F5 ``vocab.txt``, one per line, as F5's tokenizer reads them (line i -> id i)."""
    with open(path, "r", encoding="utf-8") as f:
        return [line[:-1] if line.endswith("\n") else line for line in f]


@register(F5Config)
class F5Backbone(Backbone):
    """F5-TTS's DiT as ``model(x, *, t, r=None, cond) -> v`` (see module doc for ``cond``)."""

    def __init__(self, config: F5Config):
        net = f5_dit_class()(**config.dit_kwargs())
        super().__init__(net, config)

    def drop_modes(self, cond: Cond, b: int) -> Tensor:
        """(B,) long: bit 1 drop the audio prompt, bit 2 drop the text; ``drop`` sets both."""
        mode = torch.zeros(b, dtype=torch.long)
        for key, bits in (("drop_audio", AUDIO), ("drop_text", TEXT), ("drop", AUDIO | TEXT)):
            if cond.get(key) is not None:
                mode |= cond[key].to(torch.bool).cpu().long() * bits
        return mode

    def velocity(self, x: Tensor, t: Tensor, cond: Cond, mode: int) -> Tensor:
        b, c, n = x.shape
        cm, text = cond["cond_mel"], cond["text"]
        if cm.shape != x.shape:
            raise ValueError(f"cond['cond_mel'] must be (B, n_mels, N) = {tuple(x.shape)}, got {tuple(cm.shape)}")
        if text.dim() != 2 or text.shape[0] != b:
            raise ValueError(f"cond['text'] must be (B, Nt) with B = {b}, got {tuple(text.shape)}")
        mask = cond.get("mask")
        if mask is not None and int(mask.sum(1).max()) < n:
            # F5 sizes its text embedding by the longest masked row: a batch of rows that are all
            # shorter than N (a subset of a padded batch) gets one full-length copy of row 0,
            # dropped from the output (rows are independent, so the others are unchanged)
            x, cm, text, t = (torch.cat([a, a[:1]]) for a in (x, cm, text, t))
            mask = torch.cat([mask, torch.ones_like(mask[:1])])
            if self._r is not None:
                self._r = torch.cat([self._r, self._r[:1]])
        v = self.net(x=x.transpose(1, 2), cond=cm.transpose(1, 2), text=text, time=t, mask=mask,
                     drop_audio_cond=bool(mode & AUDIO), drop_text=bool(mode & TEXT))
        return v[:b].transpose(1, 2)

    def estimator_parameters(self) -> list[nn.Parameter]:
        """Everything but F5's text encoder (``freeze(model, "encoder")``)."""
        enc = {id(p) for p in self.net.text_embed.parameters()}
        return [p for p in self.parameters() if id(p) not in enc]

    @classmethod
    def from_f5(cls, checkpoint: str | Path, model: str | F5Config = "F5TTS_v1_Base", vocab: str | Path | None = None,
                ema: bool = True, **overrides: Any) -> "F5Backbone":
        """A frozen teacher from an F5-TTS checkpoint (``.pt`` trainer file or ``.safetensors``).

        ``model``: an F5-TTS model config name (with ``vocab``, the checkpoint's vocab.txt) or an
        :class:`F5Config`. ``ema``: the EMA weights of a trainer file (F5's inference default).
        """
        cfg = model if isinstance(model, F5Config) else f5_model_config(model, vocab or "", **overrides)
        net = cls(cfg)
        load_f5_weights(net, checkpoint, ema=ema)
        return net.eval().requires_grad_(False)


def read_f5_state_dict(path: str | Path, ema: bool = True) -> dict[str, Tensor]:
    """The DiT state dict stored in an F5-TTS checkpoint, with F5's key conventions undone.

    ``.safetensors``: a flat dict (released models). ``.pt``: F5's trainer file, a dict with
    ``ema_model_state_dict`` (``ema=True``) or ``model_state_dict``. Removed: the ``ema_model.``
    prefix, ema_pytorch's ``initted`` / ``step`` entries, CFM's ``mel_spec.*`` buffers, and
    CFM's ``transformer.`` prefix. What remains are the DiT's own keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"F5-TTS checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = dict(load_file(str(path), device="cpu"))
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"F5-TTS checkpoint {path} cannot be read: {e}") from e
        key = "ema_model_state_dict" if ema else "model_state_dict"
        if not isinstance(raw, dict) or key not in raw:
            have = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise KeyError(f"{path}: no {key!r} entry (F5 trainer format); found {have}")
        sd = dict(raw[key])
    out = {}
    for k, v in sd.items():
        k = k[len("ema_model."):] if k.startswith("ema_model.") else k
        if k in _BOOKKEEPING or any(k.startswith(p) for p in _CFM_ONLY):
            continue
        out[k[len("transformer."):] if k.startswith("transformer.") else k] = v
    return out


def load_f5_weights(model: F5Backbone, path: str | Path, ema: bool = True) -> None:
    """Load an F5-TTS checkpoint into ``model.net``; a missing, unexpected or misshapen key raises naming it."""
    sd = read_f5_state_dict(path, ema=ema)
    own = model.net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise KeyError(f"{path}: does not match F5 DiT {model.config.model_name!r}: missing keys {missing[:10]}"
                       f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                       f"{' ...' if len(unexpected) > 10 else ''}")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path}: shapes differ from F5 DiT {model.config.model_name!r}: {bad[:10]}")
    model.net.load_state_dict(sd)


def dit_state_dict_of(student_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """F5's own DiT state dict from an adapter state dict (drops the student's ``time_mix.weight``)."""
    return {k: v for k, v in student_state.items() if not k.startswith(MIX + ".")}
