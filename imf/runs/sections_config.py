"""The configs of the profile sections that no single component owns, and the schema of a whole profile.

A profile (:mod:`imf.runs.profiles`) is a dict of sections. Most sections are the config of one
component (``teacher_train`` is a :class:`~imf.train.trainer.TrainConfig`); the others are read by the
notebooks themselves (the evaluation set, the ablation, the second distillation stage, ...) and get a
frozen config here. :class:`ProfileConfig` lists every section with its config class, so a profile is
validated as a whole: an unknown or mistyped key anywhere is a :class:`~imf.core.config.ConfigError`
naming ``section.key``.
"""
from __future__ import annotations

import dataclasses

from typing import Any

from imf.core.config import Config, ConfigError, require
from imf.data import CorpusConfig, DataConfig
from imf.data.importers import ImportConfig
from imf.flow.objectives import CFMConfig, IMFConfig
from imf.flow.trajectories import TrajectoryConfig
from imf.models.token2mel import Token2MelConfig
from imf.models.vocoder import VocoderConfig
from imf.eval.text2mel import T2MEvalConfig
from imf.eval.o3s_objectives import ObjectiveError, parse_objectives
from imf.eval.token2wav import T2WEvalConfig
from imf.train.gan import GANConfig
from imf.train.text2mel import T2MStagesConfig
from imf.train.token2wav import T2WStagesConfig
from imf.train.trainer import TrainConfig
from imf.train.wave_losses import WaveLossConfig


_field = dataclasses.field


@dataclasses.dataclass(frozen=True)
class EvalConfig(Config):
    """``eval``: the fixed-noise evaluation set and the NFE grids of notebooks 01-06."""
    split: str = "test"  # corpus split the evaluation utterances come from
    n_utts: int = 32  # evaluation utterances (the first n of the split, by id)
    batch_size: int = 32  # utterances per generation batch
    max_frames: int = 256  # longest evaluation utterance kept, frames of 16 ms
    seed: int = 1234  # the evaluation noise z_0 (its own generator: every system sees the same noise)
    teacher_nfes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # NFEs of the teacher rows; the largest is the reference
    student_nfes: tuple[int, ...] = (1, 2, 3, 4)  # NFEs of the student rows
    judged_teacher_nfes: tuple[int, ...] = ()  # 03's audio judges: these teacher NFEs only (empty: teacher_nfes)
    judged_student_nfes: tuple[int, ...] = ()  # ... and these student NFEs (empty: student_nfes)
    cfg_scale: float = 2.0  # guidance w of the guided teacher rows, v_u + w (v_c - v_u)
    zero_shot_split: str = "unseen"  # held-out voices swept beside `split` (01, 03, 06; "": seen split only)
    speed_repeats: int = 3  # 03's speed and RTF table: interleaved timing rounds (each row's fastest is reported)

    def validate(self) -> None:
        require(self.n_utts >= 1 and self.batch_size >= 1, "n_utts", "n_utts and batch_size must be >= 1")
        require(self.max_frames >= 8, "max_frames", "must be >= 8")
        require(self.speed_repeats >= 1, "speed_repeats", "must be >= 1")
        require(len(self.teacher_nfes) >= 1 and min(self.teacher_nfes) >= 1, "teacher_nfes", "NFEs must be >= 1")
        require(all(n >= 1 for n in self.student_nfes), "student_nfes", "NFEs must be >= 1")
        require(set(self.judged_teacher_nfes) <= set(self.teacher_nfes), "judged_teacher_nfes",
                f"must be among teacher_nfes {list(self.teacher_nfes)}")
        require(set(self.judged_student_nfes) <= set(self.student_nfes), "judged_student_nfes",
                f"must be among student_nfes {list(self.student_nfes)}")


@dataclasses.dataclass(frozen=True)
class AblationConfig(Config):
    """``ablation``: 02_distill's teacher-NFE ablation (the paper's Tab. 3), one short student per N."""
    teacher_nfes: tuple[int, ...] = (2, 4, 8, 16, 32)  # total teacher Euler steps N over [0, 1], one student each
    steps: int = 100  # distillation steps per student
    batch_size: int = 8  # utterances per batch

    def validate(self) -> None:
        require(all(n >= 1 for n in self.teacher_nfes), "teacher_nfes", "NFEs must be >= 1")
        require(self.steps >= 1 and self.batch_size >= 1, "steps", "steps and batch_size must be >= 1")


@dataclasses.dataclass(frozen=True)
class Stage2Config(Config):
    """``student_stage2``: a second distillation stage from the first student, drawing the whole interval
    (0, 1) for ``p_full`` of the samples (seed + 1, restarted cosine schedule)."""
    steps: int = 2400  # steps of the second stage; 0 = no second stage
    lr: float = 2e-4  # its peak learning rate
    p_full: float = 0.7  # share of samples with (t, r) = (0, 1)
    objective: str = ""  # "": as the first stage (student_objective); "rollout": the paper's per-sample rollout
    #   (e.g. a short rollout stage after a trajectory-reuse first stage)

    def validate(self) -> None:
        require(self.objective in ("", "rollout", "trajectory"), "objective", "must be '', 'rollout' or 'trajectory'")
        require(self.steps >= 0, "steps", "must be >= 0 (0: no second stage)")
        require(self.lr > 0, "lr", "must be > 0")
        require(0.0 <= self.p_full <= 1.0, "p_full", "must lie in [0, 1]")


@dataclasses.dataclass(frozen=True)
class StudentObjectiveConfig(Config):
    """``student_objective``: where 02_distill's IntMeanFlow targets come from."""
    objective: str = "rollout"  # "rollout": the paper, the guided teacher rolled out from every sample's data-path
    #   z_t (imf.flow.objectives); "trajectory": pairs read off guided-teacher trajectories integrated once and
    #   cached (imf.flow.trajectories, imf.train.trajectories): no teacher call in the training step
    trajectory: TrajectoryConfig = _field(default_factory=TrajectoryConfig)  # the cache and pair draw ("trajectory")

    def validate(self) -> None:
        require(self.objective in ("rollout", "trajectory"), "objective", "must be 'rollout' or 'trajectory'")


MEANFLOW_RUNS = {  # 05's MeanFlow runs: label -> (init: "teacher" | "scratch", p_instant: share of r = t samples)
    "MF from teacher, r=t 0.75": ("teacher", 0.75),
    "MF from teacher, r=t 0": ("teacher", 0.0),
    "MF from scratch, r=t 0.75": ("scratch", 0.75),
}


@dataclasses.dataclass(frozen=True)
class MeanFlowTrainConfig(Config):
    """``meanflow_train``: the MeanFlow (JVP) baselines of 05_meanflow_vs_imf."""
    steps: int = 3000  # steps per MeanFlow run (= the first-stage student's: an equal-steps comparison)
    runs: tuple[str, ...] = tuple(MEANFLOW_RUNS)  # which of MEANFLOW_RUNS to train
    budget: str = "steps"  # "steps": an equal-steps comparison with the student's first stage; "wall": `steps`
    #   was chosen so the MeanFlow run's training wall time matches the student's (the report states both)
    # budget "wall": the student's checkpoint at this step (02 keeps it) is the one MeanFlow meets at equal wall-clock,
    # trajectory cache included; 0: the final student
    imf_step: int = 0

    def validate(self) -> None:
        require(self.steps >= 1, "steps", "must be >= 1")
        require(len(self.runs) >= 1 and set(self.runs) <= set(MEANFLOW_RUNS), "runs",
                f"name one or more of {list(MEANFLOW_RUNS)}")
        require(self.budget in ("steps", "wall"), "budget", "must be 'steps' or 'wall'")
        require(self.imf_step >= 0 and (self.budget == "wall" or not self.imf_step), "imf_step",
                "must be >= 0, and 0 unless budget is 'wall'")


@dataclasses.dataclass(frozen=True)
class O3SSection(Config):
    """``o3s``: 04_o3s's searches and its objective study (the notebook's empty parameters take these)."""
    metric: str = "sim"  # objective on the dev set: sim (the paper's; needs 00_vocoder) | neg_dist_ref | fs_closeness | mos | wer
    student_nfes: tuple[int, ...] = (2, 3)  # student step counts searched
    teacher_nfes: tuple[int, ...] = (5, 6, 7)  # guided-teacher step counts searched (EPSS exists for 5/6/7)
    max_evals: int = 60  # evaluation budget per search
    iters: int = 6  # bracket reductions per position
    # the objective study after it (imf.eval.o3s_objectives; 04's OBJECTIVES = [] takes these): searched on dev,
    # judged on test; names (dist_ref | wer | sim | mos | fs_closeness) or {term: weight} mixes of normalised terms
    objectives: tuple[Any, ...] = ("dist_ref",)

    def validate(self) -> None:
        require(len(self.student_nfes) >= 1 and min(self.student_nfes) >= 2, "student_nfes", "NFEs must be >= 2")
        require(len(self.teacher_nfes) >= 1 and min(self.teacher_nfes) >= 2, "teacher_nfes", "NFEs must be >= 2")
        require(self.max_evals >= 1 and self.iters >= 1, "max_evals", "max_evals and iters must be >= 1")
        try:
            parse_objectives(list(self.objectives), "objectives")
        except ObjectiveError as e:
            raise ConfigError(f"parameter 'objectives': {e}") from None


@dataclasses.dataclass(frozen=True)
class VocoderSection(Config):
    """``vocoder``: 00_vocoder's network, training and ground-truth judging."""
    model: VocoderConfig = _field(default_factory=VocoderConfig)  # the network (mel geometry comes from the corpus)
    seg_seconds: float = 1.0  # training segment length
    per_voice: int = 10  # utterances per voice scored by the ground-truth judges
    train: TrainConfig = _field(default_factory=TrainConfig)  # optimisation
    loss: WaveLossConfig = _field(default_factory=WaveLossConfig)  # mel L1 + MR-STFT weights (kl_weight unused)
    gan: GANConfig = _field(default_factory=GANConfig)  # adversarial + feature-matching terms (vocos discriminators)

    def validate(self) -> None:
        require(self.seg_seconds > 0, "seg_seconds", "must be > 0")
        require(self.per_voice >= 1, "per_voice", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class Token2WavSection(T2WStagesConfig):
    """``token2wav``: every stage of 07_token2wav (:class:`~imf.train.token2wav.T2WStagesConfig`) and its evaluation."""
    eval: T2WEvalConfig = T2WEvalConfig()  # 07's evaluation table


@dataclasses.dataclass(frozen=True)
class T2MRecipe(Config):
    """One teacher recipe of the alignment study: the knobs of :func:`imf.runs.text2mel.text2mel_plan`'s ``recipe``
    (an empty / zero knob keeps the profile's)."""
    name: str = "base"  # its run folder: runs/<profile>/t2m_align_<name>_<steps>_teacher
    text: str = ""  # "phone" | "char"
    upsampling: str = ""  # "average" (F5's text_embedding_average_upsampling) | "none"
    frac_min: float = 0.0  # smallest infilled fraction of an utterance (F5: 0.7)
    max_frames: int = 0  # longest training utterance in frames (longer ones are left out)

    def validate(self) -> None:
        require(self.name.isidentifier(), "name", f"{self.name!r} must be an identifier (it names run folders)")
        require(self.text in ("", "phone", "char"), "text", f"{self.text!r} is not '', 'phone' or 'char'")
        require(self.upsampling in ("", "average", "none"), "upsampling",
                f"{self.upsampling!r} is not '', 'average' or 'none'")
        require(0.0 <= self.frac_min <= 1.0, "frac_min", "must lie in [0, 1] (0: the profile's)")
        require(self.max_frames == 0 or self.max_frames >= 8, "max_frames", "0 (the profile's) or >= 8")

    def recipe(self) -> dict[str, Any]:
        """The ``recipe`` mapping of :func:`~imf.runs.text2mel.text2mel_plan` (without ``name``)."""
        return {k: v for k, v in self.to_dict().items() if k != "name"}


@dataclasses.dataclass(frozen=True)
class AlignmentStudySection(Config):
    """``text2mel.alignment``: 08a_alignment's study: each recipe trains only the teacher, for the same steps, and is
    judged by :func:`imf.runs.text2mel.alignment_of` (text vs noise effect, WER true vs shuffled text)."""
    recipes: tuple[T2MRecipe, ...] = ()  # () : no study in this profile
    teacher_steps: int = 2000  # the same training budget for every recipe
    n_utts: int = 16  # evaluation utterances (test split)

    def validate(self) -> None:
        names = [r.name for r in self.recipes]
        require(len(set(names)) == len(names), "recipes", f"recipe names must be unique, got {names}")
        require(self.teacher_steps >= 1 and self.n_utts >= 2, "teacher_steps", "teacher_steps >= 1, n_utts >= 2")


@dataclasses.dataclass(frozen=True)
class Text2MelSection(T2MStagesConfig):
    """``text2mel``: every stage of 08_text2mel (:class:`~imf.train.text2mel.T2MStagesConfig`) and its evaluation."""
    eval: T2MEvalConfig = T2MEvalConfig()  # 08's evaluation set, NFE table and timing
    # 08's O3S (imf.runs.text2mel.text2mel_o3s): the objective study of 04 (objectives, student / guided-teacher NFEs,
    # budget) on the text2mel models; ``metric`` (04's main search) is not used by 08
    o3s: O3SSection = O3SSection()
    alignment: AlignmentStudySection = AlignmentStudySection()  # 08a_alignment's recipe study


@dataclasses.dataclass(frozen=True)
class ProfileConfig(Config):
    """Every section of a profile and its config class (the schema :func:`imf.runs.profiles.profile` checks)."""
    corpus: CorpusConfig = _field(default_factory=CorpusConfig)  # the embedded corpus (00_corpus)
    corpus_import: ImportConfig = _field(default_factory=ImportConfig)  # a real corpus given as CORPUS_DIR (00_corpus)
    data: DataConfig = _field(default_factory=DataConfig)  # token2mel training crops
    teacher_model: Token2MelConfig = _field(default_factory=Token2MelConfig)  # the teacher network (n_tokens: corpus)
    teacher_train: TrainConfig = _field(default_factory=TrainConfig)  # 01_teacher
    cfm: CFMConfig = _field(default_factory=CFMConfig)  # the teacher's objective
    student_train: TrainConfig = _field(default_factory=TrainConfig)  # 02_distill, first stage
    meanflow_train: MeanFlowTrainConfig = _field(default_factory=MeanFlowTrainConfig)  # 05's MeanFlow runs
    o3s: O3SSection = _field(default_factory=O3SSection)  # 04's searches
    imf: IMFConfig = _field(default_factory=IMFConfig)  # the IntMeanFlow objective
    student_stage2: Stage2Config = _field(default_factory=Stage2Config)  # 02_distill, second stage
    student_objective: StudentObjectiveConfig = _field(default_factory=StudentObjectiveConfig)  # 02: rollout | trajectory
    ablation: AblationConfig = _field(default_factory=AblationConfig)  # 02_distill's teacher-NFE ablation
    vocoder: VocoderSection = _field(default_factory=VocoderSection)  # 00_vocoder
    eval: EvalConfig = _field(default_factory=EvalConfig)  # 01-06's evaluation set and NFE grids
    token2wav: Token2WavSection = _field(default_factory=Token2WavSection)  # 07_token2wav
    text2mel: Text2MelSection = _field(default_factory=Text2MelSection)  # 08_text2mel (F5 DiT teacher and students)


def sub_section(cls: type[Config], field: str) -> type[Config] | None:
    """The config class of ``cls.field`` when that field is a nested section (its default is a config), else None."""
    f = cls.__dataclass_fields__[field]  # type: ignore[attr-defined]
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        return None
    return type(default) if isinstance(default, Config) else None


def section_classes(cls: type[Config] = ProfileConfig, prefix: str = "") -> dict[str, type[Config]]:
    """Every (nested) section of ``cls`` by dotted name, e.g. ``{"eval": EvalConfig, "token2wav.vae": VAEConfig, ...}``."""
    out: dict[str, type[Config]] = {}
    for f in dataclasses.fields(cls):
        sub = sub_section(cls, f.name)
        if sub is not None:
            out[prefix + f.name] = sub
            out.update(section_classes(sub, f"{prefix}{f.name}."))
    return out
