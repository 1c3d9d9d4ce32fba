"""The embedded synthetic speech corpus and its features.

``build_corpus`` speaks generated sentences with espeak-ng and flite voices (offline) into a
folder of 16 kHz wavs, log-mels, a manifest and frame-level phone alignments; ``load_corpus``
opens it; ``MelTokenDataset`` + ``collate`` feed token2mel / text2mel models.
"""
from imf.data.build import VOICES, CorpusConfig, build_corpus, estimate_f0
from imf.data.corpus import Corpus, CorpusError, check_files, corpus_metrics, load_corpus, speaker_table
from imf.data.config import DataConfig
from imf.data.dataset import MelTokenDataset, collate
from imf.data.engines import EngineError, Prosody, Synthesis, Voice, synthesize
from imf.models.features import LogMel, MelConfig
from imf.data.text import PAD, PHONES, SIL

__all__ = [
    "VOICES", "Corpus", "CorpusConfig", "DataConfig", "CorpusError", "build_corpus", "check_files", "corpus_metrics",
    "estimate_f0",
    "load_corpus", "speaker_table", "MelTokenDataset", "collate", "EngineError", "Prosody", "Synthesis",
    "Voice", "synthesize", "LogMel", "MelConfig", "PAD", "PHONES", "SIL",
]
