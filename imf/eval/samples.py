"""Generated outputs kept on disk, so a notebook does not sample again what an earlier one sampled.

Sampling is deterministic given the model's weights, the time grid, the solver and the evaluation set's noise and
conditioning, so those are the key: :meth:`SampleCache.key` hashes the model's state dict (through
:class:`imf.flow.solvers.Guided` wrappers, with their guidance scale), the grid's float64 values, the solver, and
every tensor of the :class:`imf.eval.evalset.EvalSet` that sampling reads (``z_0``, ``cond``, ``mask``). A model
that is not an ``nn.Module`` (a plain function) has no key and is never cached. Under ``torchrun`` nothing is
cached (each process samples its own block).

An entry is one file ``<key>.pt``: the output (N, C, T) as sampled, the model calls and the seconds the sampling
took when it ran (a cached row reports that original time). Files are written atomically; a damaged one is
ignored and rewritten::

    cache = SampleCache(runs_dir("small") / "samples")
    x, nfe, seconds = generate(model, es, grid, cache=cache)   # imf.eval.sweep
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from imf.core import distributed
from imf.core.checkpoints import module_fingerprint, tensors_fingerprint
from imf.core.runtime import atomic_torch_save
from imf.eval.evalset import EvalSet
from imf.flow.solvers import Guided

FORMAT = 1


def model_key(model: Callable[..., Tensor],
              fingerprint: Callable[[nn.Module], str] = module_fingerprint) -> str | None:
    """What determines a velocity model's outputs: its weights, through guidance wrappers; None for a plain function."""
    if isinstance(model, Guided):
        inner = model_key(model.model, fingerprint)
        return None if inner is None else f"guided(w={model.w!r})/{inner}"
    if isinstance(model, nn.Module):
        return f"{type(model).__name__}/{fingerprint(model)}"
    return None


def eval_set_key(es: EvalSet) -> str:
    """sha256 of the evaluation set's ids and of every tensor sampling reads (noise, conditioning, mask)."""
    return tensors_fingerprint([("z_0", es.z_0), ("mask", es.mask)] + sorted(es.cond.items()), "\n".join(es.ids))


def _weights_state(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Each state tensor's storage address and in-place version counter: changes whenever a weight can have."""
    return tuple((v.data_ptr(), v._version) for v in model.state_dict().values())


class SampleCache:
    """A folder of generated outputs keyed by model weights, grid, solver and evaluation set (module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = self.misses = 0
        self._es_keys: dict[int, tuple[EvalSet, str]] = {}
        self._fingerprints: dict[int, tuple[nn.Module, tuple[tuple[int, int], ...], str]] = {}

    def _fingerprint(self, model: nn.Module) -> str:
        """:func:`module_fingerprint`, hashed again only when a weight was replaced or modified in place (a sweep
        calls :meth:`key` once per point: a large teacher's state dict is not re-hashed each time)."""
        state, held = _weights_state(model), self._fingerprints.get(id(model))
        if held is None or held[0] is not model or held[1] != state:
            held = self._fingerprints[id(model)] = (model, state, module_fingerprint(model))
        return held[2]

    def key(self, model: Callable[..., Tensor], es: EvalSet, time_grid: Tensor, method: str) -> str | None:
        """The entry's name, or None when the model cannot be keyed or processes shard the set."""
        mk = model_key(model, self._fingerprint)
        if mk is None or distributed.active():
            return None
        held = self._es_keys.get(id(es))
        if held is None or held[0] is not es:
            held = self._es_keys[id(es)] = (es, eval_set_key(es))
        grid = torch.as_tensor(time_grid, dtype=torch.float64).flatten()
        h = hashlib.sha256(f"format={FORMAT}\n{mk}\n{method}\n{held[1]}\n".encode())
        h.update(grid.numpy().tobytes())
        return h.hexdigest()[:32]

    def get(self, key: str | None) -> tuple[Tensor, int, float] | None:
        """(x, nfe, seconds) of an entry, or None (no key, no entry, or an unreadable one)."""
        path = None if key is None else self.root / f"{key}.pt"
        if path is None or not path.is_file():
            self.misses += key is not None
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            out = entry["x"], int(entry["nfe"]), float(entry["seconds"])
        except Exception:  # damaged (e.g. a disk filled mid-write before atomic writes): sample again
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str | None, x: Tensor, nfe: int, seconds: float) -> None:
        if key is not None:
            atomic_torch_save({"x": x.detach().cpu().contiguous(), "nfe": int(nfe), "seconds": float(seconds)},
                              self.root / f"{key}.pt")
