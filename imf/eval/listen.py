"""A/B/C listening: every system on the SAME noise, played side by side with the real recording.

:func:`render_comparison` samples every system on the eval set's fixed noise ``es.z_0``
(identical for every system and NFE, so differences are the systems', not the noise's),
vocodes each utterance's valid frames, optionally scores them with the audio judges, and
keeps per (system, NFE, utterance) the log-mel, the waveform and the scores. The real
recording is always a row (``"ground truth"``); the real mel through the vocoder
(``"copy-synthesis"``) is one by default, so vocoder artefacts can be told from the model's.

Two views of one :class:`Comparison`:

* :class:`ListeningPanel` (ipywidgets): an utterance dropdown and, per system that takes an
  NFE, an NFE dropdown; each column shows an audio player, the spectrogram (one colour scale
  for all columns of an utterance) and that utterance's scores. Renders are cached per
  (system, NFE), so toggling never recomputes what was seen once.
* :func:`static_comparison`: plain HTML (``<audio>`` players with base64 WAV, 16 kHz PCM16,
  never loudness-normalised) plus a spectrogram figure, for a few utterances: what a reader
  of an executed notebook copy sees and hears without a kernel.

Scores per utterance: the judges' columns (e.g. ``wer``, ``sim``, ``mos``; extra columns such
as ``wer.hyp``) and the intrinsic over-smoothing ratios of :mod:`imf.eval.metrics` against
the utterance's real log-mel (``fs_ratio``, ``gv_ratio``; 1 = as detailed as real speech;
computed on the mel fed to the vocoder, so both reference rows score exactly 1).
``nfe`` is 0 for the reference rows (no flow-model call).
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from imf.flow import schedules
from imf.eval.audio import AudioJudges
from imf.eval.evalset import EvalSet
from imf.eval.sweep import generate
from imf.eval.judges import summarise
from imf.eval.metrics import intrinsic_metrics

TRUTH = "ground truth"  # the real recording (no vocoder)
COPY = "copy-synthesis"  # the real log-mel through the vocoder
DYNAMIC_RANGE = 12.0  # log-mel units shown below an utterance's real maximum (as plots.plot_mels)

__all__ = ["TRUTH", "COPY", "Render", "Comparison", "render_comparison", "nfe_grids", "wav_bytes",
           "ListeningPanel", "static_comparison", "plot_comparison"]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def nfe_grids(nfes: str | Sequence[int], schedule: str = "uniform") -> dict[int, Tensor]:
    """``"1,2,4,32"`` or ``[1, 2, 4, 32]`` -> ``{nfe: time_grid (nfe + 1,)}`` on ``schedule``.

    The NFE of each grid is the grid's own (``schedules.nfe_of``); duplicates are dropped.
    """
    if isinstance(nfes, str):
        try:
            nfes = [int(n) for n in nfes.replace(" ", "").split(",") if n]
        except ValueError:
            raise ValueError(f"NFE list must be comma-separated integers, got {nfes!r}") from None
    out: dict[int, Tensor] = {}
    for n in nfes:
        if int(n) < 1:
            raise ValueError(f"NFE must be >= 1, got {n}")
        out[int(n)] = schedules.make_grid(schedule, int(n))
    if not out:
        raise ValueError("no NFE given")
    return out


def wav_bytes(wav: Tensor | np.ndarray, sample_rate: int = 16_000) -> bytes:
    """Mono audio (N,) in [-1, 1] -> the bytes of a PCM16 WAV file (clipped, NOT normalised:
    loudness differences between systems are part of what one listens for)."""
    import soundfile as sf

    a = wav.detach().cpu().numpy() if isinstance(wav, Tensor) else np.asarray(wav)
    a = np.clip(np.asarray(a, dtype=np.float32).reshape(-1), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, a, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@dataclasses.dataclass
class Render:
    """One system at one NFE on every utterance of the eval set (N utterances).

    mels: N raw log-mels (C, T_i) over each utterance's valid frames; wavs: N waveforms
    (S_i,) float32 at ``sample_rate``; scores: N rows indexed by utterance id; seconds:
    wall time of sampling the whole set (model calls only); calls: model calls per batch.
    """
    system: str
    nfe: int
    mels: list[Tensor]
    wavs: list[Tensor]
    scores: pd.DataFrame
    seconds: float = 0.0
    calls: int = 0


class Comparison:
    """Renders of several systems on one eval set, cached per (system, NFE).

    Built by :func:`render_comparison`. ``names``: the rows in display order (ground truth,
    copy-synthesis, then the systems as given); ``nfes(name)``: the NFE choices of a system
    ([] for the references); ``render(name, nfe)``: the cached :class:`Render`, computed on
    first use.
    """

    def __init__(self, es: EvalSet, systems: Mapping[str, tuple[Callable[..., Tensor], Tensor | Mapping[int, Tensor]]],
                 vocoder: Any, judges: Any = None, *, copy_synthesis: bool = True,
                 default_nfe: Mapping[str, int] | None = None, batch_size: int = 32):
        if len(es) == 0:
            raise ValueError("the eval set is empty")
        self.es, self.vocoder, self.batch_size = es, vocoder, batch_size
        if judges is None or isinstance(judges, AudioJudges):
            self.judges = judges
        else:
            judges = list(judges)
            self.judges = AudioJudges(vocoder, judges) if judges else None
        self._voc = AudioJudges(vocoder, [])  # vocoding without scoring
        self.sample_rate = int(getattr(es.corpus, "sample_rate", 16_000))
        self.references = [TRUTH] + ([COPY] if copy_synthesis else [])
        self.systems: dict[str, tuple[Callable[..., Tensor], dict[int, Tensor]]] = {}
        for name, spec in systems.items():
            if name in (TRUTH, COPY):
                raise ValueError(f"system name {name!r} is reserved for a reference row")
            if not (isinstance(spec, tuple) and len(spec) == 2):
                raise TypeError(f"system {name!r}: expected (model, time_grid or {{nfe: time_grid}}), "
                                f"got {type(spec).__name__}")
            model, grids = spec
            if isinstance(grids, Mapping):
                grids = {schedules.nfe_of(g): schedules.validate_grid(g, f"{name} grid") for g in grids.values()}
            else:
                g = schedules.validate_grid(grids, f"{name} grid")
                grids = {schedules.nfe_of(g): g}
            if not grids:
                raise ValueError(f"system {name!r} has no time grid")
            self.systems[name] = (model, dict(sorted(grids.items())))
        self.default_nfe: dict[str, int] = {}
        for name, nfes in ((n, self.nfes(n)) for n in self.systems):
            want = (default_nfe or {}).get(name, nfes[0])
            if want not in nfes:
                raise ValueError(f"default NFE {want} of {name!r} is not one of its choices {nfes}")
            self.default_nfe[name] = want
        unknown = set(default_nfe or {}) - set(self.systems)
        if unknown:
            raise ValueError(f"default_nfe names unknown systems {sorted(unknown)}; systems: {list(self.systems)}")
        self._cache: dict[tuple[str, int], Render] = {}

    # -- what there is --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.references + list(self.systems)

    @property
    def ids(self) -> list[str]:
        return list(self.es.ids)

    def __len__(self) -> int:
        return len(self.es)

    def nfes(self, name: str) -> list[int]:
        """NFE choices of ``name`` (ascending); [] for the reference rows."""
        if name in self.references:
            return []
        if name not in self.systems:
            raise KeyError(f"unknown system {name!r}; known: {self.names}")
        return list(self.systems[name][1])

    def points(self) -> list[tuple[str, int]]:
        """Every (name, nfe) this comparison can render (references with nfe 0)."""
        return [(n, 0) for n in self.references] + [(n, k) for n in self.systems for k in self.nfes(n)]

    def label(self, name: str, nfe: int) -> str:
        return name if name in self.references else f"{name} · {nfe} NFE"

    def text(self, i: int) -> str:
        return self.es.texts[i] if self.es.texts else ""

    def index(self, utt: int | str) -> int:
        """Position of an utterance given by position or id."""
        if isinstance(utt, str):
            try:
                return self.es.ids.index(utt)
            except ValueError:
                raise KeyError(f"utterance {utt!r} is not in the eval set; ids: {self.es.ids}") from None
        if not 0 <= int(utt) < len(self.es):
            raise IndexError(f"utterance {utt} out of range [0, {len(self.es)})")
        return int(utt)

    def n_frames(self, i: int) -> int:
        return int(self.es.mask[i].sum())

    # -- rendering --------------------------------------------------------------------------------
    def _resolve(self, name: str, nfe: int | None) -> tuple[str, int]:
        if name in self.references:
            return name, 0
        nfes = self.nfes(name)
        nfe = self.default_nfe[name] if nfe is None else int(nfe)
        if nfe not in nfes:
            raise KeyError(f"{name!r} has no grid for {nfe} NFE; choices: {nfes}")
        return name, nfe

    def is_rendered(self, name: str, nfe: int | None = None) -> bool:
        return self._resolve(name, nfe) in self._cache

    @torch.no_grad()
    def render(self, name: str, nfe: int | None = None) -> Render:
        """The :class:`Render` of ``name`` at ``nfe`` (default: the system's default NFE),
        sampled on the fixed noise on first use and cached."""
        key = self._resolve(name, nfe)
        if key in self._cache:
            return self._cache[key]
        es = self.es
        real = es.real_logmel()  # (N, C, T), zero beyond each utterance
        seconds, calls = 0.0, 0
        if name == TRUTH:
            x_log = real
            wavs = [es.corpus.load_wav(i).float() for i in es.ids]
        elif name == COPY:
            x_log = real
            wavs = self._voc.wavs(es, es.x1)
        else:
            model, grids = self.systems[name]
            x, calls, seconds = generate(model, es, grids[key[1]], batch_size=self.batch_size)
            x_log = es.corpus.denormalize(x) * es.mask[:, None]
            wavs = self._voc.wavs(es, x)
        mels = [x_log[i, :, : self.n_frames(i)].clone() for i in range(len(es))]
        scores = self._intrinsic(mels, real)
        if self.judges is not None:
            scores = self.judges.table(es, wavs).join(scores)
        r = Render(name, key[1], mels, [w.detach().float().cpu() for w in wavs], scores, seconds, calls)
        self._cache[key] = r
        return r

    def _intrinsic(self, mels: list[Tensor], real: Tensor) -> pd.DataFrame:
        rows = []
        for i, m in enumerate(mels):
            n = m.shape[-1]
            rows.append(intrinsic_metrics(m[None], real[i: i + 1, :, :n]))
        return pd.DataFrame(rows, index=pd.Index(self.es.ids, name="id"))

    def render_all(self, progress: bool = True) -> "Comparison":
        """Render every (system, NFE) point (each once)."""
        from tqdm.auto import tqdm

        for name, nfe in tqdm(self.points(), desc="render", disable=not progress):
            self.render(name, nfe)
        return self

    # -- per utterance ------------------------------------------------------------------------------
    def mel(self, name: str, nfe: int | None, utt: int | str) -> Tensor:
        """Raw log-mel (C, T_i) of one utterance."""
        return self.render(name, nfe).mels[self.index(utt)]

    def wav(self, name: str, nfe: int | None, utt: int | str) -> Tensor:
        """Waveform (S_i,) float32 of one utterance."""
        return self.render(name, nfe).wavs[self.index(utt)]

    def scores(self, name: str, nfe: int | None, utt: int | str) -> dict[str, Any]:
        """The score row of one utterance: ``{column: value}``."""
        return self.render(name, nfe).scores.iloc[self.index(utt)].to_dict()

    def colour_range(self, utt: int | str) -> tuple[float, float]:
        """(vmin, vmax) of the utterance's real log-mel, at most ``DYNAMIC_RANGE`` deep: one
        scale for every system's spectrogram of this utterance."""
        i = self.index(utt)
        real = self.es.real_logmel()[i, :, : self.n_frames(i)]
        vmax = float(real.max())
        return max(float(real.min()), vmax - DYNAMIC_RANGE), vmax

    # -- tables -------------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """Per-utterance scores of every rendered point: columns system, nfe, id, then scores."""
        parts = []
        for (name, nfe), r in self._cache.items():
            df = r.scores.reset_index()
            df.insert(0, "nfe", nfe)
            df.insert(0, "system", name)
            parts.append(df)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["system", "nfe", "id"])

    def mean_scores(self) -> pd.DataFrame:
        """One row per rendered (system, NFE): :func:`imf.eval.judges.summarise` of its
        per-utterance scores (corpus-level WER; means otherwise, extra columns left out)."""
        rows = []
        for (name, nfe), r in self._cache.items():
            s = summarise(r.scores.select_dtypes("number"))
            s.pop("n_items", None)
            rows.append({"system": name, "nfe": nfe, **s})
        return pd.DataFrame(rows)


def render_comparison(es: EvalSet, systems: Mapping[str, tuple[Callable[..., Tensor], Tensor | Mapping[int, Tensor]]],
                      vocoder: Any, judges: Any = None, *, copy_synthesis: bool = True,
                      default_nfe: Mapping[str, int] | None = None, batch_size: int = 32, eager: bool = True,
                      progress: bool = True) -> Comparison:
    """Sample every system on ``es``'s fixed noise, vocode, and (optionally) judge.

    Args:
        es: the eval set (N utterances; ``es.z_0`` (N, C, T) is the noise EVERY system uses).
        systems: ``{name: (model, time_grid)}`` for one NFE, or ``{name: (model, {nfe:
            time_grid})}`` for an NFE choice; ``model(x, *, t, r, cond)`` (wrap a teacher with
            :func:`imf.eval.sweep.guided` for CFG). ``time_grid``: (K + 1,), 0 -> 1.
        vocoder: anything with ``vocode(log_mel (B, C, T)) -> wav (B, S)``.
        judges: None, a sequence of judges (:mod:`imf.eval.judges`), or an
            :class:`imf.eval.audio.AudioJudges`.
        copy_synthesis: add the ``"copy-synthesis"`` row (real mel through the vocoder).
        default_nfe: the NFE each system shows first (default: its smallest).
        eager: render every (system, NFE) now; otherwise on first use.
    """
    comp = Comparison(es, systems, vocoder, judges, copy_synthesis=copy_synthesis, default_nfe=default_nfe,
                      batch_size=batch_size)
    if eager:
        comp.render_all(progress)
    return comp


# --------------------------------------------------------------------------------------------
# Presentation helpers
# --------------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


def _higher_is_better(comp: Comparison) -> dict[str, bool]:
    judges = comp.judges.judges if comp.judges is not None else []
    return {j.name: bool(getattr(j, "higher_is_better", True)) for j in judges}


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

    from imf.viz.plots import save_fig

    idx = [comp.index(u) for u in utts]
    fig, axes = plt.subplots(len(points), len(idx), figsize=(3.6 * len(idx), 1.6 * len(points) + 0.4),
                             squeeze=False, sharey=True)
    for c, i in enumerate(idx):
        vmin, vmax = comp.colour_range(i)
        for r, (name, nfe) in enumerate(points):
            name, nfe = comp._resolve(name, nfe)
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
    (``ipywidgets.Image``, spectrogram PNG) and ``scores[name]`` (``ipywidgets.HTML``).
    ``widget`` is the whole panel; displaying the panel displays it.
    """

    def __init__(self, comp: Comparison, default_nfe: Mapping[str, int] | None = None, column_width: int = 300):
        import ipywidgets as W

        self.comp = comp
        opts = []
        for i, uid in enumerate(comp.ids):
            text = comp.text(i)
            opts.append((f"{uid} — {text[:60] + ('…' if len(text) > 60 else '')}" if text else uid, i))
        self.utterance = W.Dropdown(options=opts, value=0, description="utterance",
                                    layout=W.Layout(width="min(100%, 640px)"))
        self.caption = W.HTML()
        self.nfe: dict[str, Any] = {}
        self.players: dict[str, Any] = {}
        self.images: dict[str, Any] = {}
        self.scores: dict[str, Any] = {}
        self.titles: dict[str, Any] = {}
        columns = []
        col = W.Layout(width=f"{column_width + 16}px", margin="0 8px 8px 0", border="1px solid #ddd", padding="4px")
        for name in comp.names:
            self.titles[name] = W.HTML(f"<b>{html.escape(name)}</b>")
            nfes = comp.nfes(name)
            if nfes:
                want = (default_nfe or {}).get(name, comp.default_nfe[name])
                dd = W.Dropdown(options=[(f"{n} NFE", n) for n in nfes], value=want, description="NFE",
                                layout=W.Layout(width=f"{column_width}px"))
                dd.observe(lambda change, name=name: self._update(name), names="value")
                self.nfe[name] = dd
                head = dd
            else:
                head = W.HTML("<i>recording</i>" if name == TRUTH else "<i>real mel → vocoder</i>",
                              layout=W.Layout(height="32px"))
            self.players[name] = W.Audio(value=b"", format="wav", autoplay=False, loop=False, controls=True,
                                         layout=W.Layout(width=f"{column_width}px"))
            self.images[name] = W.Image(value=b"", format="png", layout=W.Layout(width=f"{column_width}px"))
            self.scores[name] = W.HTML()
            columns.append(W.VBox([self.titles[name], head, self.players[name], self.images[name], self.scores[name]],
                                  layout=col))
        self.utterance.observe(lambda change: self.refresh(), names="value")
        note = W.HTML("<small>Every system starts from the same noise z<sub>0</sub>; spectrograms share the "
                      "utterance's real colour scale. Scores: per utterance (↑ higher is better, ↓ lower).</small>")
        grid = W.HBox(columns, layout=W.Layout(flex_flow="row wrap"))
        self.widget = W.VBox([self.utterance, self.caption, grid, note])
        self.refresh()

    @property
    def index(self) -> int:
        return int(self.utterance.value)

    def current_nfe(self, name: str) -> int:
        return int(self.nfe[name].value) if name in self.nfe else 0

    def refresh(self) -> None:
        """Redraw every column for the selected utterance."""
        i = self.index
        text = self.comp.text(i)
        prompt = self.comp.es.prompt_ids[i] if self.comp.es.prompt_ids else None
        self.caption.value = (f"<b>{html.escape(self.comp.ids[i])}</b>"
                              + (f": “{html.escape(text)}”" if text else "")
                              + (f" <small>(speaker prompt from {html.escape(prompt)})</small>" if prompt else ""))
        for name in self.comp.names:
            self._update(name)

    def _update(self, name: str) -> None:
        i, nfe = self.index, self.current_nfe(name)
        wav = self.comp.wav(name, nfe, i)  # renders (once) if this NFE was not seen yet
        vmin, vmax = self.comp.colour_range(i)
        self.players[name].value = wav_bytes(wav, self.comp.sample_rate)
        self.images[name].value = _spectrogram_png(self.comp.mel(name, nfe, i), vmin, vmax)
        secs = len(wav) / self.comp.sample_rate
        self.scores[name].value = f"<small>{secs:.2f} s</small>" + scores_html(self.comp, name, nfe, i)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# --------------------------------------------------------------------------------------------
# The static form (executed notebooks)
# --------------------------------------------------------------------------------------------

def _audio_tag(wav: Tensor, sample_rate: int) -> str:
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

    pts = [comp._resolve(*((p, None) if isinstance(p, str) else p)) for p in (points or comp.names)]
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
            cells.append(f"<td>{_audio_tag(wav[:n_max], comp.sample_rate)}{cut}<br>"
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
