"""What notebook 06_listen opens and records: its validated parameters, the runs it listens to,
the comparison it renders, and its closing report.

``cfg = ListenConfig.from_params(globals())`` validates the notebook's ``parameters`` cell
before any work (an unknown or mistyped name is an error naming it); :func:`open_listen`
checks that 01_teacher and 02_distill have run and loads the teacher, the student, the corpus,
the vocoder (Griffin-Lim if none was trained), the audio judges and the eval set of the
profile; :func:`compare` renders the guided teacher and the student on the eval set's fixed
noise; :func:`static_players` is what a reader of the executed copy hears; :func:`report`
writes ``results/06_listen/`` (``scores.csv``, ``mean_scores.csv``, ``metrics.json``) and
the README section.

The opening part is the minimal form of what ``imf.runs.open`` does for every notebook; it
is meant to be folded into it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from imf.core.config import Config, ConfigError, require
from imf.core.runtime import atomic_write_json
from imf.eval.audio import AudioJudges
from imf.eval.evalset import EvalSet
from imf.eval.judges import JUDGES, JudgesConfig, judge_labels, judges_note, make_judges
from imf.eval.listen import TRUTH, Comparison, render_comparison
from imf.eval.systems import System, guided
from imf.runs.open import open_runs, relative
from imf.runs.profiles import PROFILES
from imf.runs.report import table_md, write_section
from imf.runs.splits import by_split, on_split, side_by_side, split_voices, unseen_eval_set, zero_shot_text
from imf.runs.voices import wer_voices
from imf.viz.listen import static_comparison

SECTION = "06_listen"


@dataclasses.dataclass(frozen=True)
class ListenConfig(Config):
    """The parameters of notebook 06_listen (its ``parameters`` cell, names lower-cased)."""
    profile: str = "small"  # tiny | small | paper
    n_utts: int = 8  # test-split utterances to render (0: the profile's eval size)
    max_frames: int = 0  # longest utterance, frames of 16 ms (0: the profile's eval max_frames)
    nfe_choices: tuple[int, ...] = (1, 2, 4, 32)  # NFE choices of the guided teacher and of the student
    cfg_scale: float = 0.0  # guidance w of the teacher, v_u + w (v_c - v_u) (0: the profile's default)
    judges: tuple[str, ...] = ("wer", "sim", "mos")  # judges of imf.eval.judges ([] for none)
    copy_synthesis: bool = True  # also play the real mel through the vocoder
    static_utts: int = 2  # utterances in the static players (one player per row each)
    zero_shot_utts: int = 4  # utterances of the profile's eval.zero_shot_split (held-out voices) in the by-split table (0: none)
    teacher_run: str = "teacher"  # run folder written by 01_teacher
    student_run: str = ""  # run folder of the student ("": 02_distill's final student)
    vocoder_run: str = "vocoder"  # run folder of a trained vocoder ("" or no checkpoint: Griffin-Lim)

    def validate(self) -> None:
        require(self.profile in PROFILES, "profile", f"{self.profile!r} is not one of {sorted(PROFILES)}")
        require(self.n_utts >= 0, "n_utts", "must be >= 0")
        require(self.max_frames >= 0, "max_frames", "must be >= 0")
        require(len(self.nfe_choices) > 0, "nfe_choices", "needs at least one NFE")
        require(all(n >= 1 for n in self.nfe_choices), "nfe_choices", f"every NFE must be >= 1, got {self.nfe_choices}")
        require(self.cfg_scale >= 0, "cfg_scale", "must be >= 0 (0: the profile's default)")
        for j in self.judges:
            require(j in JUDGES or ":" in j, "judges", f"{j!r} is neither one of {sorted(JUDGES)} nor 'module:factory'")
        require(self.static_utts >= 0, "static_utts", "must be >= 0")
        require(self.zero_shot_utts >= 0, "zero_shot_utts", "must be >= 0")
        require(bool(self.teacher_run), "teacher_run", "must name a run folder")

    @classmethod
    def from_params(cls, namespace: Mapping[str, Any]) -> "ListenConfig":
        """The UPPER_CASE names of a notebook's namespace (its parameters, papermill's injected
        ones included), lower-cased and validated; a name that is not a field is an error."""
        params = {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in params if k.lower() not in fields)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown notebook parameter(s) {unknown}; "
                              f"known: {sorted(f.upper() for f in fields)}")
        return cls.from_dict({k.lower(): v for k, v in params.items()})


@dataclasses.dataclass
class ListenSetup:
    """Everything 06_listen works on, opened by :func:`open_listen`."""
    cfg: ListenConfig
    teacher: Any  # the token2mel teacher (EMA weights, eval mode)
    student: Any  # the IntMeanFlow student
    corpus: Any
    vocoder: Any  # ``vocode(log_mel (B, C, T)) -> wav (B, S)``
    vocoder_name: str  # its checkpoint, or the Griffin-Lim fallback
    judges: AudioJudges | None  # None when cfg.judges is empty
    es: EvalSet
    eval: dict[str, Any]  # the profile's eval section
    cfg_scale: float  # the teacher's guidance w
    out: Path  # results/06_listen
    prompt_frames: int = 50  # the profile's data.prompt_frames (the zero-shot eval set's prompts)


def open_listen(cfg: ListenConfig) -> ListenSetup:
    """Check the teacher and student runs exist, then load them, the corpus, the vocoder, the
    judges (WER only on the voices 00_vocoder found the ASR reliable on) and the eval set."""
    wb = open_runs(cfg.profile, SECTION, cfg.teacher_run, cfg.student_run, cfg.n_utts, max_frames=cfg.max_frames)
    voc_ckpt = wb.vocoder_checkpoint(cfg.vocoder_run)
    vocoder = wb.vocoder(cfg.vocoder_run)
    judges = None
    if cfg.judges:
        judges = AudioJudges(vocoder, make_judges(JudgesConfig(judges=cfg.judges, progress=False)), wer_voices())
    e, es = wb.P["eval"], wb.es
    setup = ListenSetup(cfg, wb.teacher, wb.student, wb.corpus, vocoder,
                        relative(voc_ckpt) if voc_ckpt else "Griffin-Lim (no trained vocoder)", judges, es, e,
                        cfg.cfg_scale or e["cfg_scale"], wb.out, wb.P["data"]["prompt_frames"])
    print(f"{len(es)} utterances of {e['split']!r}, vocoder: {setup.vocoder_name}, "
          f"judges: {list(cfg.judges) or 'none'}")
    return setup


def compare(setup: ListenSetup, es: EvalSet | None = None, eager: bool = False) -> Comparison:
    """The guided teacher (largest NFE shown first) and the student (smallest first) at every
    NFE choice, on uniform grids and the eval set's fixed noise (``es``; None: ``setup.es``). Lazy unless
    ``eager``: nothing is sampled until a view asks (the panel one utterance at a time; :func:`report` every point)."""
    w, nfes = setup.cfg_scale, list(setup.cfg.nfe_choices)
    teacher = System(f"teacher + CFG {w:g}", guided(setup.teacher, w))
    student = System("IntMeanFlow student", setup.student)
    return render_comparison(setup.es if es is None else es, [teacher, student], setup.vocoder, setup.judges, nfes=nfes,
                             copy_synthesis=setup.cfg.copy_synthesis,
                             default_nfe={teacher.name: max(nfes), student.name: min(nfes)},
                             batch_size=setup.eval["batch_size"], eager=eager, progress=False)


def static_players(setup: ListenSetup, comp: Comparison):
    """Static players (ground truth and every system at its default NFE) for the first
    ``static_utts`` utterances, the figure saved to ``results/06_listen/comparison.png``."""
    points = [TRUTH] + [(name, comp.default_nfe[name]) for name in comp.systems]
    return static_comparison(comp, utts=list(range(min(setup.cfg.static_utts, len(setup.es)))), points=points,
                             figure_path=setup.out / "comparison.png")


def compare_unseen(setup: ListenSetup) -> tuple[EvalSet, pd.DataFrame] | None:
    """The same systems rendered and judged on ``zero_shot_utts`` utterances of the zero-shot split (held-out
    voices, its own fixed noise, cross-sentence prompts), under a forked RNG (:func:`imf.runs.splits.on_split`):
    (its eval set, mean scores per system as :meth:`Comparison.mean_scores`); None when the corpus has no such
    split or ``zero_shot_utts`` is 0."""
    split, E = setup.eval.get("zero_shot_split", "unseen"), setup.eval
    if not setup.cfg.zero_shot_utts:
        return None
    es = unseen_eval_set(setup.corpus, split, setup.cfg.zero_shot_utts, E["seed"], setup.cfg.max_frames or E["max_frames"],
                         setup.prompt_frames)
    return on_split(setup.corpus, split, lambda: (es, compare(setup, es, eager=True).mean_scores()))


def _zero_shot_md(setup: ListenSetup, splits: pd.DataFrame, unseen: tuple[EvalSet, pd.DataFrame] | None) -> str:
    seen, split = setup.eval["split"], setup.eval.get("zero_shot_split", "unseen")
    if unseen is None:
        return f"Zero-shot: no `{split}` split rendered (none in this corpus, or ZERO_SHOT_UTTS = 0): seen voices only."
    cols = [c for c in splits.columns if c not in ("split", "system", "nfe")]
    nfes, voices = setup.cfg.nfe_choices, split_voices(setup.corpus, split)
    text = zero_shot_text(splits, f"teacher + CFG {setup.cfg_scale:g}", max(nfes), "IntMeanFlow student", min(nfes), voices,
                          seen, split) if "fs_ratio" in splits else ""
    return f"""**Seen vs held-out voices** (`{seen}` split, the {len(setup.es)} utterances above, and `{split}` split:
{', '.join(split_voices(setup.corpus, split))}, {len(unseen[0])} utterances with their own noise and cross-sentence prompts
from the same speaker; `06_listen/mean_scores_by_split.csv`; the live panel shows the seen split only):

{table_md(side_by_side(splits, list(dict.fromkeys(splits.system)), cols, seen, split))}

{text}"""


def report(setup: ListenSetup, comp: Comparison) -> dict[str, Any]:
    """Render every (system, NFE) point not rendered yet (on the whole eval set), write the
    per-utterance and mean scores, ``metrics.json`` and the README section; return the metrics.
    The same systems on the zero-shot split (:func:`compare_unseen`) add ``mean_scores_by_split.csv``."""
    es, out, judges = setup.es, setup.out, list(setup.cfg.judges)
    comp.render_all()
    labels = judge_labels(setup.judges.judges) if setup.judges is not None else {}
    means: pd.DataFrame = comp.mean_scores()
    comp.table().to_csv(out / "scores.csv", index=False)
    means.to_csv(out / "mean_scores.csv", index=False)
    unseen = compare_unseen(setup)
    zs_split = setup.eval.get("zero_shot_split", "unseen")
    splits = by_split(means, None if unseen is None else unseen[1], setup.eval["split"], zs_split)
    splits.to_csv(out / "mean_scores_by_split.csv", index=False)
    metrics = {"n_utts": len(es), "ids": es.ids, "systems": comp.names, "nfes": {n: comp.nfes(n) for n in comp.names},
               "cfg_scale": setup.cfg_scale, "judges": judges, "vocoder": setup.vocoder_name,
               "mean_scores": means.to_dict(orient="records"), "judge_labels": labels,
               "zero_shot": {"split": zs_split, "n_utts": 0 if unseen is None else len(unseen[0]),
                             "ids": [] if unseen is None else unseen[0].ids,
                             "voices": [] if unseen is None else split_voices(setup.corpus, zs_split),
                             "mean_scores": [] if unseen is None else unseen[1].to_dict(orient="records")}}
    atomic_write_json(out / "metrics.json", metrics)
    write_section(SECTION, f"""## 06 — listening comparison (`notebooks/06_listen.ipynb`)

{len(es)} held-out utterances ({setup.eval['split']} split), identical noise for every system; vocoder: {setup.vocoder_name}.
Ground truth is the real recording; copy-synthesis is its real mel through the same vocoder (the ceiling
for every generated row). The guided teacher (w = {setup.cfg_scale:g}) and the student sample on uniform grids; the
student has no guidance. Listen in `runs/06_listen.ipynb` (static players) or run the notebook in
JupyterLab for the interactive panel. Per-utterance scores: `06_listen/scores.csv`.

Mean scores per system (WER at corpus level; `fs_ratio` / `gv_ratio`: per-utterance ratios to the real
mel, averaged; judges: {', '.join(judges) or 'none'}; `nfe` 0: no flow-model call):

{table_md(means)}

{judges_note(labels)}

{_zero_shot_md(setup, splits, unseen)}

![spectrograms, same noise](06_listen/comparison.png)
""")
    return metrics
