"""Foreign networks as velocity models, and the IntMeanFlow init strategy applied to them.

A :class:`Backbone` wraps a foreign flow-matching network ``net`` (its code untouched) so it is
called like every model of the workbench::

    model(x, *, t, r=None, cond) -> v        x, v (B, C, T) channels first; t, r (B,)

with ``t = 0`` noise and ``t = 1`` data, and ``cond`` a dict of batch-first tensors in which
``cond["drop"]`` (B,) bool asks to drop ALL conditions of a row (classifier-free guidance's
null branch, as :class:`imf.flow.solvers.Guided` sets it). Hence ``Guided``, ``sample``, the
schedules, O3S, the IntMeanFlow and MeanFlow objectives and the evaluation work on it unchanged.

What a subclass provides (the protocol; :mod:`imf.models.backbones.f5` is the worked example):

* ``__init__(config)``: builds ``net`` from a frozen :class:`imf.core.config.Config` that has
  ``mean_flow: bool`` and ``time_embed: str`` (the attribute path, inside ``net``, of the module
  that maps the time (B,) to the embedding (B, D) the network is conditioned on), then calls
  ``super().__init__(net, config)``. The registry (``imf.core.checkpoints.register``) then
  rebuilds it from a checkpoint alone.
* ``drop_modes(cond, b) -> (B,) long``: each row's condition-dropping mode, 0 = keep everything;
  ``cond["drop"]`` must map to the network's own "null" condition.
* ``velocity(x, t, cond, mode) -> (B, C, T)``: ONE call of the foreign forward for rows sharing
  ``mode`` (foreign networks take condition dropping as a batch-level flag).

What the base class gives:

* per-row dropping: rows are grouped by mode, one foreign call per group, results put back in
  order (a guided batch of 2B rows is two foreign calls, as the foreign samplers do it);
* a state dict that IS the foreign network's (keys without a ``net.`` prefix), so a checkpoint
  of the adapter is the foreign checkpoint; a student adds one key, ``time_mix.weight``;
* the student (``config.mean_flow``): the time-embedding module embeds both ``t`` and ``r``;
  a forward hook replaces its output ``e_t`` by ``W [e_t, e_r]`` with ``W = Linear(2D, D,
  bias=False)`` initialised ``[I | 0]`` (:func:`imf.models.student.init_time_mix`), applied
  after the module (for F5-TTS: after its time MLP). ``W [e_t, e_r] = e_t`` exactly, so the
  fresh student equals the teacher bit for bit for every ``r``. ``r=None`` means ``r = t``.
  :func:`imf.models.student.student_from_teacher` works on it unchanged; :func:`make_student`
  also keeps the teacher's dtype.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from imf.models.student import init_time_mix

Cond = Mapping[str, Tensor]
MIX = "time_mix"  # name of the added W, the one key a student adds to the foreign state dict


def module_at(root: nn.Module, path: str) -> nn.Module:
    """The submodule of ``root`` at attribute path ``path`` (e.g. ``"time_embed"``), or an error naming it."""
    try:
        return root.get_submodule(path)
    except AttributeError as e:
        names = [n for n, _ in root.named_modules() if n and n.count(".") < 2]
        raise AttributeError(f"{type(root).__name__} has no module at {path!r} ({e}); modules: {names[:40]}") from None


def _transformed(*tensors: Tensor | None) -> bool:
    """True inside a ``torch.func`` transform (jvp, vmap, grad): some input is a wrapped tensor."""
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return wrapped is not None and any(a is not None and wrapped(a) for a in tensors)


def _flatten_keys(module: "Backbone", state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: ``<prefix>net.k -> <prefix>k`` (order kept)."""
    inner = prefix + "net."
    items = list(state_dict.items())
    state_dict.clear()
    for k, v in items:
        state_dict[prefix + k[len(inner):] if k.startswith(inner) else k] = v


def _nest_keys(module: "Backbone", state_dict: dict, prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: ``<prefix>k -> <prefix>net.k`` for every key not owned by the adapter."""
    for k in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + MIX + ".")]:
        state_dict[prefix + "net." + k[len(prefix):]] = state_dict.pop(k)


class Backbone(nn.Module):
    """Base of foreign-network adapters: ``model(x, *, t, r=None, cond) -> v`` (see module doc)."""

    def __init__(self, net: nn.Module, config: Any):
        super().__init__()
        for field in ("mean_flow", "time_embed"):
            if not hasattr(config, field):
                raise TypeError(f"{type(self).__name__}: its config {type(config).__name__} needs a {field!r} field")
        if hasattr(net, MIX):
            raise ValueError(f"{type(net).__name__} already has an attribute {MIX!r}: it would clash with the student's W")
        self.config = config
        self.net = net
        self.register_state_dict_post_hook(_flatten_keys)
        self.register_load_state_dict_pre_hook(_nest_keys)
        self._r: Tensor | None = None  # r of the foreign call in progress (student only)
        self.time_mix: nn.Linear | None = None
        embed = module_at(net, config.time_embed)
        if config.mean_flow:
            d = self.time_dim(embed)
            self.time_mix = nn.Linear(2 * d, d, bias=False)
            init_time_mix(self.time_mix)
            embed.register_forward_hook(self._mix_time)

    # -- what a subclass provides ----------------------------------------------------------
    def drop_modes(self, cond: Cond, b: int) -> Tensor:
        """(B,) long: 0 keep, 1 drop everything (``cond["drop"]``). Override for finer modes."""
        drop = cond.get("drop")
        return torch.zeros(b, dtype=torch.long) if drop is None else drop.to(torch.long).cpu()

    def velocity(self, x: Tensor, t: Tensor, cond: Cond, mode: int) -> Tensor:
        """ONE foreign call for rows sharing ``mode``: x (B, C, T), t (B,) -> (B, C, T)."""
        raise NotImplementedError

    def time_dim(self, embed: nn.Module) -> int:
        """D, the width of the time embedding (default: probe it with one time)."""
        p = next(embed.parameters())
        with torch.no_grad():
            return int(embed(torch.zeros(1, dtype=p.dtype, device=p.device)).shape[-1])

    # -- the velocity model ----------------------------------------------------------------
    def forward(self, x: Tensor, *, t: Tensor, r: Tensor | None = None, cond: Cond) -> Tensor:
        """x (B, C, T), t/r (B,) -> v (B, C, T); a teacher ignores ``r``, a student reads ``r=None`` as ``r = t``."""
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__}: x must be (B, C, T), got {tuple(x.shape)}")
        b = x.shape[0]
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"{type(self).__name__}: t must be (B,) = ({b},), got {tuple(t.shape)}")
        if self.time_mix is None:
            r = None
        elif r is None:
            r = t
        elif r.shape != (b,):
            raise ValueError(f"{type(self).__name__}: r must be (B,) = ({b},), got {tuple(r.shape)}")
        modes = self.drop_modes(cond, b)
        kinds = modes.unique().tolist()
        if len(kinds) == 1:
            return self._call(x, t, r, cond, kinds[0])
        outs, order = [], []
        for m in kinds:
            idx = torch.nonzero(modes == m, as_tuple=True)[0].to(x.device)
            sub = {k: v[idx] for k, v in cond.items()}
            outs.append(self._call(x[idx], t[idx], None if r is None else r[idx], sub, m))
            order.append(idx)
        return torch.cat(outs)[torch.argsort(torch.cat(order))]

    def _call(self, x: Tensor, t: Tensor, r: Tensor | None, cond: Cond, mode: int) -> Tensor:
        self._r = r
        # under torch.func transforms (MeanFlow's JVP) fused attention kernels have no forward-mode
        # derivative: fall back to the math implementation of scaled_dot_product_attention there
        ctx = sdpa_kernel(SDPBackend.MATH) if _transformed(x, t, r) else contextlib.nullcontext()
        try:
            with ctx:
                return self.velocity(x, t, cond, mode)
        finally:
            self._r = None

    def _mix_time(self, module: nn.Module, args: tuple, e_t: Tensor) -> Tensor | None:
        """Forward hook on the time-embedding module: ``e_t -> W [e_t, e_r]`` (student only)."""
        r = self._r
        if r is None:  # the foreign net called outside our forward: leave it alone
            return None
        if r.shape[0] != e_t.shape[0]:
            raise RuntimeError(f"{type(self).__name__}: the time embedding saw {e_t.shape[0]} rows but r has "
                               f"{r.shape[0]}; the foreign forward must embed the time once per row")
        e_r = module.forward(r)  # forward, not __call__: no recursion into this hook
        return self.time_mix(torch.cat([e_t, e_r], dim=-1))

    # -- helpers -----------------------------------------------------------------------------
    def foreign_state_dict(self) -> dict[str, Tensor]:
        """The foreign network's own state dict (a student's ``W`` left out)."""
        return self.net.state_dict()

    def extra_repr(self) -> str:
        return f"mean_flow={bool(self.config.mean_flow)}, time_embed={self.config.time_embed!r}"


def make_student(teacher: Backbone) -> Backbone:
    """The mean-flow student of ``teacher`` (same class, device and dtype), by the init strategy.

    Every weight is the teacher's; ``W = [I | 0]``. The result equals the teacher bit for bit
    for every ``r`` until it is trained.
    """
    if teacher.config.mean_flow:
        raise ValueError("make_student: the model is already a mean-flow student")
    p = next(teacher.parameters())
    student = type(teacher)(teacher.config.replace(mean_flow=True)).to(device=p.device, dtype=p.dtype)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith(MIX + ".") for k in missing):
        raise RuntimeError(f"make_student: teacher/student mismatch: missing {missing}, unexpected {unexpected}")
    init_time_mix(student.time_mix)
    return student.train(teacher.training)
