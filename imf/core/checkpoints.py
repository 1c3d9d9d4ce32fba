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

import hashlib
import importlib
from pathlib import Path
from typing import Any, Callable, Iterable

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


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a workbench checkpoint (names the file)."""


def load_checkpoint(path: str | Path, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dict stored at ``path`` (on the CPU); errors name the file.

    ``require``: keys the caller needs; a file lacking one raises :class:`CheckpointError`
    saying which (and whether it looks like a bare ``state_dict``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file (a run folder's checkpoint is "
                              f"{path / 'checkpoints' / 'last.pt'})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file
        size = path.stat().st_size
        raise CheckpointError(f"checkpoint {path} ({size} bytes) cannot be read (truncated or not a torch "
                              f"file?): {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    missing = [k for k in require if k not in state]
    if missing:
        bare = state and all(isinstance(v, torch.Tensor) for v in state.values())
        what = (f"a bare state_dict ({len(state)} tensors, e.g. {next(iter(state))!r}), not a workbench "
                "checkpoint: save {model, model_class, model_config, ...} (see imf.train.trainer.Trainer.save)"
                if bare else f"a dict with keys {sorted(map(str, state))[:12]}")
        raise CheckpointError(f"checkpoint {path} lacks {missing}: it is {what}")
    return state


def load_weights(model: nn.Module, state_dict: dict[str, Any], path: str | Path, what: str = "model") -> None:
    """``model.load_state_dict(state_dict)`` with an error naming the file and the mismatching keys."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its {what!r} weights do not fit {type(model).__name__}: {e}") from e


def load_model(path: str | Path, ema: bool = True) -> nn.Module:
    """Rebuild a model from its checkpoint alone (EMA weights by default), in eval mode, frozen."""
    return model_from_state(load_checkpoint(path, require=("model_class", "model_config", "ema" if ema else "model")),
                            path, ema)


def model_from_state(state: dict[str, Any], path: str | Path, ema: bool = True) -> nn.Module:
    """:func:`load_model` on a checkpoint dict already read from ``path`` (named in errors)."""
    weights = "ema" if ema else "model"
    missing = [k for k in ("model_class", "model_config", weights) if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    if state["model_class"] not in MODELS:
        importlib.import_module("imf.models")  # the package that registers the workbench's networks
    cls = MODELS.get(state["model_class"], (None,))[0]
    stale = getattr(cls, "stale_checkpoint", None)  # a class may recognise checkpoints of a class it replaced
    if stale is not None and stale(state):
        raise CheckpointError(f"checkpoint {path}: {stale(state)}")
    try:
        model = build_model(state["model_class"], state["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild {state['model_class']!r} from its model_config: "
                              f"{e}") from e
    load_weights(model, state[weights], path, weights)
    return model.eval().requires_grad_(False)


def tensors_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]], salt: str = "") -> str:
    """sha256 (hex) of ``salt`` and named tensors, in the order given: names, dtypes, shapes and bytes."""
    h = hashlib.sha256(salt.encode())
    for name, v in tensors:
        a = v.detach().cpu().contiguous()
        h.update(f"{name}:{a.dtype}:{tuple(a.shape)}".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()


def module_fingerprint(model: nn.Module, salt: str = "") -> str:
    """:func:`tensors_fingerprint` of ``salt`` and a module's state dict sorted by name. Two modules with the
    same weights have the same fingerprint whatever their file or object."""
    return tensors_fingerprint(sorted(model.state_dict().items()), salt)
