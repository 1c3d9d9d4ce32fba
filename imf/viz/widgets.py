"""Widgets that need a live kernel, and what their saved form says when there is none.

A notebook executed by papermill keeps its widgets' last state in its metadata
(``application/vnd.jupyter.widget-state+json``, nbclient's ``store_widget_state``), so a reader
of the executed copy sees the panel as it was. Its controls, though, talk to a kernel that is
gone: a dropdown changed there does nothing. Widgets say so through two CSS classes
(``_dom_classes``, also usable in the browser and by tests):

* :data:`NEEDS_KERNEL` on every control whose change runs kernel code: in the saved state it
  is ``disabled``, so it cannot be changed silently to no effect;
* :data:`KERNEL_NOTE` on an ``ipywidgets.HTML`` status line: in the saved state its value is
  replaced by its ``placeholder`` (or :data:`OFFLINE_NOTE` when that is empty), e.g. "saved
  view: run the notebook to use the controls", while the live widget shows its own status.

:func:`mark_offline` applies both to a notebook's saved widget state; the pipeline calls it on
every executed copy (:func:`imf.runs.pipeline.run_notebook`). Other CSS classes of the house:
``imf-busy`` on a column being computed (see :mod:`imf.viz.listen`).
"""
from __future__ import annotations

from typing import Any

NEEDS_KERNEL = "imf-needs-kernel"  # a control whose change runs kernel code
KERNEL_NOTE = "imf-kernel-note"  # a status line: its placeholder is what the saved view says
BUSY = "imf-busy"  # a widget whose content is being computed
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"  # nbformat key of the saved widget state
OFFLINE_NOTE = ("<div class='imf-offline'>⚠ <b>Saved view</b>: the controls here need a running kernel and "
                "are disabled. Run the notebook (Run ▸ Run All Cells) to use them.</div>")

__all__ = ["NEEDS_KERNEL", "KERNEL_NOTE", "BUSY", "WIDGET_STATE", "OFFLINE_NOTE", "needs_kernel", "kernel_note",
           "saved_state", "mark_offline"]


def needs_kernel(widget: Any) -> Any:
    """Tag a control as needing a live kernel (disabled in the saved view); returns it."""
    widget.add_class(NEEDS_KERNEL)
    return widget


def kernel_note(live: str = "", offline: str = "") -> Any:
    """An ``ipywidgets.HTML`` status line showing ``live`` now and ``offline`` (default
    :data:`OFFLINE_NOTE`) in a saved copy once :func:`mark_offline` has run on it."""
    import ipywidgets as W

    note = W.HTML(value=live, placeholder=offline or OFFLINE_NOTE)
    note.add_class(KERNEL_NOTE)
    return note


def saved_state(nb: Any) -> dict[str, dict]:
    """``{model_id: {"model_name": ..., "state": {...}}}`` of a notebook's saved widget state
    (an nbformat notebook node; empty if it has none)."""
    return dict(nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {}))


def mark_offline(nb: Any) -> int:
    """Rewrite a notebook's saved widget state (in place) for a reader without a kernel:
    :data:`NEEDS_KERNEL` widgets disabled, :data:`KERNEL_NOTE` widgets showing their offline
    note. Returns how many widgets it changed."""
    changed = 0
    for model in saved_state(nb).values():
        state = model.get("state", {})
        classes = state.get("_dom_classes") or []
        if NEEDS_KERNEL in classes and "disabled" in state:
            state["disabled"] = True
            changed += 1
        if KERNEL_NOTE in classes:
            state["value"] = state.get("placeholder") or OFFLINE_NOTE
            changed += 1
    return changed
