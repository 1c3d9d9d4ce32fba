"""Intrinsic quality metrics of generated log-mel that need no pretrained judge.

All take log-mel (natural log) tensors (B, n_mels, T) with a frame mask (B, T) and pool
over the valid frames of the whole set.

* fine-structure ratio: variance of the harmonic fine structure (log-mel minus its 5-bin
  moving average along frequency, low half of the bins), generated / real. Over-smoothed
  (blurry) output loses harmonics: ratio << 1 (the prototype saw 0.31 at 1 step vs 0.74 at 32).
* noise correlation of the fine structure: corr(fs(generated), fs(z_0)). A multi-step flow
  carves detail out of its noise (positive); a 1-step flow sample whose velocity
  over-subtracts the noise keeps an inverted copy of it (negative), which the variance
  ratio above counts as "detail". Read the two together.
* global-variance ratio: per-bin variance over time, averaged over bins, generated / real.
* distance to a reference output on identical noise (e.g. the guided 32-step teacher).

L1 to the ground-truth mel rewards the blurry average and is NOT used as a quality metric.

Which way is better, for these and for the audio judges, is written once: :data:`HIGHER_IS_BETTER`
(read through :func:`higher_is_better`, :func:`beats`, and :func:`objective_score` that turns a metric
into the higher-is-better objective O3S maximises).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

HIGHER_IS_BETTER: dict[str, bool | None] = {
    # audio judges (imf.eval.judges), scored on vocoded output
    "wer": False,  # word error rate of the ASR transcript against the text
    "sim": True,  # speaker-embedding cosine to the prompt speaker's real speech
    "mos": True,  # predicted mean opinion score (DNSMOS P.808)
    "pesq": True,  # perceptual quality against the real recording of the same utterance
    "stoi": True,  # short-time objective intelligibility against the same real recording
    "rtf": False,  # real-time factor: compute seconds per second of audio
    # intrinsic metrics of this module, on log-mel
    "dist_ref": False,  # distance to a reference output on identical noise (e.g. the guided teacher)
    "fs_ratio": None,  # fine-structure variance / real speech's: no direction, 1 is best (too much detail is noise)
    "gv_ratio": None,  # global variance / real speech's: no direction, 1 is best
}
"""THE sign table: ``True`` if a larger value of the metric (column) is better, ``False`` if a
smaller one is, ``None`` for a ratio to real speech whose best value is 1 (neither direction).

Every place that ranks systems, shows arrows or turns a metric into an objective reads it
(through :func:`higher_is_better` and :func:`objective_score`), never its own copy.
"""


def higher_is_better(name: str, default: bool | None = None) -> bool:
    """Whether a larger ``name`` is better, from :data:`HIGHER_IS_BETTER`.

    A name not in the table gives ``default`` (e.g. a plug-in judge's own ``higher_is_better``);
    without one it is a ``KeyError`` listing the known names. A ratio with no direction
    (``fs_ratio``, ``gv_ratio``) is a ``ValueError``: rank it by closeness to 1 instead.
    """
    if name not in HIGHER_IS_BETTER:
        if default is None:
            raise KeyError(f"metric {name!r} is not in imf.eval.metrics.HIGHER_IS_BETTER {sorted(HIGHER_IS_BETTER)}; "
                           f"add it there or pass default=")
        return bool(default)
    better = HIGHER_IS_BETTER[name]
    if better is None:
        raise ValueError(f"metric {name!r} has no better direction (a ratio to real speech, best at 1); "
                         f"use its closeness -|log {name}|")
    return better


def beats(name: str, a: float, b: float, target: float = 1.0) -> bool:
    """Whether value ``a`` of metric ``name`` is strictly better than ``b``: by the direction of
    :data:`HIGHER_IS_BETTER`, or, for a ratio without direction, by being closer to ``target``
    (real speech's 1 by default; e.g. a reference system's own ratio)."""
    if HIGHER_IS_BETTER.get(name, True) is None:
        return abs(a - target) < abs(b - target)
    return a > b if higher_is_better(name) else a < b


def objective_column(kind: str) -> str:
    """The metric column an O3S objective ``kind`` reads (see :func:`objective_score`)."""
    return _objective(kind)[0]


def objective_score(kind: str, value: float) -> float:
    """The metric ``value`` of column :func:`objective_column` ``(kind)`` as a higher-is-better score.

    ``kind``:

    * a column of :data:`HIGHER_IS_BETTER` with a direction: ``value`` if higher is better, else
      ``-value`` (``"sim"`` -> sim, ``"wer"`` or ``"neg_wer"`` -> -wer, ``"neg_dist_ref"`` -> -dist_ref);
    * ``"<x>_closeness"`` for a ratio ``<x>_ratio`` without direction: ``-|log value|``
      (``"fs_closeness"``: 0 when the fine structure matches real speech);
    * a column not in the table (a plug-in judge's): ``value``, or ``-value`` as ``"neg_<column>"``.

    ``"neg_<x>"`` for a higher-is-better ``x`` is a ``ValueError`` (it would minimise quality).
    """
    _, sign = _objective(kind)
    if sign == 0:
        return -abs(math.log(value))
    return value if sign > 0 else -value


def _objective(kind: str) -> tuple[str, int]:
    """``kind`` -> (column, sign): sign +1 / -1 for a directional column, 0 for closeness to 1."""
    if kind.endswith("_closeness"):
        column = kind[: -len("_closeness")] + "_ratio"
        if column not in HIGHER_IS_BETTER or HIGHER_IS_BETTER[column] is not None:
            raise ValueError(f"objective {kind!r}: {column!r} is not a ratio without direction in HIGHER_IS_BETTER")
        return column, 0
    negated = kind.startswith("neg_")
    column = kind[4:] if negated else kind
    better = HIGHER_IS_BETTER.get(column, not negated)  # a plug-in column: the prefix says
    if better is None:
        raise ValueError(f"objective {kind!r}: {column!r} has no better direction; use "
                         f"{column.removesuffix('_ratio')}_closeness")
    if negated and better:
        raise ValueError(f"objective {kind!r}: {column!r} is higher-is-better; use {column!r}")
    return column, 1 if better else -1


def _valid(mel: Tensor, mask: Tensor | None) -> Tensor:
    """(B, C, T), (B, T) -> (C, N) valid frames of the set."""
    if mask is None:
        return mel.permute(1, 0, 2).reshape(mel.shape[1], -1)
    return mel.permute(1, 0, 2)[:, mask]


def fine_structure(mel: Tensor, width: int = 5) -> Tensor:
    """Log-mel minus its ``width``-bin moving average along frequency: (B, C, T) -> (B, C, T)."""
    pad = width // 2
    x = mel.transpose(1, 2).reshape(-1, 1, mel.shape[1])
    smooth = F.avg_pool1d(F.pad(x, (pad, pad), mode="replicate"), width, stride=1)
    return (x - smooth).reshape(mel.shape[0], mel.shape[2], mel.shape[1]).transpose(1, 2)


def fine_structure_variance(mel: Tensor, mask: Tensor | None = None, width: int = 5) -> float:
    """Variance of the fine structure over the low half of the bins and all valid frames."""
    fs = fine_structure(mel.double(), width)[:, : mel.shape[1] // 2]
    return _valid(fs, mask).var().item()


def fine_structure_ratio(gen: Tensor, real: Tensor, mask: Tensor | None = None) -> float:
    """``Var_fs(gen) / Var_fs(real)``; 1 means as much harmonic detail as real speech."""
    return fine_structure_variance(gen, mask) / fine_structure_variance(real, mask)


def global_variance(mel: Tensor, mask: Tensor | None = None) -> float:
    """Mean over bins of the per-bin variance over valid frames."""
    return _valid(mel.double(), mask).var(dim=1).mean().item()


def global_variance_ratio(gen: Tensor, real: Tensor, mask: Tensor | None = None) -> float:
    return global_variance(gen, mask) / global_variance(real, mask)


def distance(gen: Tensor, ref: Tensor, mask: Tensor | None = None) -> float:
    """Mean absolute difference over valid frames and bins (log-mel units)."""
    return _valid((gen - ref).abs().double(), mask).mean().item()


def distance_per_utterance(gen: Tensor, ref: Tensor, mask: Tensor | None = None) -> Tensor:
    """(N,) float64: :func:`distance` of each utterance ``gen[i]`` to ``ref[i]`` over its own valid frames."""
    return torch.tensor([distance(gen[i:i + 1], ref[i:i + 1], None if mask is None else mask[i:i + 1])
                         for i in range(gen.shape[0])], dtype=torch.float64)


def intrinsic_per_utterance(gen: Tensor, real: Tensor, mask: Tensor | None = None,
                            ref: Tensor | None = None) -> dict[str, Tensor]:
    """:func:`intrinsic_metrics` of each utterance over its own valid frames: name -> (N,) float64.

    ``gen``, ``real``, ``ref`` (N, C, T) log-mel, ``mask`` (N, T); ``dist_ref`` only with ``ref``.
    """
    def each(fn, other: Tensor) -> Tensor:
        return torch.tensor([fn(gen[i:i + 1], other[i:i + 1], None if mask is None else mask[i:i + 1])
                             for i in range(gen.shape[0])], dtype=torch.float64)

    out = {"fs_ratio": each(fine_structure_ratio, real), "gv_ratio": each(global_variance_ratio, real)}
    if ref is not None:
        out["dist_ref"] = distance_per_utterance(gen, ref, mask)
    return out


def paired_verdict(d, better: str, worse: str, z: float = 2.0) -> dict:
    """Paired per-utterance gains ``d`` (N,) (positive: the first system is better; NaNs dropped):
    mean ``gain``, its standard error ``gain_se`` (sample std / sqrt(n)), the utterances won, and a
    verdict: ``better`` if the gain exceeds ``z`` standard errors, ``worse`` if below minus that,
    else ``"within noise"``."""
    d = torch.as_tensor(d, dtype=torch.float64).flatten()
    d = d[~torch.isnan(d)]
    n = d.numel()
    gain = d.mean().item() if n else float("nan")
    se = (d.std(unbiased=True) / n ** 0.5).item() if n > 1 else float("nan")
    verdict = better if gain > z * se else (worse if gain < -z * se else "within noise")
    return {"gain": gain, "gain_se": se, "n": n, "wins": int((d > 0).sum()), "verdict": verdict}


def noise_correlation(gen: Tensor, z_0: Tensor, mask: Tensor | None = None) -> float:
    """Pearson correlation of the fine structures (low half of the bins, valid frames) of
    ``gen`` and the noise ``z_0`` it was sampled from; both (B, C, T) in the same space."""
    half = gen.shape[1] // 2
    a = _valid(fine_structure(gen.double())[:, :half], mask).flatten()
    b = _valid(fine_structure(z_0.double())[:, :half], mask).flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def intrinsic_metrics(gen: Tensor, real: Tensor, mask: Tensor | None = None, ref: Tensor | None = None) -> dict[str, float]:
    """All intrinsic metrics at once; ``dist_ref`` only when a reference output is given."""
    out = {"fs_ratio": fine_structure_ratio(gen, real, mask), "gv_ratio": global_variance_ratio(gen, real, mask)}
    if ref is not None:
        out["dist_ref"] = distance(gen, ref, mask)
    return out
