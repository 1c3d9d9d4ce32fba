"""The embedded synthetic speech corpus and its features.

``build_corpus`` speaks generated sentences with espeak-ng and flite voices (offline) into a
folder of 16 kHz wavs, log-mels, a manifest and frame-level phone alignments; ``load_corpus``
opens it; ``MelTokenDataset`` + ``collate`` feed token2mel / text2mel models.
"""
from .corpus import (VOICES, Corpus, CorpusConfig, CorpusError, build_corpus, corpus_metrics,
                     estimate_f0, load_corpus, speaker_table)
from .dataset import MelTokenDataset, collate
from .engines import EngineError, Prosody, Synthesis, Voice, synthesize
from .features import LogMel, MelConfig
from .text import PAD, PHONES, SIL

__all__ = [
    "VOICES", "Corpus", "CorpusConfig", "CorpusError", "build_corpus", "corpus_metrics", "estimate_f0",
    "load_corpus", "speaker_table", "MelTokenDataset", "collate", "EngineError", "Prosody", "Synthesis",
    "Voice", "synthesize", "LogMel", "MelConfig", "PAD", "PHONES", "SIL",
]
