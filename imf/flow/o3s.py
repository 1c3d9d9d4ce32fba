"""O3S, "optimal step sampling" (IntMeanFlow, arXiv 2510.07979): search the step positions.

The number of steps ``K = NFE`` is fixed; the interior positions ``t_1 < ... < t_{K-1}`` of a
time grid ``g = [0, t_1, ..., t_{K-1}, 1]`` (``t = 0`` noise, ``t = 1`` data) are moved to
maximise a dev-set metric ``m(g)`` (the paper uses speaker similarity; any score where higher
is better works). The paper observes (its Fig. 2) that ``m`` is close to concave in each ``t_i``
with the others fixed, so O3S is coordinate ascent with a 1-D bracketing search::

    repeat (a "sweep"):
        for i = 1 .. K-1:
            t_i <- argmax  m(g with t_i = x)   over  x in (t_{i-1} + min_gap, t_{i+1} - min_gap)
                   (golden-section or ternary search; the current t_i stays if nothing beats it)
    until a sweep improves the best score by < tol, or max_sweeps, or max_evals evaluations

The metric is the caller's: it must be deterministic for a given grid (fixed dev set, fixed
evaluation noise), because the search caches scores by grid. This module is search only: it
imports no model and no training code, writes no file and draws nothing. :func:`scan_position` /
:func:`scan_all` compute the convexity curves of the paper's Fig. 2 (drawn by
:func:`imf.viz.o3s.plot_scans`); a result's grid goes to disk through
:func:`imf.flow.schedules.save_grid` with :meth:`O3SResult.grid_meta` (the runs layer does that).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from imf.core.config import Config, require
from imf.flow.schedules import GridError, validate_grid

Metric = Callable[[Tensor], float]
"""``metric(time_grid) -> score``: ``time_grid`` float64 (K+1,), higher score is better."""

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 1/phi ~ 0.618: golden-section shrink factor
HISTORY_COLUMNS = ("eval", "sweep", "position", "score", "best_so_far", "time_grid")  # one row per metric call


@dataclasses.dataclass(frozen=True)
class O3SConfig(Config):
    min_gap: float = 0.02  # neighbouring steps stay more than this apart (t_{i+1} - t_i > min_gap)
    tol: float = 1e-3  # stop when a full sweep improves the best score by less than this (absolute; 0: until no move)
    max_evals: int = 200  # budget of metric calls (cache hits are free; the initial grid counts)
    max_sweeps: int = 10  # at most this many passes over all interior positions
    ternary_iters: int = 8  # bracket reductions of the 1-D search per position (see `method`)
    method: Literal["golden", "ternary"] = "golden"  # golden: iters+1 evals/position; ternary: 2*iters
    round_to: float = 1e-4  # candidate positions snap to multiples of this (0: no snapping)

    def validate(self) -> None:
        require(0.0 <= self.min_gap < 0.5, "min_gap", f"must lie in [0, 0.5), got {self.min_gap}")
        require(self.tol >= 0.0 and math.isfinite(self.tol), "tol", f"must be finite and >= 0, got {self.tol}")
        require(self.max_evals >= 1, "max_evals", f"must be >= 1 (the initial grid costs one), got {self.max_evals}")
        require(self.max_sweeps >= 1, "max_sweeps", f"must be >= 1, got {self.max_sweeps}")
        require(self.ternary_iters >= 1, "ternary_iters", f"must be >= 1, got {self.ternary_iters}")
        require(self.method in ("golden", "ternary"), "method", f"must be 'golden' or 'ternary', got {self.method!r}")
        require(0.0 <= self.round_to <= 0.1, "round_to", f"must lie in [0, 0.1], got {self.round_to}")


class O3SError(RuntimeError):
    """The metric raised or returned a non-finite score; ``time_grid`` is the grid it was given.

    ``history`` holds the evaluations completed before the failure (empty for scans).
    """

    def __init__(self, message: str, time_grid: list[float], history: list[dict] | None = None):
        super().__init__(message)
        self.time_grid = time_grid
        self.history = list(history or [])


@dataclasses.dataclass
class O3SResult:
    """Outcome of :func:`o3s_search`.

    ``best_grid`` float64 (K+1,); ``history`` has one dict per metric call (cache hits are not
    calls): ``{eval, sweep, position, time_grid, score, best_so_far}`` where ``eval`` counts from
    1, the initial grid is ``sweep = 0, position = 0`` and ``position`` is otherwise the index
    ``i`` in ``1..K-1`` of the step being moved. ``n_sweeps`` counts sweeps begun (a sweep cut
    by the budget counts). ``stopped`` is ``"converged"`` (a sweep gained < tol, or NFE = 1),
    ``"budget"`` (max_evals spent) or ``"max_sweeps"``.
    """

    best_grid: Tensor
    best_score: float
    init_score: float
    history: list[dict]
    n_evals: int
    n_sweeps: int
    stopped: str
    init_grid: Tensor | None = None
    n_cache_hits: int = 0
    config: dict = dataclasses.field(default_factory=dict)

    def grid_meta(self) -> dict:
        """What :func:`imf.flow.schedules.save_grid` records beside ``best_grid`` (plain JSON types):
        ``save_grid(path, res.best_grid, **res.grid_meta())`` writes a grid ``load_grid`` reads."""
        return dict(score=self.best_score, init_score=self.init_score, n_evals=self.n_evals,
                    n_sweeps=self.n_sweeps, stopped=self.stopped, n_cache_hits=self.n_cache_hits,
                    init_grid=None if self.init_grid is None else self.init_grid.tolist(), config=self.config)

    def history_frame(self):
        """The history as a ``pandas.DataFrame``, one row per metric call (``time_grid`` holds lists)."""
        import pandas as pd  # lazy: the maths layer should not pay for pandas at import

        return pd.DataFrame([{k: h[k] for k in HISTORY_COLUMNS} for h in self.history], columns=list(HISTORY_COLUMNS))


def _as_grid(time_grid: Tensor | Sequence[float], name: str, min_gap: float) -> Tensor:
    """float64 (K+1,) copy of a valid grid whose gaps all exceed ``min_gap``; else GridError."""
    if torch.as_tensor(time_grid).dim() != 1:
        raise GridError(f"{name}: expected a 1-D grid (K+1,), got shape {tuple(torch.as_tensor(time_grid).shape)}")
    return validate_grid(time_grid, name=name, min_gap=min_gap)


def _call_metric(metric: Metric, g: Tensor, history: list[dict] | None = None) -> float:
    """``float(metric(g))``; an exception or a non-finite score becomes :class:`O3SError` naming ``g``."""
    grid = g.tolist()
    try:
        score = float(metric(g.clone()))  # a clone: a metric that mutates its input cannot corrupt the search
    except Exception as e:
        raise O3SError(f"O3S metric failed on time_grid={grid}: {type(e).__name__}: {e}", grid, history) from e
    if not math.isfinite(score):
        raise O3SError(f"O3S metric returned a non-finite score {score} on time_grid={grid}", grid, history)
    return score


class _BudgetSpent(Exception):
    """Raised inside the search when one more uncached evaluation would exceed max_evals."""


class _Evaluator:
    """Metric calls through the cache; records the history and the best (grid, score) so far.

    The best grid is also the coordinate-ascent state: every candidate differs from the best
    grid in one position only, and a candidate replaces it only with a strictly higher score.
    """

    def __init__(self, metric: Metric, cfg: O3SConfig, bar: Any):
        self.metric, self.cfg, self.bar = metric, cfg, bar
        self.cache: dict[tuple[float, ...], float] = {}
        self.history: list[dict] = []
        self.n_evals = self.n_cache_hits = 0
        self.sweep = self.position = 0
        self.best_grid: Tensor | None = None
        self.best_score = -math.inf

    def __call__(self, g: Tensor) -> float:
        # candidates are already snapped to the round_to lattice, so the grid itself is the key
        key = tuple(g.tolist())
        if key in self.cache:
            self.n_cache_hits += 1
            return self.cache[key]
        if self.n_evals >= self.cfg.max_evals:
            raise _BudgetSpent
        score = _call_metric(self.metric, g, self.history)
        self.cache[key] = score
        self.n_evals += 1
        if score > self.best_score:
            self.best_grid, self.best_score = g.clone(), score
        self.history.append({
            "eval": self.n_evals, "sweep": self.sweep, "position": self.position,
            "time_grid": list(key), "score": score, "best_so_far": self.best_score,
        })
        self.bar.update(1)
        self.bar.set_postfix(best=f"{self.best_score:.4g}", sweep=self.sweep, refresh=False)
        return score


def _lattice(left: float, right: float, min_gap: float, q: float) -> tuple[int, int] | None:
    """Integer range ``[k_lo, k_hi]`` of lattice points ``x = k q`` with ``x - left > min_gap``
    and ``right - x > min_gap`` (checked with the same float arithmetic as ``validate_grid``),
    or None if the open interval holds no lattice point."""
    k_lo = math.floor((left + min_gap) / q)
    while _snap_value(k_lo, q) - left <= min_gap:
        k_lo += 1
    k_hi = math.ceil((right - min_gap) / q)
    while right - _snap_value(k_hi, q) <= min_gap:
        k_hi -= 1
    return (k_lo, k_hi) if k_lo <= k_hi else None


def _snap_value(k: int, q: float) -> float:
    # round(., 12) strips float noise such as 0.30000000000000004 so JSON stays readable
    return round(k * q, 12)


def _search_position(ev: _Evaluator, i: int, cfg: O3SConfig) -> None:
    """Maximise the metric over ``t_i`` in ``(t_{i-1} + min_gap, t_{i+1} - min_gap)``, others frozen.

    The result is whatever the evaluator's best grid is afterwards (the current ``t_i`` stays
    unless a probe scores strictly higher).
    """
    current = ev.best_grid
    left, right = float(current[i - 1]), float(current[i + 1])
    a, b = left + cfg.min_gap, right - cfg.min_gap
    q = cfg.round_to
    ks = _lattice(left, right, cfg.min_gap, q) if q > 0 else None
    if q > 0 and ks is None:
        return  # the feasible interval is narrower than the lattice: nothing to try

    def f(x: float) -> float:
        if q > 0:
            x = _snap_value(min(max(round(x / q), ks[0]), ks[1]), q)
        elif not (x - left > cfg.min_gap and right - x > cfg.min_gap):
            return -math.inf  # a probe that float error pushed onto the boundary is infeasible
        cand = current.clone()
        cand[i] = x
        return ev(cand)

    n = cfg.ternary_iters
    if cfg.method == "golden":
        # golden-section: the surviving interior probe is reused, one new evaluation per reduction
        x1, x2 = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
        f1, f2 = f(x1), f(x2)
        for _ in range(n - 1):
            if f1 < f2:  # for a unimodal m the maximiser lies in [x1, b]
                a, x1, f1 = x1, x2, f2
                x2 = a + _INV_PHI * (b - a)
                f2 = f(x2)
            else:  # ... or in [a, x2]
                b, x2, f2 = x2, x1, f1
                x1 = b - _INV_PHI * (b - a)
                f1 = f(x1)
    else:
        # classic ternary search (as in the paper): two fresh probes at the thirds per reduction
        for _ in range(n):
            x1, x2 = a + (b - a) / 3, b - (b - a) / 3
            f1, f2 = f(x1), f(x2)
            if f1 < f2:
                a = x1
            else:
                b = x2


def o3s_search(
    metric: Metric,
    init_grid: Tensor | Sequence[float],
    cfg: O3SConfig | None = None,
    progress: bool = True,
) -> O3SResult:
    """O3S: coordinate-wise golden-section / ternary search of the step positions.

    Args:
        metric: ``metric(time_grid) -> float``, ``time_grid`` float64 (K+1,), higher is better;
            deterministic for a given grid (fixed dev set and evaluation noise).
        init_grid: (K+1,) strictly increasing from 0 to 1 with every gap > ``cfg.min_gap``;
            ``K = NFE`` stays fixed. It is evaluated as given (not snapped), so ``init_score``
            is exactly the score of the grid passed in.
        cfg: :class:`O3SConfig`.
        progress: show a tqdm bar with the best score.

    Algorithm: for each interior ``i = 1..K-1`` in turn, with the other steps frozen, bracket
    search (``cfg.method``, ``cfg.ternary_iters`` reductions) over the open interval
    ``(t_{i-1} + min_gap, t_{i+1} - min_gap)``; probes snap to multiples of ``cfg.round_to``
    inside it. A probe is accepted only if it beats the best score so far, so the score never
    decreases and the current position is always a candidate. Sweeps repeat until one gains
    < ``cfg.tol`` (or moves nothing), ``cfg.max_sweeps`` sweeps, or ``cfg.max_evals`` metric calls (it then stops
    mid-sweep and keeps the best grid). Scores are cached by grid; cache hits are free. The
    search assumes ``m`` is unimodal in each ``t_i`` (check with :func:`scan_all`); if it is
    not, it still never returns a worse grid, but may miss the maximum.

    Returns: :class:`O3SResult` with ``best_score >= init_score``.

    Raises: :class:`O3SError` if ``metric`` raises or returns a non-finite value (the message
    holds the grid); :class:`~imf.flow.schedules.GridError` for an invalid ``init_grid``.
    """
    from tqdm.auto import tqdm  # lazy, like the other optional front-ends of this module

    cfg = O3SConfig() if cfg is None else cfg
    cfg.validate()  # a directly constructed dataclass has not been through from_dict
    g0 = _as_grid(init_grid, "init_grid", cfg.min_gap)
    K = g0.numel() - 1

    bar = tqdm(total=cfg.max_evals, desc=f"O3S NFE={K}", unit="eval", disable=not progress)
    ev = _Evaluator(metric, cfg, bar)
    n_sweeps, stopped = 0, "converged"
    try:
        init_score = ev(g0)  # sweep 0, position 0; max_evals >= 1 so this never hits the budget
        if K >= 2:
            stopped = "max_sweeps"
            for sweep in range(1, cfg.max_sweeps + 1):
                n_sweeps = ev.sweep = sweep
                start = ev.best_score
                for i in range(1, K):
                    ev.position = i
                    _search_position(ev, i, cfg)
                gain = ev.best_score - start
                # a sweep that moved nothing would repeat itself exactly (same probes, all cached)
                if gain <= 0.0 or gain < cfg.tol:
                    stopped = "converged"
                    break
    except _BudgetSpent:
        stopped = "budget"
    finally:
        if stopped != "budget":  # converged before the budget: the search is done, so is its bar (n of n);
            n = bar.n  # reset(total=) is what also resizes a notebook bar (tqdm.notebook's widget max)
            bar.reset(total=n)
            bar.update(n)
        bar.close()

    best = validate_grid(ev.best_grid, name="O3S best grid", min_gap=cfg.min_gap)  # invariant check
    return O3SResult(
        best_grid=best, best_score=ev.best_score, init_score=init_score, history=ev.history,
        n_evals=ev.n_evals, n_sweeps=n_sweeps, stopped=stopped, init_grid=g0,
        n_cache_hits=ev.n_cache_hits, config=cfg.to_dict(),
    )


def scan_position(
    metric: Metric,
    time_grid: Tensor | Sequence[float],
    index: int,
    n_points: int = 11,
    min_gap: float = O3SConfig.min_gap,
) -> tuple[Tensor, Tensor]:
    """The metric as a function of ONE interior step's position, the others fixed (Fig. 2).

    ``time_grid`` (K+1,); ``index`` ``i`` in ``1..K-1``. ``t_i`` takes ``n_points`` evenly
    spaced values strictly inside ``(t_{i-1} + min_gap, t_{i+1} - min_gap)`` (the endpoints
    of ``linspace(lo, hi, n_points + 2)`` are dropped). Returns ``(positions, scores)``, both
    float64 (n_points,). Metric failures raise :class:`O3SError`. No caching: n_points calls.
    """
    g = _as_grid(time_grid, "time_grid", min_gap)
    K = g.numel() - 1
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= K - 1:
        raise ValueError(f"index must be an interior step in 1..{K - 1} of a {K}-step grid, got {index!r}")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
        raise ValueError(f"n_points must be a positive int, got {n_points!r}")
    left, right = float(g[index - 1]), float(g[index + 1])
    positions = torch.linspace(left + min_gap, right - min_gap, n_points + 2, dtype=torch.float64)[1:-1]
    scores = torch.empty(n_points, dtype=torch.float64)
    for j, x in enumerate(positions.tolist()):
        cand = g.clone()
        cand[index] = x
        validate_grid(cand, name=f"scan of t_{index}", min_gap=min_gap)
        scores[j] = _call_metric(metric, cand)
    return positions, scores


def scan_all(
    metric: Metric,
    time_grid: Tensor | Sequence[float],
    n_points: int = 11,
    min_gap: float = O3SConfig.min_gap,
    progress: bool = False,
) -> dict[int, tuple[Tensor, Tensor]]:
    """:func:`scan_position` for every interior index ``i = 1..K-1`` -> ``{i: (positions, scores)}``.

    Costs ``(K-1) * n_points`` metric calls; an NFE-1 grid gives ``{}``.
    """
    from tqdm.auto import tqdm

    g = _as_grid(time_grid, "time_grid", min_gap)
    K = g.numel() - 1
    return {
        i: scan_position(metric, g, i, n_points=n_points, min_gap=min_gap)
        for i in tqdm(range(1, K), desc="O3S scan", unit="step", disable=not progress)
    }
