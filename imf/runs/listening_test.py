"""What notebook 09_listening_test opens: its parameters, the stimuli it prepares, the analysis it prints.

``cfg = ListeningTestConfig.from_params(check_parameters("09_listening_test", globals()))``;
:func:`prepare` renders every condition (``"teacher@32"``, ``"student@1"``, ``"student@2:sway"``,
``"copy-synthesis"``, ``"ground truth"``) on the profile's eval set, on the eval set's fixed noise
(identical for every condition), and writes the stimuli and the manifest of a
:class:`~imf.eval.listening_test.ListeningTest` under ``results/listening/<test>/`` (each file
atomically, the manifest last; an existing test is reopened without generating anything, and a
test of that name prepared with other settings or from retrained runs is prepared again if it has no ratings
yet, and is an error if it has: ratings never mix).
:func:`analysis` prints and plots whatever ratings exist (``cmos.csv``, ``smos.csv``,
``pairs.csv`` and ``analysis.png`` beside ``ratings.csv``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from imf.core.config import Config, ConfigError, require
from imf.core.runtime import atomic_path, atomic_write_text
from imf.eval.listen import COPY, TRUTH, render_comparison
from imf.eval.listening_test import CMOS, MANIFEST, SMOS, ListeningTest, analyse, audio_name
from imf.eval.systems import System, guided
from imf.flow import schedules
from imf.runs.open import checkpoint, open_runs, relative
from imf.runs.profiles import PROFILES, runs_dir, student_run
from imf.runs.report import results_dir, table_md
from imf.viz.listen import wav_bytes
from imf.viz.listening_test import plot_listening

REFERENCES = {"ground truth": TRUTH, "copy-synthesis": COPY}
MODELS = ("teacher", "student")


def parse_condition(spec: str) -> tuple[str, int, str]:
    """``"student@2:sway"`` -> ("student", 2, "sway"); ``"ground truth"`` / ``"copy-synthesis"`` -> (name, 0, "")."""
    if spec in REFERENCES:
        return spec, 0, ""
    model, _, rest = spec.partition("@")
    nfe, _, schedule = rest.partition(":")
    if model not in MODELS or not nfe.isdigit() or int(nfe) < 1:
        raise ConfigError(f"parameter 'conditions': {spec!r} is not 'teacher@NFE', 'student@NFE' (optionally "
                          f"':schedule', e.g. 'student@2:sway'), {' or '.join(map(repr, REFERENCES))}")
    schedule = schedule or "uniform"
    schedules.make_grid(schedule, int(nfe))  # an unknown schedule is an error now, not after training runs load
    return model, int(nfe), schedule


@dataclasses.dataclass(frozen=True)
class ListeningTestConfig(Config):
    """The parameters of notebook 09_listening_test (its ``parameters`` cell, names lower-cased)."""
    profile: str = "small"  # tiny | small | paper
    test: str = "imf-vs-teacher"  # the test's folder: results/listening/<test>/
    rater: str = ""  # your rater id ("": prepare the stimuli and analyse, ask nothing)
    conditions: tuple[str, ...] = ("teacher@32", "teacher@4", "student@1", "student@2")  # system@NFE[:schedule]
    reference: str = "teacher@32"  # the condition every CMOS trial compares with
    kinds: tuple[str, ...] = (CMOS, SMOS)  # trial kinds asked
    n_utts: int = 8  # test-split utterances (0: the profile's eval size)
    max_frames: int = 0  # longest utterance, frames of 16 ms (0: the profile's eval max_frames)
    cfg_scale: float = 0.0  # guidance w of the teacher (0: the profile's default)
    teacher_run: str = "teacher"  # run folder written by 01_teacher
    student_run: str = ""  # run folder of the student ("": 02_distill's final student)
    vocoder_run: str = "vocoder"  # run folder of a trained vocoder ("" or none: Griffin-Lim)
    n_boot: int = 2000  # bootstrap replicates of the analysis
    seed: int = 0  # the bootstrap's seed

    def validate(self) -> None:
        require(self.profile in PROFILES, "profile", f"{self.profile!r} is not one of {sorted(PROFILES)}")
        require(bool(self.test) and "/" not in self.test and not self.test.startswith("."), "test",
                f"must name a folder (no '/', not hidden), got {self.test!r}")
        require("\n" not in self.rater and "\r" not in self.rater, "rater", "must be one line")
        require(len(self.conditions) >= 2 and len(set(self.conditions)) == len(self.conditions), "conditions",
                f"needs at least two different conditions, got {list(self.conditions)}")
        for c in self.conditions:
            parse_condition(c)
        require(self.reference in self.conditions, "reference", f"{self.reference!r} is not one of {list(self.conditions)}")
        require(bool(self.kinds) and set(self.kinds) <= {CMOS, SMOS}, "kinds", f"choose from {[CMOS, SMOS]}")
        require(self.n_utts >= 0 and self.max_frames >= 0 and self.cfg_scale >= 0, "n_utts/max_frames/cfg_scale",
                "must be >= 0")
        require(self.n_boot >= 100, "n_boot", "needs at least 100 replicates")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ListeningTestConfig":
        """From :func:`imf.runs.params.check_parameters`'s ``{NAME: value}``."""
        return cls.from_dict({k.lower(): v for k, v in params.items()})

    def spec(self) -> dict[str, Any]:
        """What the stimuli depend on (a reopened test must have been prepared with the same)."""
        d = self.to_dict()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()
                if k not in ("rater", "n_boot", "seed", "test")}


def folder_of(test: str) -> Path:
    """``results/listening/<test>/``."""
    return results_dir() / "listening" / test


def fingerprint(cfg: ListeningTestConfig, student: bool) -> dict[str, str]:
    """``{run: "<bytes>-<mtime ns>"}`` of the checkpoints the stimuli come from (a retrained run
    changes it; nothing is loaded). Missing runs raise :class:`imf.runs.open.MissingRun`."""
    runs = [cfg.teacher_run] + ([cfg.student_run or student_run(cfg.profile)] if student else [])
    paths = {r: checkpoint(cfg.profile, r) for r in runs}
    voc = runs_dir(cfg.profile) / cfg.vocoder_run / "checkpoints" / "last.pt" if cfg.vocoder_run else None
    paths["vocoder:" + cfg.vocoder_run] = voc if voc is not None and voc.exists() else None
    return {r: "none" if p is None else f"{p.stat().st_size}-{p.stat().st_mtime_ns}" for r, p in paths.items()}


def prepare(cfg: ListeningTestConfig, progress: bool = True) -> ListeningTest:
    """The test ``cfg.test``: reopened if prepared with the same settings, else generated (see the module docstring)."""
    folder = folder_of(cfg.test)
    parsed = {c: parse_condition(c) for c in cfg.conditions}
    need_student = any(m == "student" for m, _, _ in parsed.values())
    spec = {**cfg.spec(), "checkpoints": fingerprint(cfg, need_student)}
    if (folder / MANIFEST).exists():
        test = ListeningTest.open(folder)
        if test.spec == spec:
            print(f"test {cfg.test!r}: {len(test.conditions)} conditions x {len(test.utts)} utterances "
                  f"(prepared before), {len(test.store.read())} ratings so far")
            return test
        diff = {k: (test.spec.get(k), v) for k, v in spec.items() if test.spec.get(k) != v}
        if len(test.store.read()):
            raise ConfigError(f"parameter 'test': {relative(folder)} holds ratings of stimuli made with other settings "
                              f"or runs (was, now: {diff}); choose another TEST name (ratings would not be comparable)")
        print(f"test {cfg.test!r} has no ratings yet and changed ({sorted(diff)}): preparing it again")
        (folder / MANIFEST).unlink()
    wb = open_runs(cfg.profile, None, cfg.teacher_run, cfg.student_run if need_student else None, cfg.n_utts,
                   max_frames=cfg.max_frames)
    w = cfg.cfg_scale or wb.P["eval"]["cfg_scale"]
    models = {"teacher": guided(wb.teacher, w), "student": wb.student}
    systems: dict[str, System] = {}
    for model, nfe, schedule in parsed.values():
        if model in MODELS:
            s = systems.setdefault(f"{model}:{schedule}", System(f"{model}:{schedule}", models[model], schedule))
            s.grids[nfe] = schedules.make_grid(schedule, nfe)
    comp = render_comparison(wb.es, list(systems.values()), wb.vocoder(cfg.vocoder_run), None,
                             copy_synthesis="copy-synthesis" in parsed, batch_size=wb.P["eval"]["batch_size"],
                             eager=False)
    conditions = {f"c{k}": c for k, c in enumerate(cfg.conditions)}
    utts, audio = list(wb.es.ids), {}

    def put(key: str, wav) -> None:
        name = audio_name(cfg.test, key)
        with atomic_path(folder / "audio" / name) as tmp:
            tmp.write_bytes(wav_bytes(wav, comp.sample_rate))
        audio[key] = name

    for cid, label in conditions.items():
        model, nfe, schedule = parsed[label]
        row = REFERENCES.get(model, f"{model}:{schedule}")
        for i, u in enumerate(utts):
            put(f"{cid}/{u}", comp.wav(row, nfe or None, i))
        if progress:
            print(f"rendered {label} on {len(utts)} utterances")
    for i, u in enumerate(utts):  # the prompt speaker: the real recording the prompt was cut from
        put(f"prompt/{u}", wb.corpus.load_wav(wb.es.prompt_ids[i] if wb.es.prompt_ids else u))
    ref = next(k for k, c in conditions.items() if c == cfg.reference)
    test = ListeningTest(folder, cfg.test, conditions, ref, utts, audio, tuple(cfg.kinds), spec)
    test.save()
    print(f"test {cfg.test!r} prepared in {relative(folder)}: {len(conditions)} conditions x {len(utts)} utterances, "
          f"{len(test.trials('anyone'))} trials per rater")
    return test


def analysis(test: ListeningTest, cfg: ListeningTestConfig):
    """Tabulate (print) and plot the ratings given so far; write ``cmos.csv``, ``smos.csv``,
    ``pairs.csv`` and ``analysis.png``. Returns the figure (an ``IPython.display.Image``; None without ratings)."""
    ratings = test.ratings()
    if not len(ratings):
        print(f"no ratings yet in {relative(test.store.path)}: set RATER and take the test in JupyterLab")
        return None
    tables = analyse(ratings, test.conditions, n_boot=cfg.n_boot, seed=cfg.seed)
    ref = test.conditions[test.reference]
    print(f"{len(ratings)} ratings from {ratings['rater'].nunique()} rater(s) on {ratings['utt'].nunique()} "
          f"utterance(s); CMOS is each condition against {ref!r} (> 0: better); 95 % intervals bootstrap raters "
          "and utterances; 'significant': the interval excludes 0")
    for kind in (CMOS, SMOS):
        for part in (kind, f"{kind}_pairs"):
            if len(tables[part]):
                print(f"\n{part.upper().replace('_', ' ')}\n{table_md(tables[part])}")
    for name, df in (("cmos.csv", tables[CMOS]), ("smos.csv", tables[SMOS]),
                     ("pairs.csv", pd.concat([tables[f"{k}_pairs"].assign(kind=k) for k in (CMOS, SMOS)]))):
        atomic_write_text(test.folder / name, df.to_csv(index=False))
    from IPython.display import Image

    path = plot_listening(tables, test.folder / "analysis.png",
                          title=f"listening test {test.name!r}: {ratings['rater'].nunique()} rater(s)")
    return Image(filename=str(path))
