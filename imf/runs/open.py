"""What a notebook opens: the trained runs, their corpus and the evaluation set, by profile and run names.

Every evaluation notebook (03-06) and the benchmark start the same way: check that the runs they
read exist (naming the notebook that writes each), load the teacher and the student from their
checkpoints, reopen the corpus the teacher was trained on, build the fixed-noise evaluation set and
the notebook's results folder. :func:`open_runs` is that block, written once::

    wb = open_runs("small", "03_nfe_curves")
    wb.teacher, wb.student, wb.corpus, wb.es, wb.out, wb.P

Nothing is trained or written here except the (empty) results folder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from imf.core.checkpoints import load_checkpoint, load_model
from imf.core.runtime import data_dir, repo_root, runs_root, setup_threads
from imf.data import Corpus, CorpusConfig, build_corpus, load_corpus
from imf.data.importers import ImportConfig, import_corpus, is_built_corpus
from imf.eval.evalset import EvalSet, make_eval_set
from imf.models.vocoder import load_vocoder
from imf.eval.samples import SampleCache
from imf.runs.profiles import profile, runs_dir, sample_cache, student_run
from imf.runs.report import section_dir

# run folder -> the notebook that writes it (for "run it first" messages)
WRITTEN_BY = {"teacher": "01_teacher", "student": "02_distill", "student_stage2": "02_distill",
              "vocoder": "00_vocoder"}


class MissingRun(FileNotFoundError):
    """A run that a notebook needs has no checkpoint yet."""


def checkpoint(profile_name: str, run: str) -> Path:
    """``runs/<profile>/<run>/checkpoints/last.pt``; :class:`MissingRun` naming the notebook to run if absent."""
    path = runs_dir(profile_name) / run / "checkpoints" / "last.pt"
    if not path.exists():
        nb = WRITTEN_BY.get(run, "the notebook that trains it")
        raise MissingRun(f"{path.parent.parent} has no checkpoint: run notebooks/{nb}.ipynb "
                         f"(PROFILE={profile_name!r}) first")
    return path


def corpus_of(ckpt: str | Path) -> Corpus:
    """The corpus a run was trained on (recorded in its checkpoint's config)."""
    return load_corpus(load_checkpoint(ckpt)["config"]["corpus"])


def open_corpus(cfg: CorpusConfig, corpus_dir: str | Path = "", root: str | Path = "",
                importer: ImportConfig | None = None) -> Corpus:
    """The corpus a training notebook uses, found the same way whether embedded or imported.

    ``corpus_dir`` ``""``: the embedded corpus of ``cfg`` built (or reused) under ``root`` (``""``: ``$IMF_DATA``
    or ``<repo>/data``). A built or imported corpus folder (it has ``corpus.json``): opened as it is. Else a real
    corpus (LJSpeech, LibriTTS, a CSV/JSONL manifest; ``"<layout>:<path>"`` names the layout): imported with
    ``importer`` (the profile's ``corpus_import`` section) under ``root``, or reused when already imported.
    """
    if not corpus_dir:
        return load_corpus(build_corpus(cfg, root=root or None))
    if is_built_corpus(corpus_dir):
        return load_corpus(corpus_dir)
    return load_corpus(import_corpus(corpus_dir, importer or ImportConfig(), root=root or None))


def relative(path: str | Path) -> str:
    """``path`` as results record it, without the machine's folders: relative to the repository when inside
    it, else ``runs/...`` or ``data/...`` when inside ``$IMF_RUNS`` or ``$IMF_DATA`` (the folders that stand in
    for the repository's ``runs/`` and ``data/``); any other path unchanged."""
    path = Path(path).resolve()
    for root, prefix in ((repo_root(), ""), (runs_root(), "runs"), (data_dir(), "data")):
        try:
            rel = path.relative_to(root.resolve())
        except ValueError:
            continue
        return str(Path(prefix) / rel) if prefix else str(rel)
    return str(path)


def absolute(recorded: str | Path) -> Path:
    """The inverse of :func:`relative`: a path a result recorded, as this machine's path (``runs/...`` under
    :func:`~imf.core.runtime.runs_root`, ``data/...`` under :func:`~imf.core.runtime.data_dir`, anything else
    under the repository)."""
    p = Path(recorded)
    if p.is_absolute():
        return p
    roots = {"runs": runs_root(), "data": data_dir()}
    if p.parts and p.parts[0] in roots:
        return (roots[p.parts[0]] / Path(*p.parts[1:])).resolve()
    return (repo_root() / p).resolve()


@dataclasses.dataclass
class Opened:
    """What :func:`open_runs` returns (see the module docstring)."""
    profile: str
    P: dict[str, Any]  # the profile's sections
    teacher: nn.Module
    student: nn.Module | None
    corpus: Corpus
    es: EvalSet
    out: Path | None  # results/<section>/ (None: no section)
    teacher_ckpt: Path
    student_ckpt: Path | None

    @property
    def samples(self) -> SampleCache:
        """The profile's cache of generated outputs (``runs/<profile>/samples``): what 01-05 sampled, read back."""
        return sample_cache(self.profile)

    def vocoder_checkpoint(self, run: str = "vocoder") -> Path | None:
        """The checkpoint of the trained vocoder of ``run``, or None if 00_vocoder has not trained it."""
        path = runs_dir(self.profile) / run / "checkpoints" / "last.pt" if run else None
        return path if path is not None and path.exists() else None

    def vocoder(self, run: str = "vocoder", fallback: bool = True) -> nn.Module:
        """The trained vocoder of ``run``; Griffin-Lim (with a warning) if it is missing and ``fallback``."""
        path = self.vocoder_checkpoint(run)
        if path is None and not fallback:
            checkpoint(self.profile, run)  # raises, naming 00_vocoder
        return load_vocoder(path, self.corpus.mel_config)

    def eval_set(self, split: str | None = None, n_utts: int | None = None, seed: int | None = None,
                 max_frames: int | None = None) -> EvalSet:
        """Another fixed-noise evaluation set of this corpus (the profile's ``eval`` section by default)."""
        E = self.P["eval"]
        return make_eval_set(self.corpus, split or E["split"], n_utts or E["n_utts"],
                             E["seed"] if seed is None else seed, max_frames or E["max_frames"],
                             self.P["data"]["prompt_frames"])


def open_runs(profile_name: str, section: str | None, teacher_run: str = "teacher", student: str | None = "",
              n_utts: int = 0, threads: int | None = None, max_frames: int = 0) -> Opened:
    """Open the teacher (and the student) of ``profile_name`` for notebook ``section``.

    ``student``: a run folder; ``""``: 02_distill's final student (:func:`imf.runs.profiles.student_run`);
    ``None``: no student. ``n_utts``, ``max_frames``: evaluation utterances and their longest length
    (0: the profile's ``eval`` section).
    ``section``: the notebook whose results folder ``results/<section>/`` is made (``None``: none, e.g. a benchmark).
    Checks every needed run before loading anything.
    """
    P = profile(profile_name)
    setup_threads(threads)
    teacher_ckpt = checkpoint(profile_name, teacher_run)
    student_ckpt = None if student is None else checkpoint(profile_name, student or student_run(profile_name))
    corpus = corpus_of(teacher_ckpt)
    opened = Opened(profile_name, P, load_model(teacher_ckpt),
                    None if student_ckpt is None else load_model(student_ckpt), corpus, None,  # type: ignore[arg-type]
                    None if section is None else section_dir(section), teacher_ckpt, student_ckpt)
    opened.es = opened.eval_set(n_utts=n_utts or None, max_frames=max_frames or None)
    return opened
