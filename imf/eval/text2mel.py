"""Evaluating text2mel (F5-style) models: a zero-shot evaluation set, judges on the generated span, the NFE table.

:func:`make_t2m_eval_set` does what F5-TTS's inference does, on corpus utterances: the prompt is a
WHOLE other utterance of the same speaker (its mel and its text), the target utterance's text follows
the prompt's, and the model generates the target's frames after the prompt (their true number: the
oracle length, so real-mel metrics line up)::

    z_1   (N, C, P + L)  normalised [prompt mel | target mel]      cond["cond_mel"] = [prompt mel | 0]
    mask  (N, P + L)     True on the TARGET frames (what the metrics and judges score)
    cond["text"] (N, Nt) prompt ids then target ids (-1 padded); cond["mask"] all valid frames
    z_0   noise on every valid frame, from the set's own generator (every system sees the same)

:class:`SpanJudges` vocodes exactly the masked frames (the target), so WER is the target's text and
SIM the prompt's speaker. :func:`with_text_of` swaps every target text for another utterance's, same
noise, for the alignment check. :func:`t2m_points` lists the NFE table's (system, NFE) points.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor

from imf.core.config import Config, require
from imf.data.text2mel import Text2MelDataset, pad_text
from imf.eval.audio import AudioJudges
from imf.eval.evalset import EvalSet
from imf.eval.systems import System
from imf.flow import schedules
from imf.flow.solvers import Guided


@dataclasses.dataclass(frozen=True)
class T2MEvalConfig(Config):
    """``text2mel.eval``: the zero-shot evaluation set and the NFE table of notebook 08."""
    split: str = "test"  # corpus split of the target AND prompt utterances
    n_utts: int = 32  # evaluation utterances
    seed: int = 1234  # utterance choice, prompts and noise z_0 (its own generator)
    max_prompt_frames: int = 160  # longest prompt utterance (whole utterances only)
    cfg_scale: float = 3.0  # our guidance w of the guided teacher (F5's default s = 2 is w = 3)
    teacher_nfes: tuple[int, ...] = (4, 7, 8, 16, 32)  # guided/unguided teacher NFEs; the largest guided is the reference
    student_nfes: tuple[int, ...] = (1, 2, 3)  # student NFEs
    # when either is set, the audio judges score only these NFEs of the guided uniform teacher and of the student
    # (the other rows keep the intrinsic metrics: the judges cost far more than sampling); both empty: every point
    judged_teacher_nfes: tuple[int, ...] = ()
    judged_student_nfes: tuple[int, ...] = ()
    rtf_repeats: int = 3  # timing rounds of the speed ratio (median)

    def validate(self) -> None:
        require(self.n_utts >= 2, "n_utts", "must be >= 2 (the shuffled-text check needs another utterance)")
        require(self.max_prompt_frames >= 1, "max_prompt_frames", "must be >= 1")
        require(self.cfg_scale >= 1.0, "cfg_scale", "must be >= 1")
        require(len(self.teacher_nfes) >= 1 and min(self.teacher_nfes) >= 1, "teacher_nfes", "NFEs must be >= 1")
        require(len(self.student_nfes) >= 1 and min(self.student_nfes) >= 1, "student_nfes", "NFEs must be >= 1")
        require(self.rtf_repeats >= 1, "rtf_repeats", "must be >= 1")
        require(set(self.judged_teacher_nfes) <= set(self.teacher_nfes), "judged_teacher_nfes",
                f"must be among teacher_nfes {list(self.teacher_nfes)}")
        require(set(self.judged_student_nfes) <= set(self.student_nfes), "judged_student_nfes",
                f"must be among student_nfes {list(self.student_nfes)}")


def _prompt_of(data: Text2MelDataset, ident: str, max_frames: int, g: torch.Generator) -> str:
    """Another utterance of ``ident``'s speaker in ``data`` (at most ``max_frames``), drawn from ``g``."""
    c = data.corpus
    spk = c.row(ident)["speaker"]
    pool = [i for i in data.ids if i != ident and c.row(i)["speaker"] == spk and c.row(i)["n_frames"] <= max_frames]
    if not pool:
        raise ValueError(f"utterance {ident!r}: no other utterance of speaker {spk!r} of at most {max_frames} frames "
                         f"in split {data.split!r} to prompt with")
    return pool[int(torch.randint(len(pool), (1,), generator=g))]


def make_t2m_eval_set(data: Text2MelDataset, n: int = 32, seed: int = 1234, max_prompt_frames: int = 160) -> EvalSet:
    """``n`` target utterances of ``data`` (seeded shuffle) with a same-speaker prompt each (module doc)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=g).tolist()
    targets, prompts = [], []
    for i in order:
        if len(targets) == n:
            break
        try:
            prompts.append(_prompt_of(data, data.ids[i], max_prompt_frames, g))
        except ValueError:
            continue
        targets.append(data.ids[i])
    if len(targets) < 2:
        raise ValueError(f"split {data.split!r}: fewer than 2 utterances have a same-speaker prompt")
    tgt, prm = [data.item(i) for i in targets], [data.item(i) for i in prompts]
    p_len = torch.tensor([p["z_1"].shape[-1] for p in prm])
    total = p_len + torch.tensor([t["z_1"].shape[-1] for t in tgt])
    b, c, n_max = len(tgt), tgt[0]["z_1"].shape[0], int(total.max())
    z_1 = torch.zeros(b, c, n_max)
    for j, (p, t) in enumerate(zip(prm, tgt)):
        z_1[j, :, : p_len[j]] = p["z_1"]
        z_1[j, :, p_len[j]: total[j]] = t["z_1"]
    pos = torch.arange(n_max)[None]
    valid, span = pos < total[:, None], (pos >= p_len[:, None]) & (pos < total[:, None])
    text = pad_text([torch.cat([p["text"], _sep(data), t["text"]]) for p, t in zip(prm, tgt)])
    cond = {"cond_mel": z_1.masked_fill(~(valid & ~span)[:, None], 0.0), "text": text, "mask": valid}
    z_0 = torch.randn(z_1.shape, generator=g) * valid[:, None]
    return EvalSet(targets, z_1, span, cond, z_0, data.corpus, [t["sentence"] for t in tgt],
                   torch.tensor([t["speaker"] for t in tgt]), prompts)


def _sep(data: Text2MelDataset) -> Tensor:
    """Between the prompt's text and the target's: a space for characters (F5 joins them), nothing for phones."""
    return torch.tensor([0] if data.cfg.text == "char" else [], dtype=torch.long)


def with_text_of(es: EvalSet, data: Text2MelDataset, shift: int = 1) -> EvalSet:
    """``es`` with each target's text replaced by that of target ``(i + shift) mod N`` (a derangement for
    ``0 < shift < N``): same prompts, lengths and noise. ``texts`` hold the GIVEN (wrong) sentences."""
    n = len(es)
    if not 0 < shift < n:
        raise ValueError(f"with_text_of: shift must lie in 1..{n - 1}, got {shift}")
    other = [(i + shift) % n for i in range(n)]
    text = pad_text([torch.cat([data.item(es.prompt_ids[i])["text"], _sep(data), data.item(es.ids[j])["text"]])
                     for i, j in enumerate(other)])
    return dataclasses.replace(es, cond=dict(es.cond, text=text), texts=[es.texts[j] for j in other])


class SpanJudges(AudioJudges):
    """:class:`AudioJudges` that vocode the masked frames of each utterance (the generated target,
    wherever it sits), not the first ``mask.sum()`` frames."""

    @torch.inference_mode()
    def wavs(self, es, x_norm: Tensor) -> list[Tensor]:
        """(N,) waveforms of the frames ``es.mask[i]`` of ``x_norm`` (N, C, T), at the corpus rate."""
        out = []
        for i in range(len(es)):
            mel = es.corpus.denormalize(x_norm[i][:, es.mask[i]])
            out.append(self.vocoder.vocode(mel[None])[0].float().clamp(-1, 1))
        return out


def t2m_points(teacher, student, cfg: T2MEvalConfig) -> tuple[list[tuple[System, int]], tuple[System, int]]:
    """The NFE table's points and its reference: the guided teacher (w = ``cfg.cfg_scale``) on uniform,
    sway (s = -1) and F5's EPSS grids (raw table, where F5 defines one for that NFE; each its own name), the unguided
    teacher (uniform), the student (uniform, unguided); reference: guided, uniform, the largest NFE."""
    guided = Guided(teacher, cfg.cfg_scale)
    w = f"w={cfg.cfg_scale:g}"
    g_uni = System(f"teacher {w}", guided, "uniform")
    g_sway = System(f"teacher {w} sway", guided, "sway")
    epss = [n for n in cfg.teacher_nfes if n in schedules.F5_EPSS]
    g_epss = System(f"teacher {w} EPSS", guided, "epss_raw")
    plain = System("teacher", teacher, "uniform")
    stu = System("student", student, "uniform")
    points = [(s, n) for s in (g_uni, g_sway, plain) for n in cfg.teacher_nfes]
    points += [(g_epss, n) for n in epss] + [(stu, n) for n in cfg.student_nfes]
    return points, (g_uni, max(cfg.teacher_nfes))


def judged_points(cfg: T2MEvalConfig, reference: System) -> set[tuple[str, int]] | None:
    """The (system name, NFE) points the audio judges score (:func:`imf.eval.sweep.nfe_sweep`'s ``judged``): the
    guided uniform teacher (``reference``'s system) at ``judged_teacher_nfes`` and the student at
    ``judged_student_nfes``; None (every point) when both are empty."""
    if not cfg.judged_teacher_nfes and not cfg.judged_student_nfes:
        return None
    return {(reference.name, n) for n in cfg.judged_teacher_nfes} | {("student", n) for n in cfg.judged_student_nfes}


def judge_rows(judges: Any, sets: Sequence[tuple[str, EvalSet, Tensor]]) -> list[dict[str, Any]]:
    """One row of corpus-level judge scores per ``(name, eval set, normalised mels)``."""
    return [{"row": name, **judges(es, x)} for name, es, x in sets]
