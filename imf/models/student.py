"""IntMeanFlow's init strategy: turn any teacher with a time-embedding path into a student.

A student ``u(z_t, t, r)`` embeds ``r`` with the teacher's OWN time modules and mixes
``[e_t, e_r]`` back to the model width with a bias-free linear ``W`` initialised ``[I | 0]``,
applied after the time MLP. Hence ``W [e_t, e_r] = e_t`` exactly and the fresh student
equals the teacher bit for bit for every ``r``.

A model class supports this if its config has a ``mean_flow`` flag and, when set, the model
owns ``time_mix: nn.Linear(2D, D, bias=False)``.
"""
from __future__ import annotations

import torch
from torch import nn


def init_time_mix(time_mix: nn.Linear) -> None:
    """``W = [I | 0]``: (D, 2D)."""
    d = time_mix.out_features
    if time_mix.in_features != 2 * d or time_mix.bias is not None:
        raise ValueError(f"time_mix must be Linear(2D, D, bias=False), got {time_mix}")
    with torch.no_grad():
        time_mix.weight.zero_()
        time_mix.weight[:, :d].copy_(torch.eye(d))


def student_from_teacher(teacher: nn.Module) -> nn.Module:
    """A new mean-flow student of the teacher's class, starting from the teacher's weights.

    The student takes the teacher's device and dtype BEFORE the weights are copied, so a
    float64 teacher gives a float64 student equal to it bit for bit (not rounded to float32).
    """
    cfg = teacher.config
    if not hasattr(cfg, "mean_flow"):
        raise TypeError(f"{type(teacher).__name__}.config has no 'mean_flow' field: cannot add r")
    if cfg.mean_flow:
        raise ValueError("the model is already a mean-flow student")
    ref = next((p for p in teacher.parameters() if p.is_floating_point()), None)
    student = type(teacher)(cfg.replace(mean_flow=True))
    if ref is not None:
        student = student.to(device=ref.device, dtype=ref.dtype)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("time_mix.") for k in missing):
        raise RuntimeError(f"teacher/student mismatch: missing {missing}, unexpected {unexpected}")
    init_time_mix(student.time_mix)
    return student


def freeze(student: nn.Module, mode: str) -> list[nn.Parameter]:
    """``"none"``: train everything; ``"encoder"``: train only ``student.estimator_parameters()``.

    Returns the trainable parameters; the others get ``requires_grad=False``.
    """
    if mode == "none":
        params = list(student.parameters())
    elif mode == "encoder":
        params = list(student.estimator_parameters())
    else:
        raise ValueError(f"freeze must be 'none' or 'encoder', got {mode!r}")
    keep = {id(p) for p in params}
    for p in student.parameters():
        p.requires_grad_(id(p) in keep)
    return params
