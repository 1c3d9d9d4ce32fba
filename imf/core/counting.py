"""Count what a model evaluates: rows (samples) and calls of its forward, by a hook (no wrapper to thread through)."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def count_rows(model: nn.Module, box: dict[str, int] | None = None) -> Iterator[dict[str, int]]:
    """Count the rows (``out.shape[0]``) and calls of every forward of ``model`` while the block runs, into
    ``box`` (created if None; its ``rows``/``calls`` are increased, so one box can span several blocks).
    A guided call of B samples is ONE call of 2B rows (:class:`imf.flow.solvers.Guided` batches both halves)."""
    box = {} if box is None else box
    box.setdefault("rows", 0)
    box.setdefault("calls", 0)

    def hook(_m, _args, _kwargs, out):
        box["rows"] += int(out.shape[0])
        box["calls"] += 1

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()
