"""The blind listening test in JupyterLab (ipywidgets) and the figure of its analysis.

:class:`ListeningTestUI` asks one rater the trials of a prepared
:class:`~imf.eval.listening_test.ListeningTest`, in that rater's seeded order, starting at the first
unanswered one; every answer is stored (atomically) before the next trial shows, so closing the
browser or restarting the kernel loses nothing. What the page shows never names a system: players
are "A" / "B" (CMOS) or "prompt speaker" / "sample" (SMOS), the audio comes from files with opaque
names, and the trial's condition ids stay in Python.

Keyboard (no Javascript, nothing to install): ipywidgets has no key events, so the panel has a
small text box (``imf-listen-key``); click it once, then each key typed there answers at once
(its ``continuous_update`` sends every keystroke to the kernel): CMOS ``1`` … ``7`` = -3 … +3,
SMOS ``1`` … ``5``. The box empties itself after each answer and keeps the focus, so a rater
types one digit per trial. Playing stays with the mouse (the browser's own audio controls; the
``<audio>`` element also takes space / arrow keys when it has the focus). ``ipyevents`` would add
real key events but is a separate JupyterLab extension; it is not needed.

Stable CSS classes (for browser tests; ``widget.add_class``):

========================  =====================================================================
``imf-listen-test``       the whole panel (VBox)
``imf-listen-progress``   "trial k of n" (HTML)
``imf-listen-question``   the question of the current trial (HTML)
``imf-listen-audio-a``    first player (Audio): A (CMOS) or the prompt speaker (SMOS)
``imf-listen-audio-b``    second player (Audio): B (CMOS) or the sample (SMOS)
``imf-cmos-buttons``      the CMOS answer row (HBox; hidden on SMOS trials)
``imf-cmos-answer``       each CMOS button; also ``imf-cmos-m3`` … ``imf-cmos-0`` … ``imf-cmos-p3``
``imf-smos-buttons``      the SMOS answer row (HBox; hidden on CMOS trials)
``imf-smos-answer``       each SMOS button; also ``imf-smos-1`` … ``imf-smos-5``
``imf-listen-key``        the one-key answer box (Text)
``imf-listen-status``     what was saved last / "all trials answered" / errors (HTML)
========================  =====================================================================

Saved views (:mod:`imf.viz.widgets`, one way for every panel): each answer button and the key box
carry ``imf-needs-kernel`` (disabled in an executed copy), and the note line under the panel is a
``imf-kernel-note`` (live: how to answer by key; saved: :data:`OFFLINE_NOTE`, that answers need a
running kernel).
"""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from imf.eval.listening_test import CMOS, CMOS_SCALE, SMOS, SMOS_SCALE, ListeningTest, Trial, next_trial
from imf.viz.plots import save_fig
from imf.viz.widgets import kernel_note, needs_kernel

__all__ = ["ListeningTestUI", "CMOS_WORDS", "plot_listening", "LIVE_NOTE", "OFFLINE_NOTE"]

CMOS_WORDS = {-3: "B much worse", -2: "B worse", -1: "B slightly worse", 0: "about the same",
              1: "B slightly better", 2: "B better", 3: "B much better"}
SMOS_WORDS = {1: "different speaker", 2: "probably different", 3: "unsure", 4: "probably same", 5: "same speaker"}
LIVE_NOTE = ("<small>Each answer is saved to <code>ratings.csv</code> as you give it (closing the page loses "
             "nothing). Keys: click the small box, then type 1–7 (CMOS) or 1–5 (SMOS).</small>")
OFFLINE_NOTE = ("<div class='imf-offline'>⚠ <b>Saved view</b>: answers are recorded by a running kernel, so the "
                "buttons here are disabled. Set <code>RATER</code> in the parameters cell and run the notebook "
                "(Run ▸ Run All Cells) to take the test.</div>"
                # this note says it once: no "disconnected" icon on every widget of the saved panel
                "<style>.imf-listen-test .jupyter-widgets-disconnected::before,"
                ".imf-listen-test.jupyter-widgets-disconnected::before{display:none}</style>")


def _cls(v: int) -> str:
    return f"imf-cmos-{'m' if v < 0 else 'p' if v > 0 else ''}{abs(v)}"


class ListeningTestUI:
    """One rater's session of ``test``. Widgets are public (tests drive them): ``audio_a``,
    ``audio_b``, ``cmos_buttons`` / ``smos_buttons`` ({answer: Button}), ``key`` (Text),
    ``progress``, ``question``, ``status``; ``widget`` is the panel. :meth:`answer` records one
    answer for the current trial (what the buttons and keys call)."""

    def __init__(self, test: ListeningTest, rater: str):
        import ipywidgets as W

        self.test, self.rater = test, rater
        self.trials: list[Trial] = test.trials(rater) if rater else []
        self.position: int | None = next_trial(self.trials, test.store.read(), rater) if rater else None
        self._shown_at = time.monotonic()
        self.progress, self.question, self.status = W.HTML(), W.HTML(), W.HTML()
        self.label_a, self.label_b = W.HTML(), W.HTML()
        self.audio_a = W.Audio(value=b"", format="wav", autoplay=False, controls=True)
        self.audio_b = W.Audio(value=b"", format="wav", autoplay=False, controls=True)
        self.cmos_buttons = {v: W.Button(description=f"{v:+d}" if v else "0", tooltip=CMOS_WORDS[v],
                                         layout=W.Layout(width="auto", min_width="56px")) for v in CMOS_SCALE}
        self.smos_buttons = {v: W.Button(description=str(v), tooltip=SMOS_WORDS[v],
                                         layout=W.Layout(width="auto", min_width="56px")) for v in SMOS_SCALE}
        self.key = W.Text(value="", placeholder="key", continuous_update=True, layout=W.Layout(width="64px"))
        for v, b in self.cmos_buttons.items():
            needs_kernel(b).add_class("imf-cmos-answer")
            b.add_class(_cls(v))
            b.on_click(lambda _b, v=v: self.answer(v))
        for v, b in self.smos_buttons.items():
            needs_kernel(b).add_class("imf-smos-answer")
            b.add_class(f"imf-smos-{v}")
            b.on_click(lambda _b, v=v: self.answer(v))
        needs_kernel(self.key).observe(self._on_key, names="value")
        self.cmos_row = W.HBox([W.HTML("<small>B much worse</small>"), *self.cmos_buttons.values(),
                                W.HTML("<small>B much better</small>")])
        self.smos_row = W.HBox([W.HTML("<small>different speaker</small>"), *self.smos_buttons.values(),
                                W.HTML("<small>same speaker</small>")])
        self.note = kernel_note(LIVE_NOTE, OFFLINE_NOTE)
        players = W.HBox([W.VBox([self.label_a, self.audio_a]), W.VBox([self.label_b, self.audio_b])],
                         layout=W.Layout(flex_flow="row wrap"))
        for w, c in ((self.progress, "imf-listen-progress"), (self.question, "imf-listen-question"),
                     (self.audio_a, "imf-listen-audio-a"), (self.audio_b, "imf-listen-audio-b"),
                     (self.cmos_row, "imf-cmos-buttons"), (self.smos_row, "imf-smos-buttons"),
                     (self.key, "imf-listen-key"), (self.status, "imf-listen-status")):
            w.add_class(c)
        self.widget = W.VBox([self.progress, self.question, players, self.cmos_row, self.smos_row,
                              W.HBox([W.HTML("answer key:&nbsp;"), self.key]), self.status, self.note])
        self.widget.add_class("imf-listen-test")
        self.show()

    @property
    def trial(self) -> Trial | None:
        return None if self.position is None else self.trials[self.position]

    def show(self) -> None:
        """Draw the current trial (or the end / no-rater state)."""
        t, n = self.trial, len(self.trials)
        self.cmos_row.layout.display = "flex" if t is not None and t.kind == CMOS else "none"
        self.smos_row.layout.display = "flex" if t is not None and t.kind == SMOS else "none"
        if t is None:
            self.audio_a.value = self.audio_b.value = b""
            self.label_a.value = self.label_b.value = self.question.value = ""
            self.progress.value = (f"<b>All {n} trials answered</b> by rater {html.escape(self.rater)}. Thank you!"
                                   if self.rater else "<b>No rater.</b> Set <code>RATER = \"your id\"</code> in the "
                                   "parameters cell and run the notebook in JupyterLab to take the test.")
            self.key.disabled = True
            return
        ratings = self.test.store.read()
        done = len(set(ratings.loc[ratings["rater"] == self.rater, "trial"]) & {x.key for x in self.trials})
        self.progress.value = (f"<b>Trial {self.position + 1} of {n}</b> · rater {html.escape(self.rater)} · "
                               f"{done} answered")
        if t.kind == CMOS:
            self.question.value = ("Listen to <b>A</b> and <b>B</b> (the same sentence). How does <b>B</b> "
                                   "compare with <b>A</b> in overall quality and naturalness? (keys 1–7 = -3 … +3)")
            self.label_a.value, self.label_b.value = "<b>A</b>", "<b>B</b>"
            self.audio_a.value, self.audio_b.value = self.test.wav(t.a, t.utt), self.test.wav(t.b, t.utt)
        else:
            self.question.value = ("How similar is the <b>sample</b>'s voice to the <b>prompt speaker</b>? "
                                   "Judge the speaker, not the quality. (keys 1–5)")
            self.label_a.value, self.label_b.value = "<b>prompt speaker</b>", "<b>sample</b>"
            self.audio_a.value, self.audio_b.value = self.test.wav("prompt", t.utt), self.test.wav(t.a, t.utt)
        self.key.disabled = False
        self._shown_at = time.monotonic()

    def answer(self, value: int) -> None:
        """Record ``value`` for the current trial (atomically, in ``ratings.csv``), then show the next."""
        t = self.trial
        if t is None:
            return
        try:
            self.test.answer(self.rater, t, value, time.monotonic() - self._shown_at)
        except (OSError, ValueError) as e:
            self.status.value = f"<span style='color:#b00'>not saved: {html.escape(str(e))}</span>"
            return
        self.status.value = (f"<small>saved trial {self.position + 1} ({t.kind.upper()} "
                             f"{f'{value:+d}' if t.kind == CMOS else value})</small>")
        self.position = next_trial(self.trials, self.test.store.read(), self.rater)
        self.show()

    def _on_key(self, change: Mapping[str, Any]) -> None:
        text = str(change["new"]).strip()
        if not text:
            return
        self.key.value = ""  # fires again with "", ignored above
        t = self.trial
        if t is None or not text[-1].isdigit():
            return
        k = int(text[-1])
        scale = CMOS_SCALE if t.kind == CMOS else SMOS_SCALE
        if 1 <= k <= len(scale):
            self.answer(scale[k - 1])

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = "ListeningTestUI: the blind listening test (needs a live kernel to record answers)"
        return bundle


def plot_listening(tables: Mapping[str, pd.DataFrame], path: str | Path | None = None, title: str = ""):
    """CMOS (vs the reference) and SMOS per condition with their intervals, side by side.
    ``tables``: :func:`imf.eval.listening_test.analyse`'s. Returns the saved path, or the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 + 0.45 * max(2, max(len(tables[k]) for k in (CMOS, SMOS)))))
    for ax, kind, ref, lim in ((axes[0], CMOS, 0.0, (-3, 3)), (axes[1], SMOS, None, (1, 5))):
        df = tables[kind]
        y = range(len(df))
        if len(df):
            ax.errorbar(df["mean"], y, xerr=[df["mean"] - df["lo"], df["hi"] - df["mean"]], fmt="o", capsize=3)
            ax.set_yticks(list(y), [f"{c} (n={n})" for c, n in zip(df["condition"], df["n"])], fontsize=8)
        else:
            ax.text(0.5, 0.5, "no ratings yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        if ref is not None:
            ax.axvline(ref, color="grey", lw=0.8, ls="--")
        ax.set_xlim(*lim)
        ax.set_xlabel(f"{kind.upper()} (95 % bootstrap interval over raters and utterances)", fontsize=8)
        ax.set_title("CMOS vs the reference (> 0: better)" if kind == CMOS else "SMOS: similarity to the prompt speaker",
                     fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_fig(fig, path) if path else fig
