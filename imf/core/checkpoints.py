"""Checkpoints: self-describing files and the one loader everything uses.

A checkpoint is a ``torch.save``d dict ``{model, ema, model_class, model_config, step,
optimizer, config, ...}`` written by :class:`imf.train.trainer.Trainer`; ``model_class``
names an entry of the model registry and ``model_config`` its config, so
:func:`load_model` rebuilds the network from the file alone.

The registry lives here (the bottom layer) and model classes add themselves with
:func:`register` (``imf.models`` does it for every network it defines), so loading a
checkpoint never needs the training package.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

# model class name -> (class, config class); filled by ``register`` (see imf/models/__init__.py)
MODELS: dict[str, tuple[type[nn.Module], type]] = {}


def register(config_cls: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: ``@register(Token2MelConfig) class Token2Mel(nn.Module)``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[cls.__name__] = (cls, config_cls)
        return cls

    return deco


def build_model(name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the class name and config dict stored in a checkpoint."""
    if name not in MODELS:
        importlib.import_module("imf.models")  # the package that registers the workbench's networks
    if name not in MODELS:
        raise KeyError(f"unknown model class {name!r}; known: {sorted(MODELS)}")
    cls, cfg_cls = MODELS[name]
    return cls(cfg_cls.from_dict(config))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict stored at ``path`` (on the CPU); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file
        raise RuntimeError(f"checkpoint {path} cannot be read: {e}") from e


def load_model(path: str | Path, ema: bool = True) -> nn.Module:
    """Rebuild a model from its checkpoint alone (EMA weights by default), in eval mode, frozen."""
    state = load_checkpoint(path)
    model = build_model(state["model_class"], state["model_config"])
    model.load_state_dict(state["ema" if ema else "model"])
    return model.eval().requires_grad_(False)
