"""O3S with a chosen objective: search grids on a dev set, judge them on a held-out test set.

The objective is a choice (:func:`parse_objective`):

* a single term, in the metric's own units turned higher-is-better
  (:func:`imf.eval.metrics.objective_score`): ``"dist_ref"`` (minus the mel distance to the
  converged guided teacher on the same noise), ``"wer"`` (minus WER), ``"sim"``, ``"mos"``,
  ``"fs_closeness"`` / ``"gv_closeness"`` (``-|log ratio|``);
* a weighted mix ``{"dist_ref": 1.0, "wer": 0.5}``. Each term is first **normalised** by its spread
  across the dev utterances: ``s_k`` = standard deviation over dev utterances of the term's score on
  the search's starting grid (the uniform grid of the same system and NFE). A mix's score of one
  utterance ``i`` of a set of ``N`` is::

      u_i = sum_k  w_k * score_k,i / s_k * N / n_k        (score_k,i = 0 where term k is NaN)

  with ``n_k`` the utterances term ``k`` scores (WER only scores reliable voices), so that the set's
  score, the mean of ``u_i``, is exactly ``sum_k w_k * mean_k / s_k``: the weighted sum of the
  normalised terms. A weight is thus "how many dev-utterance standard deviations of this term one
  unit of objective is worth": ``{"dist_ref": 1, "wer": 0.5}`` trades one spread of distance for two
  of WER. The dev scales are reused unchanged on the test set.

A set's score is the mean of its per-utterance scores (NaN skipped), so the paired per-utterance
difference of two grids on the same utterances and noise has exactly the difference of the scores as
its mean: :func:`imf.eval.metrics.paired_verdict` calls it a ``"win"`` only beyond ``z = 2``
standard errors.

Generic over model families: a :class:`Bench` is any set of velocity models with a dev and a test
:class:`~imf.eval.evalset.EvalSet` and a reference model (token2mel in notebook 04, text2mel in 08)::

    bench = Bench({"student": student, "teacher": guided(teacher, 2.0)}, dev, test, guided(teacher, 2.0), 32,
                  judges=AudioJudges(vocoder, [make_judge("wer")], voices))
    study = objective_study(bench, ["dist_ref", {"dist_ref": 1.0, "wer": 0.5}],
                            {"student": [2, 3], "teacher": [5, 6, 7]}, O3SConfig(max_evals=60))
    study.table   # one row per (objective, system, NFE, baseline)
    objective_note(study.table)
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from imf.eval.evalset import EvalSet
from imf.eval.metrics import objective_column, objective_score, paired_verdict
from imf.eval.sweep import INTRINSIC, generate, judge_table, utterance_scores
from imf.flow import schedules
from imf.flow.o3s import O3SConfig, O3SResult, o3s_search
from imf.flow.schedules import GridError

TERMS = ("dist_ref", "wer", "sim", "mos", "fs_closeness", "gv_closeness")  # objective terms (alone or mixed)
BASELINES = ("uniform", "sway", "epss")  # grids a found grid is judged against (epss only where it has a table)
WIN, LOSS, TIE = "win", "loss", "within noise"  # verdicts of a found grid against a baseline


class ObjectiveError(ValueError):
    """An objective is unknown, has a bad weight, or cannot be normalised (names the parameter / term)."""


@dataclasses.dataclass(frozen=True)
class Objective:
    """A validated objective: ``weights`` ((term, weight), ...) in the order given; ``mix``: given as a
    mapping (its terms are normalised, see the module docstring), else a single term in its own units."""
    weights: tuple[tuple[str, float], ...]
    mix: bool = False

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.weights)

    @property
    def columns(self) -> tuple[str, ...]:
        """The metric columns the terms read (``"dist_ref"``, ``"wer"``, ``"fs_ratio"``, ...)."""
        return tuple(objective_column(t) for t in self.terms)

    @property
    def name(self) -> str:
        """``"dist_ref"``, or ``"1*dist_ref + 0.5*wer"`` for a mix."""
        if not self.mix:
            return self.terms[0]
        return " + ".join(f"{w:g}*{t}" for t, w in self.weights)

    @property
    def slug(self) -> str:
        """A folder name: ``"dist_ref"``, ``"mix_dist_ref1_wer0.5"``."""
        return self.name if not self.mix else "mix_" + "_".join(f"{t}{w:g}" for t, w in self.weights)

    def spec(self) -> str | dict[str, float]:
        """The JSON form it was given in (a name or a mapping)."""
        return dict(self.weights) if self.mix else self.terms[0]


def parse_objective(spec: Any, name: str = "objective") -> Objective:
    """``"dist_ref"`` | ``"wer"`` | ``"sim"`` | ... (:data:`TERMS`) or a mapping ``{term: weight}`` (weights
    finite and > 0) -> :class:`Objective`; anything else is an :class:`ObjectiveError` naming ``name``."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        if spec not in TERMS:
            raise ObjectiveError(f"{name}: unknown objective {spec!r}; choose one of {list(TERMS)} "
                                 "or a weighted mix such as {'dist_ref': 1.0, 'wer': 0.5}")
        return Objective(((spec, 1.0),))
    if isinstance(spec, Mapping):
        if not spec:
            raise ObjectiveError(f"{name}: an empty mix; give weights such as {{'dist_ref': 1.0, 'wer': 0.5}}")
        weights = []
        for term, w in spec.items():
            if term not in TERMS:
                raise ObjectiveError(f"{name}: unknown objective term {term!r} in the mix {dict(spec)}; "
                                     f"choose from {list(TERMS)}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
                raise ObjectiveError(f"{name}: weight of {term!r} must be a finite number > 0, got {w!r}")
            weights.append((term, float(w)))
        return Objective(tuple(weights), mix=True)
    raise ObjectiveError(f"{name}: an objective is a name {list(TERMS)} or a mapping {{term: weight}}, "
                         f"got {type(spec).__name__} {spec!r}")


def parse_objectives(specs: Any, name: str = "objectives") -> list[Objective]:
    """A non-empty list of objectives (:func:`parse_objective`), each named ``name[i]`` in errors; no repeats."""
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence) or not specs:
        raise ObjectiveError(f"{name} must be a non-empty list of objectives, got {specs!r}")
    out = [parse_objective(s, f"{name}[{i}]") for i, s in enumerate(specs)]
    names = [o.name for o in out]
    if len(set(names)) != len(names):
        raise ObjectiveError(f"{name}: an objective is repeated in {names}")
    return out


# ---------------------------------------------------------------------------------------------
# per-utterance scores
# ---------------------------------------------------------------------------------------------
def metric_table(es: EvalSet, x: Tensor, columns: Sequence[str], reference: Tensor | None = None,
                 judges: Any = None) -> dict[str, Tensor]:
    """Raw per-utterance metrics of normalised outputs ``x`` (N, C, T) on ``es``: column -> (N,) float64
    (metric units; NaN where a judge skips an utterance). ``reference`` (N, C, T) for ``dist_ref``; the
    judge columns come from one pass of ``judges`` (:func:`imf.eval.sweep.judge_table`)."""
    out = {c: utterance_scores(es, x, c, reference=reference) for c in columns if c in INTRINSIC}
    audio = [c for c in columns if c not in INTRINSIC]
    if audio:
        if judges is None:
            raise ObjectiveError(f"objective column(s) {audio} need audio judges (Bench.judges is None)")
        table = judge_table(judges, es, x)
        for c in audio:
            if c not in table:
                raise ObjectiveError(f"objective column {c!r}: the judges scored {sorted(table.columns)}; "
                                     f"add a {c!r} judge (for wer: voices it is reliable on)")
            out[c] = torch.from_numpy(table[c].to_numpy(dtype="float64", copy=True))
    return out


def judged_columns(specs: Any) -> set[str]:
    """The audio-judge columns (not intrinsic metrics) the objectives ``specs`` read: what their bench's judges must score."""
    return {c for o in parse_objectives(specs) for c in o.columns if c not in INTRINSIC}


def term_scores(obj: Objective, table: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Each term's per-utterance score, higher is better (:func:`imf.eval.metrics.objective_score`): term -> (N,)."""
    return {t: torch.tensor([objective_score(t, v) for v in table[objective_column(t)].tolist()], dtype=torch.float64)
            for t in obj.terms}


def objective_scales(obj: Objective, table: Mapping[str, Tensor]) -> dict[str, float]:
    """The normalisers ``s_k`` of a mix: each term's standard deviation over the utterances of ``table``
    (the dev set on the starting grid); 1.0 for a single term. A term that does not vary (or scores
    fewer than two utterances) cannot be normalised: :class:`ObjectiveError` naming it."""
    if not obj.mix:
        return {obj.terms[0]: 1.0}
    scales = {}
    for t, s in term_scores(obj, table).items():
        s = s[~torch.isnan(s)]
        sd = s.std(unbiased=True).item() if s.numel() > 1 else float("nan")
        if not (math.isfinite(sd) and sd > 0):
            raise ObjectiveError(f"objective {obj.name!r}: term {t!r} cannot be normalised (standard deviation "
                                 f"{sd} over {s.numel()} dev utterances); drop it from the mix")
        scales[t] = sd
    return scales


def utterance_objective(obj: Objective, table: Mapping[str, Tensor], scales: Mapping[str, float]) -> Tensor:
    """(N,) per-utterance objective (module docstring): a single term's score (NaN kept), or the mix
    ``u_i = sum_k w_k score_k,i / s_k * N / n_k`` (NaN terms count 0) whose mean is the weighted sum of
    the normalised term means."""
    scores = term_scores(obj, table)
    if not obj.mix:
        return scores[obj.terms[0]]
    total = None
    for t, w in obj.weights:
        s = scores[t]
        valid = ~torch.isnan(s)
        n_k = int(valid.sum())
        if n_k == 0:
            raise ObjectiveError(f"objective {obj.name!r}: term {t!r} scored no utterance")
        part = torch.where(valid, s, torch.zeros_like(s)) * (w / scales[t] * s.numel() / n_k)
        total = part if total is None else total + part
    return total


def set_score(per_utterance: Tensor) -> float:
    """A set's objective: the mean of its per-utterance scores, NaN skipped."""
    v = per_utterance[~torch.isnan(per_utterance)]
    return v.mean().item() if v.numel() else float("nan")


# ---------------------------------------------------------------------------------------------
# the bench: systems, dev and test sets, reference, judges (generic over model families)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Bench:
    """What an objective study searches and judges: velocity ``systems`` (name -> model, e.g. the student
    and the guided teacher), the ``dev`` set (search) and the held-out ``test`` set (verdicts), the
    ``reference`` model run at ``reference_nfe`` uniform steps (the converged guided teacher, the
    target of ``dist_ref``), the audio ``judges`` the objectives need (``None``: intrinsic only).

    Metric tables are cached per (split, system, grid); outputs are not kept."""
    systems: dict[str, Callable[..., Tensor]]
    dev: EvalSet
    test: EvalSet
    reference: Callable[..., Tensor]
    reference_nfe: int = 32
    judges: Any = None
    batch_size: int = 32
    _refs: dict = dataclasses.field(default_factory=dict, repr=False)
    _tables: dict = dataclasses.field(default_factory=dict, repr=False)

    def split(self, split: str) -> EvalSet:
        if split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
        return self.dev if split == "dev" else self.test

    def reference_output(self, split: str) -> Tensor:
        """The reference model's output (N, C, T) on ``split`` at ``reference_nfe`` uniform steps (cached)."""
        if split not in self._refs:
            self._refs[split], _, _ = generate(self.reference, self.split(split), schedules.uniform(self.reference_nfe),
                                               batch_size=self.batch_size)
        return self._refs[split]

    def table(self, split: str, system: str, time_grid: Tensor, columns: Sequence[str]) -> dict[str, Tensor]:
        """:func:`metric_table` of ``system`` sampled on ``time_grid`` over ``split`` (cached per column)."""
        if system not in self.systems:
            raise KeyError(f"unknown system {system!r}; the bench has {sorted(self.systems)}")
        key = (split, system, tuple(torch.as_tensor(time_grid, dtype=torch.float64).tolist()))
        have = self._tables.setdefault(key, {})
        missing = [c for c in dict.fromkeys(columns) if c not in have]
        if missing:
            es = self.split(split)
            x, _, _ = generate(self.systems[system], es, torch.as_tensor(time_grid, dtype=torch.float64),
                               batch_size=self.batch_size)
            ref = self.reference_output(split) if "dist_ref" in missing else None
            have.update(metric_table(es, x, missing, reference=ref, judges=self.judges))
        return {c: have[c] for c in columns}

    def scores(self, obj: Objective, split: str, system: str, time_grid: Tensor,
               scales: Mapping[str, float]) -> Tensor:
        """(N,) per-utterance objective of ``system`` on ``time_grid`` over ``split``."""
        return utterance_objective(obj, self.table(split, system, time_grid, obj.columns), scales)


def baseline_grids(nfe: int, baselines: Sequence[str] = BASELINES) -> dict[str, Tensor]:
    """The baselines that exist at ``nfe`` (EPSS only for the NFEs :mod:`imf.flow.schedules` has tables for)."""
    out = {}
    for kind in baselines:
        try:
            out[kind] = schedules.make_grid(kind, nfe)
        except GridError:
            if kind not in ("epss", "epss_raw", "epss_f5"):
                raise
    return out


@dataclasses.dataclass
class ObjectiveStudy:
    """:func:`objective_study`'s result: ``table`` (one row per objective, system, NFE, baseline),
    ``searches`` (one row per search) and the :class:`~imf.flow.o3s.O3SResult` of each search keyed by
    (objective name, system, nfe)."""
    table: pd.DataFrame
    searches: pd.DataFrame
    results: dict[tuple[str, str, int], O3SResult]
    objectives: list[Objective]

    def _repr_html_(self) -> str:  # a notebook cell ending in the study shows its held-out table
        return self.table._repr_html_()


def _fmt_grid(g: Tensor) -> str:
    return " ".join(f"{v:.3f}" for v in g.tolist())


def objective_study(bench: Bench, objectives: Sequence[Any], nfes: Mapping[str, Sequence[int]],
                    cfg: O3SConfig | None = None, baselines: Sequence[str] = BASELINES, z: float = 2.0,
                    progress: bool = True,
                    on_search: Callable[[Objective, str, int, O3SResult], None] | None = None,
                    searched: Mapping[tuple[str, str, int], Tensor] | None = None) -> ObjectiveStudy:
    """For every objective, system ``s`` of ``nfes`` and NFE ``n`` in ``nfes[s]``: O3S from the uniform grid on
    the dev set (:func:`imf.flow.o3s.o3s_search`, ``cfg``), then the found grid against every baseline grid
    at ``n`` on the test set, paired per utterance (same utterances, same noise): gain = mean of
    (found - baseline) objective scores, its standard error, ``"win"`` / ``"loss"`` beyond ``z`` standard
    errors else ``"within noise"``. ``on_search`` is called as each grid is settled, searched or reused (e.g. to write it).
    ``searched``: grids already found on the dev set by a search on the same objective, keyed by
    ``(objective name, system, n)`` — judged as found, not searched again (their search row says so, ``evals`` 0).

    Table columns: objective, system, nfe, baseline, dev_found, dev_baseline, test_found, test_baseline,
    gain, gain_se, n, wins, verdict, grid (the found grid), baseline_grid.
    """
    objs = parse_objectives(objectives)
    for s, ns in nfes.items():
        if s not in bench.systems:
            raise KeyError(f"nfes: unknown system {s!r}; the bench has {sorted(bench.systems)}")
        if isinstance(ns, (str, int)) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in ns):
            raise TypeError(f"nfes[{s!r}] must be a list of positive ints (e.g. [2, 3]), got {ns!r}")
    cfg = cfg or O3SConfig()
    rows, search_rows, results = [], [], {}
    for obj in objs:
        for system, ns in nfes.items():
            for n in ns:
                start = schedules.uniform(n)
                scales = objective_scales(obj, bench.table("dev", system, start, obj.columns))
                dev = lambda g: set_score(bench.scores(obj, "dev", system, g, scales))  # noqa: E731
                if (obj.name, system, n) in (searched or {}):
                    best = schedules.validate_grid(searched[(obj.name, system, n)])
                    res = O3SResult(best, dev(best), dev(start), [], 0, 0, "reused: the same objective's search",
                                    init_grid=start)
                else:
                    res = o3s_search(dev, start, cfg, progress=progress)
                    results[(obj.name, system, n)] = res
                if on_search is not None:
                    on_search(obj, system, n, res)
                search_rows.append({"objective": obj.name, "system": system, "nfe": n, "dev_init": res.init_score,
                                    "dev_best": res.best_score, "evals": res.n_evals, "stopped": res.stopped,
                                    "scales": " ".join(f"{t}={v:.4g}" for t, v in scales.items()),
                                    "grid": _fmt_grid(res.best_grid)})
                found_test = bench.scores(obj, "test", system, res.best_grid, scales)
                for kind, g in baseline_grids(n, baselines).items():
                    base_test = bench.scores(obj, "test", system, g, scales)
                    v = paired_verdict(found_test - base_test, WIN, LOSS, z=z)
                    rows.append({"objective": obj.name, "system": system, "nfe": n, "baseline": kind,
                                 "dev_found": res.best_score,
                                 "dev_baseline": set_score(bench.scores(obj, "dev", system, g, scales)),
                                 "test_found": set_score(found_test), "test_baseline": set_score(base_test),
                                 "gain": v["gain"], "gain_se": v["gain_se"], "n": v["n"], "wins": v["wins"],
                                 "verdict": v["verdict"], "grid": _fmt_grid(res.best_grid),
                                 "baseline_grid": _fmt_grid(g)})
    return ObjectiveStudy(pd.DataFrame(rows), pd.DataFrame(search_rows), results, objs)


def objective_note(table: pd.DataFrame, z: float = 2.0) -> str:
    """One paragraph, written from ``table``'s numbers: which objectives give a held-out win beyond ``z``
    standard errors (and where), which lose, which stay within noise."""
    if table.empty:
        return "No O3S objective was run."
    parts, winners = [], []
    for name, g in table.groupby("objective", sort=False):
        wins, losses = g[g.verdict == WIN], g[g.verdict == LOSS]
        if len(wins):
            winners.append(name)
            where = "; ".join(f"{r.system} {r.nfe} NFE vs {r.baseline} ({r.gain:+.4g} ± {r.gain_se:.2g})"
                              for r in wins.itertuples())
            parts.append(f"`{name}` wins in {len(wins)} of {len(g)} comparisons: {where}")
        else:
            parts.append(f"`{name}` wins in none of its {len(g)} comparisons")
        if len(losses):
            parts[-1] += (f", and loses in {len(losses)} ("
                          + "; ".join(f"{r.system} {r.nfe} NFE vs {r.baseline}" for r in losses.itertuples()) + ")")
    head = (f"Held-out verdict (test split, paired per utterance, a win only beyond {z:g} standard errors): "
            + (f"{_join(winners)} {'gives' if len(winners) == 1 else 'give'} at least one held-out win. "
               if winners else "no objective gives a held-out win over any baseline. "))
    return head + ". ".join(parts) + "."


def _join(names: Sequence[str]) -> str:
    names = [f"`{n}`" for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(text: str) -> str:
    """A folder-safe form of a system name (``"teacher + CFG 2"`` -> ``"teacher_CFG_2"``)."""
    return _SLUG.sub("_", text).strip("_")
