"""Input checks at the models' public entry points; every error names the tensor.

``model(x, *, t, r=None, cond)`` of :class:`~imf.models.token2mel.Token2Mel` and
:class:`~imf.models.dit.DiT1D` (teachers and mean-flow students alike) calls
:func:`check_inputs` first:

* shapes: ``x`` (B, C, T); ``t`` and ``r`` (B,) floating; ``cond["tokens"]`` (B, T) integer,
  ``mask`` (B, T), ``prompt`` (B, C, Tp), ``prompt_mask`` (B, Tp), ``drop`` (B,);
* values: ``x``, ``t``, ``r`` and the prompt finite; ``0 <= t <= 1``; for a student
  ``t <= r <= 1`` (a teacher ignores ``r``); token ids in ``[0, n_tokens)``.

The value checks cost a few reductions (sums, min / max; a sum is finite iff every element
is) read back with ONE device-to-host copy per call; only when something looks wrong is the
input inspected again to say what (a sum that merely overflowed passes). Measured on the 2-core
CPU (torch 2.14, 1 thread, quiet machine): ~60 us per call, +3.4 % on a tiny-profile Token2Mel
forward (B 4, T 64, dim 32: 2.5 ms) and +0.1 % on a small-profile one (B 16, T 192, dim 192:
380 ms), so they are always on; ``with disabled(): ...`` switches them off (e.g. to time the
bare network).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping

import torch
from torch import Tensor


class InputError(ValueError):
    """A model input has the wrong shape, dtype or values (the message names the tensor)."""


_ENABLED = [True]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Skip :func:`check_inputs` / :func:`check_cond` inside the block (this process, all threads)."""
    before = _ENABLED[0]
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = before


def _shape(name: str, v: Tensor | None, want: tuple, what: str) -> None:
    if v is None:
        raise InputError(f"{name}: missing; expected {what}")
    if not isinstance(v, Tensor):
        raise InputError(f"{name}: expected a tensor {what}, got {type(v).__name__}")
    if tuple(v.shape) != want:
        raise InputError(f"{name}: expected shape {what} = {want}, got {tuple(v.shape)}")


def _time(name: str, v: Tensor, b: int) -> None:
    _shape(name, v, (b,), "(B,)")
    if not v.is_floating_point():
        raise InputError(f"{name}: expected a floating tensor, got {v.dtype}")


def check_inputs(x: Tensor, t: Tensor, r: Tensor | None, cond: Mapping[str, Tensor], *, channels: int,
                 n_tokens: int, mean_flow: bool) -> None:
    """Raise :class:`InputError` naming the first bad input of ``model(x, t=t, r=r, cond=cond)``.

    ``channels``: C of ``x`` and of the prompt; ``n_tokens``: the vocabulary (ids ``0 .. n_tokens - 1``);
    ``mean_flow``: a student, whose ``r`` (if given) must satisfy ``t <= r <= 1``.
    """
    if not _ENABLED[0]:
        return
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"x: expected shape (B, {channels}, T), got {got}")
    b, _, n = x.shape
    _time("t", t, b)
    check_r = mean_flow and r is not None
    if check_r:
        _time("r", r, b)
    if b == 0:  # an empty batch: nothing to reduce
        _cond_parts(cond, b, n, channels)
        return
    parts = [x.sum(), *t.aminmax()]
    if check_r:
        parts += [(r - t).min(), r.max()]
    parts += _cond_parts(cond, b, n, channels)
    x_sum, t_min, t_max, *rest = _read(parts, x.device)
    ok = math.isfinite(x_sum) and 0 <= t_min and t_max <= 1  # False for NaN
    if check_r:
        gap, r_max, *rest = rest
        ok = ok and gap >= 0 and r_max <= 1
    if not (ok and _cond_ok(rest, n_tokens)):
        _diagnose(x, t, r if check_r else None, cond, n_tokens)  # raises, unless a sum merely overflowed


def check_cond(cond: Mapping[str, Tensor], b: int, n: int, *, channels: int, n_tokens: int) -> None:
    """Shapes and values of ``cond`` alone (B rows, T frames), e.g. before caching its encodings."""
    if not _ENABLED[0]:
        return
    parts = _cond_parts(cond, b, n, channels)
    if not _cond_ok(_read(parts, parts[0].device), n_tokens):
        _diagnose(None, None, None, cond, n_tokens)


def _read(parts: list[Tensor], device: torch.device) -> list[float]:
    """Scalars -> Python floats with ONE device-to-host copy (float64 where the device has it)."""
    dtype = torch.float32 if device.type == "mps" else torch.float64
    return torch.stack([p.to(dtype) for p in parts]).tolist()


def _cond_parts(cond: Mapping[str, Tensor], b: int, n: int, channels: int) -> list[Tensor]:
    """Check the shapes of ``cond``; the scalars its value check needs: token min / max, prompt sum."""
    tokens = cond.get("tokens")
    _shape("cond['tokens']", tokens, (b, n), "(B, T)")
    if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
        raise InputError(f"cond['tokens']: expected integer ids, got {tokens.dtype}")
    if cond.get("mask") is not None:
        _shape("cond['mask']", cond["mask"], (b, n), "(B, T)")
    prompt = cond.get("prompt")
    if not isinstance(prompt, Tensor) or prompt.dim() != 3 or prompt.shape[:2] != (b, channels):
        got = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
        raise InputError(f"cond['prompt']: expected shape (B, {channels}, Tp) with B = {b}, got {got}")
    _shape("cond['prompt_mask']", cond.get("prompt_mask"), (b, prompt.shape[2]), "(B, Tp)")
    if cond.get("drop") is not None:
        _shape("cond['drop']", cond["drop"], (b,), "(B,)")
    if tokens.numel() == 0:
        return [torch.zeros((), device=tokens.device)] * 2 + [prompt.sum()]
    return [*tokens.aminmax(), prompt.sum()]


def _cond_ok(values: list[float], n_tokens: int) -> bool:
    tok_min, tok_max, prompt_sum = values
    return 0 <= tok_min and tok_max < n_tokens and math.isfinite(prompt_sum)


def _nonfinite(name: str, v: Tensor) -> None:
    bad = ~torch.isfinite(v)
    if bool(bad.any()):
        k = int(bad.sum())
        kinds = ", ".join(f"{int(m.sum())} {w}" for m, w in ((torch.isnan(v), "NaN"), (torch.isinf(v), "inf"))
                          if bool(m.any()))
        raise InputError(f"{name}: {k} non-finite value{'s' if k > 1 else ''} ({kinds}) of {v.numel()}")


def _diagnose(x: Tensor | None, t: Tensor | None, r: Tensor | None, cond: Mapping[str, Tensor],
              n_tokens: int) -> None:
    """Raise the :class:`InputError` that says which value check failed."""
    if x is not None:
        _nonfinite("x", x)
    if t is not None:
        _nonfinite("t", t)
        if bool((t < 0).any() | (t > 1).any()):
            raise InputError(f"t: must lie in [0, 1], got min {t.min().item():g}, max {t.max().item():g}")
    if r is not None:
        _nonfinite("r", r)
        if bool((r > 1).any()):
            raise InputError(f"r: must lie in [t, 1], got max {r.max().item():g}")
        if bool((r < t).any()):
            i = int(torch.nonzero(r < t)[0, 0])
            raise InputError(f"r: must be >= t (a student jumps forward from t to r), got r = {r[i].item():g} "
                             f"< t = {t[i].item():g} in row {i}")
    tokens = cond["tokens"]
    bad = (tokens < 0) | (tokens >= n_tokens)
    if bool(bad.any()):
        v = int(tokens[bad][0])
        raise InputError(f"cond['tokens']: id {v} out of range [0, {n_tokens}) ({int(bad.sum())} such ids); "
                         f"was the model trained on another vocabulary?")
    _nonfinite("cond['prompt']", cond["prompt"])
