"""A/B/C listening data: every system on the SAME noise, beside the real recording.

:func:`render_comparison` samples every :class:`~imf.eval.systems.System` on the eval set's
fixed noise ``es.z_0`` (identical for every system and NFE, so differences are the systems',
not the noise's), vocodes each utterance's valid frames, optionally scores them with the audio
judges, and keeps per (system, NFE, utterance) the log-mel, the waveform and the scores. The
real recording is always a row (``"ground truth"``); the real mel through the vocoder
(``"copy-synthesis"``) is one by default, so vocoder artefacts can be told from the model's.

Two units of work, both cached: a whole (system, NFE) point over the eval set
(:meth:`Comparison.render`, what the recorded tables use, batched as every other evaluation) and
one (system, NFE, utterance) point (:meth:`Comparison.take`, what the live panel asks for: the
utterance alone, so the first audio comes after one utterance's sampling, not the whole set's).
A take reads the whole point's render when that exists, so the panel and the tables agree once
both were computed; before that a take is the utterance sampled in a batch of one (equal to
the batched one up to float rounding).

The views of a :class:`Comparison` (the ipywidgets panel, static HTML players, spectrogram
figures) live in :mod:`imf.viz.listen`.

Scores per utterance: the judges' columns (e.g. ``wer``, ``sim``, ``mos``; extra columns such
as ``wer.hyp``; from :meth:`imf.eval.audio.AudioJudges.table`) and the intrinsic
over-smoothing ratios of :mod:`imf.eval.metrics` against the utterance's real log-mel
(``fs_ratio``, ``gv_ratio``; 1 = as detailed as real speech; computed on the mel fed to the
vocoder, so both reference rows score exactly 1). ``nfe`` is 0 for the reference rows (no
flow-model call).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from imf.flow import schedules
from imf.eval.audio import AudioJudges
from imf.eval.evalset import EvalSet
from imf.eval.judges import summarise
from imf.eval.metrics import intrinsic_metrics
from imf.eval.sweep import generate
from imf.eval.systems import System

TRUTH = "ground truth"  # the real recording (no vocoder)
COPY = "copy-synthesis"  # the real log-mel through the vocoder
DYNAMIC_RANGE = 12.0  # log-mel units shown below an utterance's real maximum (as plots.plot_mels)

__all__ = ["TRUTH", "COPY", "DYNAMIC_RANGE", "Render", "Comparison", "render_comparison", "nfe_grids"]


def nfe_grids(nfes: Sequence[int], schedule: str = "uniform") -> dict[int, Tensor]:
    """``[1, 2, 4, 32]`` -> ``{nfe: time_grid (nfe + 1,)}`` on ``schedule`` (e.g. for
    ``System(grids=...)``); duplicates are dropped."""
    if isinstance(nfes, str) or not all(isinstance(n, int) and not isinstance(n, bool) for n in nfes):
        raise TypeError(f"NFE choices must be a list of integers, got {nfes!r}")
    out: dict[int, Tensor] = {}
    for n in nfes:
        if n < 1:
            raise ValueError(f"NFE must be >= 1, got {n}")
        out[n] = schedules.make_grid(schedule, n)
    if not out:
        raise ValueError("no NFE given")
    return out


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

    Built by :func:`render_comparison` (see it for the arguments). ``names``: the rows in
    display order (ground truth, copy-synthesis, then the systems as given); ``nfes(name)``:
    the NFE choices of a system ([] for the references); ``grids[name]``: ``{nfe: time_grid}``;
    ``render(name, nfe)``: the cached :class:`Render`, computed on first use.
    """

    def __init__(self, es: EvalSet, systems: Sequence[System], vocoder: Any, judges: Any = None, *,
                 nfes: Sequence[int] | None = None, copy_synthesis: bool = True,
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
        if isinstance(systems, (Mapping, System)):
            raise TypeError("systems must be a list of imf.eval.systems.System, "
                            f"got a {type(systems).__name__}")
        if nfes is not None:
            nfe_grids(nfes)  # validates the list (integers >= 1, not empty)
        self.systems: dict[str, System] = {}
        self.grids: dict[str, dict[int, Tensor]] = {}
        for system in systems:
            if not isinstance(system, System):
                raise TypeError(f"expected an imf.eval.systems.System, got {type(system).__name__} {system!r}")
            name = system.name
            if name in (TRUTH, COPY):
                raise ValueError(f"system name {name!r} is reserved for a reference row")
            if name in self.systems:
                raise ValueError(f"two systems are named {name!r}; names must differ")
            choices = sorted(set(nfes if nfes is not None else system.grids))
            if not choices:
                raise ValueError(f"system {name!r} has no NFE choices: give it grids={{nfe: time_grid}} "
                                 "or pass nfes=[...] to render_comparison")
            grids = {}
            for n in choices:
                g = schedules.validate_grid(system.grid(n), f"{name} grid for {n} NFE")
                if schedules.nfe_of(g) != n:
                    raise ValueError(f"system {name!r}: the grid for {n} NFE has {schedules.nfe_of(g)} steps")
                grids[n] = g
            self.systems[name], self.grids[name] = system, grids
        self.default_nfe: dict[str, int] = {}
        for name, choices in ((n, self.nfes(n)) for n in self.systems):
            want = (default_nfe or {}).get(name, choices[0])
            if want not in choices:
                raise ValueError(f"default NFE {want} of {name!r} is not one of its choices {choices}")
            self.default_nfe[name] = want
        unknown = set(default_nfe or {}) - set(self.systems)
        if unknown:
            raise ValueError(f"default_nfe names unknown systems {sorted(unknown)}; systems: {list(self.systems)}")
        self._cache: dict[tuple[str, int], Render] = {}
        self._takes: dict[tuple[str, int, int], Render] = {}  # one utterance (N = 1), keyed (name, nfe, position)

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
        return list(self.grids[name])

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
    def resolve(self, name: str, nfe: int | None) -> tuple[str, int]:
        """(name, nfe) with ``nfe`` None replaced by the system's default (0 for a reference row)."""
        if name in self.references:
            return name, 0
        nfes = self.nfes(name)
        nfe = self.default_nfe[name] if nfe is None else int(nfe)
        if nfe not in nfes:
            raise KeyError(f"{name!r} has no grid for {nfe} NFE; choices: {nfes}")
        return name, nfe

    def is_rendered(self, name: str, nfe: int | None = None) -> bool:
        """Whether the whole (name, nfe) point over the eval set is computed."""
        return self.resolve(name, nfe) in self._cache

    def is_ready(self, name: str, nfe: int | None, utt: int | str) -> bool:
        """Whether one utterance of (name, nfe) can be shown without computing anything."""
        key = self.resolve(name, nfe)
        return key in self._cache or (*key, self.index(utt)) in self._takes

    @torch.no_grad()
    def render(self, name: str, nfe: int | None = None) -> Render:
        """The :class:`Render` of ``name`` at ``nfe`` (default: the system's default NFE) on
        every utterance, sampled on the fixed noise on first use and cached."""
        key = self.resolve(name, nfe)
        if key not in self._cache:
            self._cache[key] = self._render(self.es, *key)
        return self._cache[key]

    @torch.no_grad()
    def take(self, name: str, nfe: int | None, utt: int | str) -> Render:
        """One utterance of (name, nfe): a :class:`Render` with N = 1 (its mel, wav and score
        row). Read from the whole point's render if that is computed; otherwise the utterance
        alone is sampled (a batch of one, on its own noise ``es.z_0[i]``), vocoded, judged and
        cached."""
        key, i = self.resolve(name, nfe), self.index(utt)
        if key in self._cache:
            r = self._cache[key]
            return Render(r.system, r.nfe, r.mels[i: i + 1], r.wavs[i: i + 1], r.scores.iloc[i: i + 1], r.seconds, r.calls)
        if (*key, i) not in self._takes:
            self._takes[(*key, i)] = self._render(self.es.subset([i]), *key)
        return self._takes[(*key, i)]

    def _render(self, es: EvalSet, name: str, nfe: int) -> Render:
        """Sample (or load), vocode and score (name, nfe) on ``es`` (the eval set or a subset of it)."""
        real = es.real_logmel()  # (N, C, T), zero beyond each utterance
        seconds, calls = 0.0, 0
        if name == TRUTH:
            x_log = real
            wavs = [es.corpus.load_wav(i).float() for i in es.ids]
        elif name == COPY:
            x_log = real
            wavs = self._voc.wavs(es, es.z_1)
        else:
            system = self.systems[name]
            x, calls, seconds = generate(system.model, es, self.grids[name][nfe], system.method, self.batch_size)
            x_log = es.corpus.denormalize(x) * es.mask[:, None]
            wavs = self._voc.wavs(es, x)
        mels = [x_log[i, :, : int(es.mask[i].sum())].clone() for i in range(len(es))]
        scores = self._intrinsic(es, mels, real)
        if self.judges is not None:
            scores = self.judges.table(es, wavs).join(scores)
        return Render(name, nfe, mels, [w.detach().float().cpu() for w in wavs], scores, seconds, calls)

    @staticmethod
    def _intrinsic(es: EvalSet, mels: list[Tensor], real: Tensor) -> pd.DataFrame:
        rows = []
        for i, m in enumerate(mels):
            n = m.shape[-1]
            rows.append(intrinsic_metrics(m[None], real[i: i + 1, :, :n]))
        return pd.DataFrame(rows, index=pd.Index(es.ids, name="id"))

    def render_all(self, progress: bool = True) -> "Comparison":
        """Render every (system, NFE) point (each once)."""
        from tqdm.auto import tqdm

        for name, nfe in tqdm(self.points(), desc="render", disable=not progress):
            self.render(name, nfe)
        return self

    # -- per utterance ------------------------------------------------------------------------------
    def mel(self, name: str, nfe: int | None, utt: int | str) -> Tensor:
        """Raw log-mel (C, T_i) of one utterance (computes only that utterance if needed: :meth:`take`)."""
        return self.take(name, nfe, utt).mels[0]

    def wav(self, name: str, nfe: int | None, utt: int | str) -> Tensor:
        """Waveform (S_i,) float32 of one utterance (:meth:`take`)."""
        return self.take(name, nfe, utt).wavs[0]

    def scores(self, name: str, nfe: int | None, utt: int | str) -> dict[str, Any]:
        """The score row of one utterance: ``{column: value}`` (:meth:`take`)."""
        return self.take(name, nfe, utt).scores.iloc[0].to_dict()

    def colour_range(self, utt: int | str) -> tuple[float, float]:
        """(vmin, vmax) of the utterance's real log-mel, at most ``DYNAMIC_RANGE`` deep: one
        scale for every system's spectrogram of this utterance."""
        i = self.index(utt)
        real = self.es.real_logmel()[i, :, : self.n_frames(i)]
        vmax = float(real.max())
        return max(float(real.min()), vmax - DYNAMIC_RANGE), vmax

    # -- tables -------------------------------------------------------------------------------------
    def _rendered(self) -> list[tuple[tuple[str, int], Render]]:
        """The whole-set renders in :meth:`points` order (not the order they were asked for)."""
        return [(p, self._cache[p]) for p in self.points() if p in self._cache]

    def table(self) -> pd.DataFrame:
        """Per-utterance scores of every rendered (whole-set) point, in :meth:`points` order:
        columns system, nfe, id, then scores."""
        parts = []
        for (name, nfe), r in self._rendered():
            df = r.scores.reset_index()
            df.insert(0, "nfe", nfe)
            df.insert(0, "system", name)
            parts.append(df)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["system", "nfe", "id"])

    def mean_scores(self) -> pd.DataFrame:
        """One row per rendered (system, NFE), in :meth:`points` order: :func:`imf.eval.judges.summarise`
        of its per-utterance scores (corpus-level WER; means otherwise, extra columns left out)."""
        rows = []
        for (name, nfe), r in self._rendered():
            s = summarise(r.scores.select_dtypes("number"))
            s.pop("n_items", None)
            rows.append({"system": name, "nfe": nfe, **s})
        return pd.DataFrame(rows)


def render_comparison(es: EvalSet, systems: Sequence[System], vocoder: Any, judges: Any = None, *,
                      nfes: Sequence[int] | None = None, copy_synthesis: bool = True,
                      default_nfe: Mapping[str, int] | None = None, batch_size: int = 32, eager: bool = True,
                      progress: bool = True) -> Comparison:
    """Sample every system on ``es``'s fixed noise, vocode, and (optionally) judge.

    Args:
        es: the eval set (N utterances; ``es.z_0`` (N, C, T) is the noise EVERY system uses).
        systems: :class:`~imf.eval.systems.System` objects (distinct names), each sampled with
            its ``model(x, *, t, r, cond)`` (wrap a teacher with :func:`imf.eval.systems.guided`
            for CFG), its ``method`` and ``grid(nfe)`` (``time_grid`` (nfe + 1,), 0 -> 1).
        vocoder: anything with ``vocode(log_mel (B, C, T)) -> wav (B, S)``.
        judges: None, a sequence of judges (:mod:`imf.eval.judges`), or an
            :class:`imf.eval.audio.AudioJudges`.
        nfes: the NFE choices of every system (its grid for each: ``system.grid(nfe)``);
            None: each system's own, the keys of its ``grids``.
        copy_synthesis: add the ``"copy-synthesis"`` row (real mel through the vocoder).
        default_nfe: ``{name: nfe}`` each system shows first (default: its smallest).
        eager: render every (system, NFE) now; otherwise on first use (a live panel computes
            each utterance it shows; :meth:`Comparison.render_all` before recording tables).
    """
    comp = Comparison(es, systems, vocoder, judges, nfes=nfes, copy_synthesis=copy_synthesis,
                      default_nfe=default_nfe, batch_size=batch_size)
    if eager:
        comp.render_all(progress)
    return comp
