"""Frame-level phones from Montreal-Forced-Aligner TextGrids (read with ``praatio``).

MFA writes one TextGrid per utterance with a ``words`` and a ``phones`` interval tier (MFA 1.x
multi-speaker output names them ``<speaker> - phones``). Phone labels are ARPAbet with stress
digits (``AH0``; the ``english_us_arpa`` model) or IPA (``english_mfa``); silence is an empty
label, ``sil`` or ``sp``; ``spn`` marks an unknown word. :func:`read_phones` turns the phones
tier into the corpus's phones and end times (seconds): labels lower-cased, stress digits dropped
(ARPAbet ``ah0`` -> ``ah``, the embedded corpus's symbols), silences and gaps -> ``sil``, adjacent
silences merged. Every problem is a :class:`~imf.data.corpus.CorpusError` naming the TextGrid.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from imf.data.corpus import CorpusError
from imf.data.text import SIL

SILENCES = frozenset({"", "sil", "sp", "<eps>", "silence", "pau"})
_STRESS = re.compile(r"(?<=[a-z])[0-2]$")


def _textgrid_module():
    try:
        from praatio import textgrid  # optional: the `corpora` extra
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CorpusError("reading MFA TextGrids needs praatio: pip install 'imf[corpora]' (or pip install praatio)") from e
    return textgrid


def normalize_phone(label: str, strip_stress: bool = True) -> str:
    """One MFA phone label -> a corpus phone: silences -> ``sil``, lower case, ARPAbet stress dropped."""
    p = label.strip().lower()
    if p in SILENCES:
        return SIL
    return _STRESS.sub("", p) if strip_stress else p


def read_phones(path: str | os.PathLike, duration: float, tolerance: float = 0.1, audio: str | os.PathLike = "",
                strip_stress: bool = True) -> tuple[list[str], list[float]]:
    """Phones and their end times (seconds, strictly increasing, the last = ``duration``) from an MFA TextGrid.

    ``duration``: the audio's length (s). The phones tier must end within ``tolerance`` s of it
    (else the TextGrid belongs to another recording or another cut of it: :class:`CorpusError`
    naming ``path`` and ``audio``). Gaps between intervals become ``sil``.
    """
    path = Path(path)
    what = f"{path}" + (f" (audio {audio})" if audio else "")
    if not path.exists():
        raise CorpusError(f"{path}: alignment missing (no MFA TextGrid for the audio {audio}); run MFA "
                          "(mfa align) or import with alignments='none' (text2mel / vocoder only)")
    try:
        tg = _textgrid_module().openTextgrid(str(path), includeEmptyIntervals=True)
    except Exception as e:  # praatio raises assorted errors on malformed files
        raise CorpusError(f"{what}: unreadable TextGrid: {type(e).__name__}: {e}") from None
    names = [n for n in tg.tierNames if n.strip().lower() == "phones" or n.strip().lower().endswith("- phones")]
    if not names:
        raise CorpusError(f"{what}: no 'phones' tier (tiers: {list(tg.tierNames)})")
    entries = tg.getTier(names[0]).entries
    if not entries:
        raise CorpusError(f"{what}: the phones tier is empty")
    end = float(entries[-1].end)
    if abs(end - duration) > tolerance:
        raise CorpusError(f"{what}: the alignment ends at {end:.3f} s but the audio lasts {duration:.3f} s "
                          f"(tolerance {tolerance} s): a TextGrid of another recording, or of another cut of it?")
    phones: list[str] = []
    ends: list[float] = []

    def add(p: str, t: float) -> None:
        if phones and p == SIL and phones[-1] == SIL:
            ends[-1] = t
        else:
            phones.append(p)
            ends.append(t)

    prev = 0.0
    for e in entries:
        t0, t1 = float(e.start), float(e.end)
        if t0 < prev - 1e-6 or t1 <= t0:
            raise CorpusError(f"{what}: phone interval [{t0:.3f}, {t1:.3f}] {e.label!r} overlaps its predecessor "
                              "or is empty")
        if t0 > prev + 1e-6:
            add(SIL, t0)
        add(normalize_phone(e.label, strip_stress), t1)
        prev = t1
    return phones, ends
