"""Views of a listening :class:`~imf.eval.listen.Comparison`: hear and see every system side by side.

* :class:`ListeningPanel` (ipywidgets): an utterance dropdown and, per system that takes an
  NFE, an NFE dropdown; each column shows an audio player, the spectrogram (one colour scale
  for all columns of an utterance) and that utterance's scores. It shows at once and computes
  each (utterance, system, NFE) point the first time it is shown (busy column, disabled
  controls meanwhile); the comparison caches it, so toggling never recomputes what was seen
  once. The columns wrap in a CSS grid.
* :func:`static_comparison`: plain HTML (``<audio>`` players with base64 WAV, 16 kHz PCM16,
  never loudness-normalised) plus a spectrogram figure, for a few utterances: what a reader
  of an executed notebook copy sees and hears without a kernel.
* :func:`plot_comparison`: the spectrogram grid alone (one row per system point).
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch import Tensor

from imf.eval.metrics import higher_is_better
from imf.eval.listen import TRUTH, Comparison
from imf.viz.plots import save_fig
from imf.viz.widgets import BUSY, kernel_note, needs_kernel

__all__ = ["wav_bytes", "audio_tag", "scores_html", "plot_comparison", "ListeningPanel", "static_comparison"]


def wav_bytes(wav: Tensor | np.ndarray, sample_rate: int = 16_000) -> bytes:
    """Mono audio (N,) in [-1, 1] -> the bytes of a PCM16 WAV file (clipped, NOT normalised:
    loudness differences between systems are part of what one listens for)."""
    import soundfile as sf

    a = wav.detach().cpu().numpy() if isinstance(wav, Tensor) else np.asarray(wav)
    a = np.clip(np.asarray(a, dtype=np.float32).reshape(-1), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, a, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def _higher_is_better(comp: Comparison) -> dict[str, bool]:
    judges = comp.judges.judges if comp.judges is not None else []
    return {j.name: higher_is_better(j.name, default=getattr(j, "higher_is_better", True)) for j in judges}


def scores_html(comp: Comparison, name: str, nfe: int | None, utt: int | str, compact: bool = False) -> str:
    """The scores of one utterance as a small HTML table (or one line with ``compact``)."""
    row = comp.scores(name, nfe, utt)
    hib = _higher_is_better(comp)
    main = {k: v for k, v in row.items() if "." not in k}
    arrow = {k: (" ↑" if hib[k] else " ↓") for k in main if k in hib}
    extra = {k: v for k, v in row.items() if k.endswith(".hyp") and isinstance(v, str)}
    if compact:
        return " · ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in main.items())
    cells = "".join(f"<tr><td>{html.escape(k)}{arrow.get(k, '')}</td><td style='text-align:right'>{_fmt(v)}</td></tr>"
                    for k, v in main.items())
    hyp = "".join(f"<div style='font-size:85%'><i>{html.escape(k)}</i>: “{html.escape(v)}”</div>"
                  for k, v in extra.items())
    return f"<table style='font-size:90%'>{cells}</table>{hyp}"


def _spectrogram_png(mel: Tensor, vmin: float, vmax: float, width_in: float = 3.4, dpi: int = 80) -> bytes:
    """One log-mel (C, T) as PNG bytes (matplotlib Figure, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, 1.7), dpi=dpi)
    ax = fig.subplots()
    ax.imshow(mel.detach().cpu().numpy(), origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma",
              interpolation="nearest")
    ax.set_xlabel("frame (16 ms)", fontsize=7)
    ax.set_ylabel("mel bin", fontsize=7)
    ax.tick_params(labelsize=6)
    fig.tight_layout(pad=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_comparison(comp: Comparison, utts: Sequence[int | str], points: Sequence[tuple[str, int | None]],
                    path: str | Path | None = None, title: str = "", dpi: int = 80):
    """Spectrogram grid: one row per (system, NFE) point, one column per utterance, each
    column on its utterance's real colour scale (``dpi`` 80: about one pixel per frame, a small
    PNG to embed). Returns the saved path, or the figure."""
    import matplotlib.pyplot as plt

    idx = [comp.index(u) for u in utts]
    fig, axes = plt.subplots(len(points), len(idx), figsize=(3.6 * len(idx), 1.6 * len(points) + 0.4),
                             squeeze=False, sharey=True)
    for c, i in enumerate(idx):
        vmin, vmax = comp.colour_range(i)
        for r, (name, nfe) in enumerate(points):
            name, nfe = comp.resolve(name, nfe)
            ax = axes[r, c]
            ax.imshow(comp.mel(name, nfe, i).numpy(), origin="lower", aspect="auto", vmin=vmin, vmax=vmax,
                      cmap="magma", interpolation="nearest")
            ax.set_title(f"{comp.label(name, nfe)} — {comp.ids[i]}", fontsize=8, loc="left")
            if c == 0:
                ax.set_ylabel("mel bin", fontsize=8)
        axes[-1, c].set_xlabel("frame (16 ms)", fontsize=8)
    fig.suptitle(title or "same noise for every system; one colour scale per utterance", fontsize=9)
    fig.tight_layout()
    return save_fig(fig, path, dpi=dpi) if path else fig


# --------------------------------------------------------------------------------------------
# The interactive panel
# --------------------------------------------------------------------------------------------

class ListeningPanel:
    """ipywidgets A/B/C panel over a :class:`Comparison`.

    Widgets (public, so code and tests can drive them): ``utterance`` (Dropdown, value = the
    utterance's position), ``nfe[name]`` (Dropdown per system with NFE choices), and per row
    name ``players[name]`` (``ipywidgets.Audio``, WAV bytes), ``images[name]``
    (``ipywidgets.Image``, spectrogram PNG), ``scores[name]`` (``ipywidgets.HTML``) and
    ``status[name]`` (``ipywidgets.HTML``: "generating…" while that column is computed).
    ``widget`` is the whole panel; ``note`` its status line (:func:`imf.viz.widgets.kernel_note`:
    in a saved copy it says the controls need a kernel, and those are disabled).

    Lazy: a column shows what the comparison has cached at once; an (utterance, system, NFE)
    point it lacks is computed the first time it is shown (:meth:`Comparison.take`), with the
    column marked busy and the controls disabled meanwhile. Displaying the panel shows it
    first and then fills the missing columns one by one (:meth:`fill`); code without a
    display calls :meth:`fill` itself. The columns sit in a grid that wraps to the width
    (``repeat(auto-fit, minmax(min_column px, 1fr))``: four columns from about 1100 px of
    output, e.g. a 1600 px screen with JupyterLab's file browser open).
    """

    def __init__(self, comp: Comparison, default_nfe: Mapping[str, int] | None = None, min_column: int = 250):
        import ipywidgets as W

        self.comp = comp
        opts = []
        for i, uid in enumerate(comp.ids):
            text = comp.text(i)
            opts.append((f"{uid} — {text[:60] + ('…' if len(text) > 60 else '')}" if text else uid, i))
        self.utterance = needs_kernel(W.Dropdown(options=opts, value=0, description="utterance",
                                                 layout=W.Layout(width="min(100%, 640px)")))
        self.caption = W.HTML()
        self.nfe: dict[str, Any] = {}
        self.players: dict[str, Any] = {}
        self.images: dict[str, Any] = {}
        self.scores: dict[str, Any] = {}
        self.titles: dict[str, Any] = {}
        self.status: dict[str, Any] = {}
        self.columns: dict[str, Any] = {}
        full = W.Layout(width="100%")
        for name in comp.names:
            self.titles[name] = W.HTML(f"<b>{html.escape(name)}</b>")
            nfes = comp.nfes(name)
            if nfes:
                want = (default_nfe or {}).get(name, comp.default_nfe[name])
                dd = needs_kernel(W.Dropdown(options=[(f"{n} NFE", n) for n in nfes], value=want, description="NFE",
                                             layout=W.Layout(width="100%")))
                dd.observe(lambda change, name=name: self._update(name), names="value")
                self.nfe[name] = dd
                head = dd
            else:
                head = W.HTML("<i>recording</i>" if name == TRUTH else "<i>real mel → vocoder</i>",
                              layout=W.Layout(height="32px"))
            self.status[name] = W.HTML()
            self.players[name] = W.Audio(value=b"", format="wav", autoplay=False, loop=False, controls=True, layout=full)
            self.images[name] = W.Image(value=b"", format="png", layout=full)
            self.scores[name] = W.HTML()
            box = W.VBox([self.titles[name], head, self.status[name], self.players[name], self.images[name],
                          self.scores[name]], layout=W.Layout(border="1px solid #ddd", padding="4px", min_width="0"))
            box.add_class("imf-listen-column")
            self.columns[name] = box
        self.utterance.observe(lambda change: self.refresh(), names="value")
        self.note = kernel_note()
        legend = W.HTML("<small>Every system starts from the same noise z<sub>0</sub>; spectrograms share the "
                        "utterance's real colour scale. Scores: per utterance (↑ higher is better, ↓ lower). "
                        "A point is generated the first time it is shown, then cached.</small>"
                        # a saved view marks disconnected widgets with a ::before icon: in a grid it would take a cell
                        "<style>.imf-listen-grid.jupyter-widgets-disconnected::before{display:none}</style>")
        self.grid = W.GridBox(list(self.columns.values()), layout=W.Layout(
            grid_template_columns=f"repeat(auto-fit, minmax({min_column}px, 1fr))", grid_gap="8px", width="100%"))
        self.grid.add_class("imf-listen-grid")
        self.widget = W.VBox([self.utterance, self.caption, self.note, self.grid, legend])
        self.widget.add_class("imf-listen-panel")
        self.refresh(compute=False)

    @property
    def index(self) -> int:
        return int(self.utterance.value)

    def current_nfe(self, name: str) -> int:
        return int(self.nfe[name].value) if name in self.nfe else 0

    def pending(self) -> list[str]:
        """The columns whose current (utterance, NFE) point is not computed yet."""
        return [n for n in self.comp.names if not self.comp.is_ready(n, self.current_nfe(n) or None, self.index)]

    def refresh(self, compute: bool = True) -> None:
        """Redraw every column for the selected utterance: the cached points at once, the others
        marked waiting, then (``compute``) computed one by one."""
        i = self.index
        text = self.comp.text(i)
        prompt = self.comp.es.prompt_ids[i] if self.comp.es.prompt_ids else None
        self.caption.value = (f"<b>{html.escape(self.comp.ids[i])}</b>"
                              + (f": “{html.escape(text)}”" if text else "")
                              + (f" <small>(speaker prompt from {html.escape(prompt)})</small>" if prompt else ""))
        for name in self.comp.names:
            self._show(name)
        if compute:
            self.fill()

    def fill(self) -> None:
        """Compute and show every column still waiting (what displaying the panel does after showing it)."""
        self._compute(self.pending())

    def _key(self, name: str) -> tuple[str, int | None, int]:
        return name, self.current_nfe(name) or None, self.index

    def _update(self, name: str) -> None:  # an NFE dropdown changed
        self._show(name)
        self._compute([name])

    def _compute(self, names: Sequence[str]) -> None:
        """Compute the given columns' points, each marked busy meanwhile, the controls disabled."""
        if not names:
            return
        controls = [self.utterance, *self.nfe.values()]
        for c in controls:
            c.disabled = True
        try:
            for name in names:
                self.columns[name].add_class(BUSY)
                self.status[name].value = "<span class='imf-status'>⏳ generating…</span>"
                self.comp.take(*self._key(name))  # the one computation: this utterance of this (system, NFE)
                self._show(name)
        finally:
            for c in controls:
                c.disabled = False

    def _show(self, name: str) -> None:
        """Show the column's point if it is computed; else empty it and mark it waiting."""
        key = self._key(name)
        if not self.comp.is_ready(*key):
            self.players[name].value, self.images[name].value, self.scores[name].value = b"", b"", ""
            self.columns[name].add_class(BUSY)
            self.status[name].value = "<span class='imf-status'>waiting…</span>"
            return
        wav = self.comp.wav(*key)
        vmin, vmax = self.comp.colour_range(key[2])
        self.players[name].value = wav_bytes(wav, self.comp.sample_rate)
        self.images[name].value = _spectrogram_png(self.comp.mel(*key), vmin, vmax)
        secs = len(wav) / self.comp.sample_rate
        self.scores[name].value = f"<small>{secs:.2f} s</small>" + scores_html(self.comp, name, key[1], key[2])
        self.status[name].value = ""
        self.columns[name].remove_class(BUSY)

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        # what a viewer that cannot render widgets (an untrusted notebook, GitHub) shows instead of the
        # widget's "VBox(children=..." text
        bundle["text/html"] = ("<p><i>Listening panel (ipywidgets): it shows in JupyterLab with the notebook "
                               "trusted and, to use its controls, a running kernel. The static players below "
                               "play without one.</i></p>")
        return bundle

    def _ipython_display_(self) -> None:
        """Show the panel at once, then compute the columns it still lacks (each visibly busy)."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self.fill()


# --------------------------------------------------------------------------------------------
# The static form (executed notebooks)
# --------------------------------------------------------------------------------------------

def audio_tag(wav: Tensor, sample_rate: int) -> str:
    """An ``<audio>`` element whose ``src`` is the :func:`wav_bytes` of ``wav`` (S,) in base64."""
    b64 = base64.b64encode(wav_bytes(wav, sample_rate)).decode("ascii")
    return f'<audio controls preload="none" src="data:audio/wav;base64,{b64}" style="width:220px"></audio>'


def static_comparison(comp: Comparison, utts: Sequence[int | str] | None = None,
                      points: Sequence[str | tuple[str, int | None]] | None = None, *, max_players: int = 6,
                      max_seconds: float = 4.0, figure_path: str | Path | None = None):
    """Players and spectrograms as plain HTML: an ``IPython.display.HTML`` whose ``.data`` has
    one ``<audio>`` per (utterance, point), WAV 16-bit PCM in base64, the first
    ``max_seconds`` of each, plus the :func:`plot_comparison` figure as an embedded PNG
    (also saved to ``figure_path`` if given).

    points: row names or (name, nfe) pairs (default: every row at its default NFE).
    utts: positions or ids (default: as many of the first utterances as ``max_players``
    allows). More than ``max_players`` players is an error: they are stored in the notebook.
    """
    from IPython.display import HTML

    pts = [comp.resolve(*((p, None) if isinstance(p, str) else p)) for p in (points or comp.names)]
    for p in pts:  # whole-set renders (batched, as the recorded tables), not a live panel's one-utterance takes
        comp.render(*p)
    if len(pts) > max_players:
        raise ValueError(f"{len(pts)} systems need more than max_players={max_players} players; pass fewer points")
    idx = [comp.index(u) for u in utts] if utts is not None else list(range(min(len(comp), max_players // len(pts))))
    if len(idx) * len(pts) > max_players:
        raise ValueError(f"{len(idx)} utterances x {len(pts)} systems = {len(idx) * len(pts)} players "
                         f"> max_players={max_players}")
    n_max = int(max_seconds * comp.sample_rate)
    head = "".join(f"<th>{html.escape(comp.label(n, k))}</th>" for n, k in pts)
    rows = []
    for i in idx:
        text = comp.text(i)
        cells = [f"<td><b>{html.escape(comp.ids[i])}</b><br><small>{html.escape(text)}</small></td>"]
        for name, nfe in pts:
            wav = comp.wav(name, nfe, i)
            cut = " <small>(first {:g} s)</small>".format(max_seconds) if len(wav) > n_max else ""
            cells.append(f"<td>{audio_tag(wav[:n_max], comp.sample_rate)}{cut}<br>"
                         f"<small>{scores_html(comp, name, nfe, i, compact=True)}</small></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    fig_html = ""
    if idx:
        if figure_path is None:
            fig = plot_comparison(comp, idx, pts)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(fig)
            png = buf.getvalue()
        else:
            png = Path(plot_comparison(comp, idx, pts, figure_path)).read_bytes()
        fig_html = f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" style="max-width:100%">'
    table = (f"<table><tr><th>utterance</th>{head}</tr>{''.join(rows)}</table>"
             "<p><small>Same noise z<sub>0</sub> for every system; audio is not loudness-normalised.</small></p>")
    return HTML(f"<div class='imf-listen'>{table}{fig_html}</div>")
