"""Offline speech engines with exact phone alignments: espeak-ng (ctypes) and flite (subprocess).

Both return a :class:`Synthesis`: 16 kHz float32 audio, phones of the shared inventory
(:data:`imf.data.text.PHONES`) and each phone's end time in seconds.

* **espeak-ng** is the C library shipped by the PyPI package ``espeakng-loader``, driven through
  ``ctypes`` in synchronous mode (22050 Hz). Phone boundaries are the ``audio_position`` (ms)
  of the synth callback's phoneme events: the start of each phoneme, so they are exact.
* **flite** is the Debian binary (``apt-get install flite``); ``-psdur`` prints each segment's
  end time.

Prosody is drawn per utterance (:func:`sample_prosody`) as unitless factors relative to the
voice's default and mapped onto each engine's controls:

* ``pitch``: espeak pitch parameter ``50 + ln(pitch) / 0.0097`` (measured on en-us and en-us+f3:
  F0 ~ exp(0.0097 (p - 50))); flite ``int_f0_target_mean = Voice.f0 * pitch``, or, for voices
  that ignore F0 targets (Debian's rms), a tape-speed change by ``pitch`` (quantised to 1/40).
* ``rate``: espeak ``175 * rate`` words per minute; flite ``duration_stretch = 1 / rate``
  (times the tape speed, so the rate holds for tape-shifted voices).
* ``pitch_range``: espeak range parameter ``50 * pitch_range``; flite: not used (1.0).
"""
from __future__ import annotations

import _ctypes
import ctypes
import dataclasses
import functools
import math
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio

from imf.data.text import PHONE_ID, SIL

SAMPLE_RATE = 16000  # Hz: every engine's audio is resampled to this rate


class EngineError(RuntimeError):
    """A speech engine is missing, failed, or produced output that cannot be aligned."""


@dataclasses.dataclass(frozen=True)
class Voice:
    """One corpus speaker: an engine voice under a stable speaker name."""

    name: str  # speaker name in the corpus, e.g. "es-us-m3"
    engine: str  # "espeak" | "flite"
    voice: str  # the engine's voice id, e.g. "en-us+m3" or "slt"
    f0: float = 0.0  # Hz, nominal mean F0 of the voice (flite pitch targets); 0 = unused
    pitch_by_speed: bool = False  # flite voice ignores F0 targets: shift pitch by tape speed
    holdout: bool = False  # True: an "unseen" speaker, never in train/dev/test


@dataclasses.dataclass(frozen=True)
class Prosody:
    """Per-utterance prosody factors relative to the voice default (1.0 = default)."""

    pitch: float = 1.0  # F0 factor
    rate: float = 1.0  # speaking-rate factor (> 1 is faster)
    pitch_range: float = 1.0  # intonation-range factor (espeak only)


@dataclasses.dataclass
class Synthesis:
    """Engine output. ``wav`` float32 [N] at 16 kHz; ``phones`` [P] shared-inventory symbols;
    ``ends`` [P] phone end times in seconds, ascending (the last one close to N / 16000);
    ``prosody`` as applied."""

    wav: np.ndarray
    phones: list[str]
    ends: list[float]
    prosody: Prosody = Prosody()  # the prosody actually applied (after engine quantisation)


#: Measured slope of espeak-ng's pitch parameter: F0 ~ exp(ESPEAK_PITCH_SLOPE * (p - 50)).
ESPEAK_PITCH_SLOPE = 0.0097
ESPEAK_DEFAULT_RATE = 175  # words per minute


def sample_prosody(rng: np.random.Generator, pitch_semitones: float = 3.0,
                   rate_range: tuple[float, float] = (0.85, 1.2),
                   range_range: tuple[float, float] = (0.6, 1.4)) -> Prosody:
    """Draw :class:`Prosody`: pitch uniform in +-``pitch_semitones`` semitones, rate and
    pitch range uniform in their ranges (rounded to 3 decimals so manifests are stable)."""
    pitch = 2.0 ** (rng.uniform(-pitch_semitones, pitch_semitones) / 12.0)
    rate = rng.uniform(*rate_range)
    pitch_range = rng.uniform(*range_range)
    return Prosody(pitch=round(pitch, 3), rate=round(rate, 3), pitch_range=round(pitch_range, 3))


# ---------------------------------------------------------------------------------------------
# Phone mapping onto the shared inventory
# ---------------------------------------------------------------------------------------------

#: espeak-ng English phoneme mnemonics (stress marks stripped) -> shared phones. A tuple of
#: several phones splits the segment evenly (diphthong + r / schwa, syllabic l); an empty
#: tuple gives the segment's time to the previous phone (modifiers such as ';').
ESPEAK_TO_SHARED: dict[str, tuple[str, ...]] = {
    # consonants
    "b": ("b",), "d": ("d",), "f": ("f",), "g": ("g",), "h": ("hh",), "j": ("y",), "k": ("k",),
    "l": ("l",), "m": ("m",), "n": ("n",), "p": ("p",), "r": ("r",), "s": ("s",), "t": ("t",),
    "v": ("v",), "w": ("w",), "z": ("z",), "D": ("dh",), "T": ("th",), "S": ("sh",), "Z": ("zh",),
    "N": ("ng",), "tS": ("ch",), "dZ": ("jh",), "t#": ("t",), "d#": ("d",), "t[": ("t",),
    "w#": ("w",), "?": ("t",), "x": ("k",), "n-": ("n",), "l/": ("l",), "r-": ("r",), "l#": ("l",),
    "z/": ("z",), "s/": ("s",),
    # vowels
    "a": ("ae",), "aa": ("ae",), "a#": ("ax",), "A:": ("aa",), "A@": ("aa", "r"), "0": ("aa",),
    "@": ("ax",), "@2": ("ax",), "@5": ("ax",), "@L": ("ax", "l"), "3": ("er",), "3:": ("er",),
    "IR": ("er",), "VR": ("er",), "E": ("eh",), "e": ("eh",), "e@": ("eh", "r"), "eI": ("ey",),
    "I": ("ih",), "I#": ("ih",), "I2": ("ih",), "i": ("iy",), "i:": ("iy",), "i@": ("ih", "r"),
    "i@3": ("ih", "r"), "O": ("ao",), "O:": ("ao",), "O2": ("ao",), "O@": ("ao", "r"),
    "o@": ("ao", "r"), "oU": ("ow",), "OI": ("oy",), "U": ("uh",), "U@": ("uh", "r"),
    "u:": ("uw",), "V": ("ah",), "aI": ("ay",), "aI2": ("ay",), "aI@": ("ay", "ax"),
    "aI3": ("ay", "er"), "aU": ("aw",), "aU@": ("aw", "er"),
    # modifiers
    ";": (),
}
FLITE_TO_SHARED: dict[str, tuple[str, ...]] = {p: (p,) for p in PHONE_ID if p not in ("<pad>", SIL)}
FLITE_TO_SHARED["pau"] = (SIL,)

_STRESS = "'\",%="


def map_segments(labels: Sequence[str], starts: Sequence[float], end: float,
                 table: dict[str, tuple[str, ...]], what: str) -> tuple[list[str], list[float]]:
    """Engine segments -> shared phones and end times (seconds).

    ``labels[i]`` starts at ``starts[i]`` and ends where the next one starts (the last at
    ``end``). Labels beginning with ``_`` are pauses (``sil``); adjacent silences merge;
    segments of zero length are dropped. ``what`` names the utterance in errors.
    """
    phones: list[str] = []
    ends: list[float] = []
    bounds = list(starts[1:]) + [end]
    if starts and starts[0] > 0:
        phones, ends = [SIL], [float(starts[0])]
    for label, t0, t1 in zip(labels, starts, bounds):
        if t1 <= t0:
            continue
        raw = label.strip(_STRESS)
        shared = (SIL,) if raw.startswith("_") else table.get(raw)
        if shared is None:
            raise EngineError(f"{what}: phone {label!r} has no entry in the shared inventory mapping")
        if not shared:  # modifier: extend the previous phone
            if ends:
                ends[-1] = float(t1)
            continue
        for k, p in enumerate(shared):
            t = t0 + (t1 - t0) * (k + 1) / len(shared)
            if p == SIL and phones and phones[-1] == SIL:
                ends[-1] = float(t)
            else:
                phones.append(p)
                ends.append(float(t))
    if not phones:
        raise EngineError(f"{what}: the engine produced no phones")
    return phones, ends


@functools.lru_cache(maxsize=32)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)


def resample(wav: np.ndarray, orig: int, new: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [N] at ``orig`` Hz -> float32 [round(N * new / orig)] at ``new`` Hz."""
    if orig == new:
        return wav.astype(np.float32, copy=False)
    with torch.no_grad():
        return _resampler(orig, new)(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))).numpy()


# ---------------------------------------------------------------------------------------------
# espeak-ng through ctypes
# ---------------------------------------------------------------------------------------------

class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    # espeak_EVENT from speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.POINTER(_Event))
_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_INITIALIZE_PHONEME_EVENTS = 0x01
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_POS_CHARACTER, _CHARS_UTF8, _ENDPAUSE = 1, 0x01, 0x1000
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4


class Espeak:
    """espeak-ng in this process (the C library keeps global state; a lock serialises callers).

    ``synthesize(text, voice, prosody)`` -> :class:`Synthesis` at 16 kHz.

    espeak-ng carries wave-generator state (pitch-cycle phase, jitter) from one utterance to
    the next, so the same call returns different audio (and lengths) depending on what was
    spoken before. Measured: 5 repeats of one sentence gave 5 lengths. The library is
    therefore unloaded and loaded again before every utterance (``fresh=True``, ~9 ms), which
    makes each utterance a pure function of (text, voice, prosody).
    """

    def __init__(self, fresh: bool = True) -> None:
        try:
            import espeakng_loader
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise EngineError("espeak-ng needs the PyPI package espeakng-loader: pip install espeakng-loader") from e
        self.lib_path = espeakng_loader.get_library_path()
        self.data_parent = os.path.dirname(espeakng_loader.get_data_path())
        self.fresh = fresh
        self.lib: ctypes.CDLL | None = None
        self._libc = ctypes.CDLL(None)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []  # (phoneme mnemonic, start in ms)
        self._callback = _SYNTH_CALLBACK(self._on_synth)  # keep a reference: C holds the pointer
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        """(Re)load and initialise the library, so no state survives from earlier utterances."""
        if self.lib is not None:
            self.lib.espeak_Terminate()
            _ctypes.dlclose(self.lib._handle)
        lib = ctypes.CDLL(self.lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_parent.encode(),
                                                 _INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise EngineError(f"espeak_Initialize failed ({self.sample_rate}) with data at {self.data_parent}")
        lib.espeak_SetSynthCallback(self._callback)
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib = lib

    def _on_synth(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                self._events.append((e.id.string.decode("ascii", "replace"), e.audio_position))
            i += 1
        return 0

    def synthesize(self, text: str, voice: Voice, prosody: Prosody = Prosody()) -> Synthesis:
        what = f"espeak voice {voice.voice!r}, text {text!r}"
        with self._lock:
            if self.fresh:
                self._load()
            # espeak-ng draws from its own generator and from libc rand(): pin both
            if hasattr(self.lib, "espeak_ng_SetRandSeed"):
                self.lib.espeak_ng_SetRandSeed(0)
            self._libc.srand(0)
            rc = self.lib.espeak_SetVoiceByName(voice.voice.encode())
            if rc != 0:
                raise EngineError(f"{what}: espeak_SetVoiceByName failed (code {rc}): unknown voice")
            pitch = int(round(min(max(50 + math.log(prosody.pitch) / ESPEAK_PITCH_SLOPE, 0), 100)))
            self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
            self.lib.espeak_SetParameter(_PARAM_RATE, int(round(ESPEAK_DEFAULT_RATE * prosody.rate)), 0)
            self.lib.espeak_SetParameter(_PARAM_RANGE, int(round(min(50 * prosody.pitch_range, 100))), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            rc = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
            if rc != 0:
                raise EngineError(f"{what}: espeak_Synth failed (code {rc})")
            chunks, events = self._chunks, self._events
        if not chunks:
            raise EngineError(f"{what}: no audio")
        wav22 = np.concatenate(chunks).astype(np.float32) / 32768.0
        duration = len(wav22) / self.sample_rate
        labels = [name for name, _ in events]
        starts = [ms / 1000.0 for _, ms in events]
        phones, ends = map_segments(labels, starts, duration, ESPEAK_TO_SHARED, what)
        return Synthesis(wav=resample(wav22, self.sample_rate), phones=phones, ends=ends, prosody=prosody)


# ---------------------------------------------------------------------------------------------
# flite through a subprocess
# ---------------------------------------------------------------------------------------------

class Flite:
    """Debian ``flite`` (``-psdur`` prints segment end times). ``synthesize`` as :class:`Espeak`."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("flite")
        if not self.binary:
            raise EngineError("the flite binary is not on PATH: install it with `sudo apt-get install flite` "
                              "(Debian/Ubuntu; `make sysdeps` does this)")

    def synthesize(self, text: str, voice: Voice, prosody: Prosody = Prosody()) -> Synthesis:
        what = f"flite voice {voice.voice!r}, text {text!r}"
        with tempfile.TemporaryDirectory(prefix="imf-flite-") as tmp:
            return self._synthesize(text, voice, prosody, Path(tmp) / "out.wav", what)

    def _synthesize(self, text: str, voice: Voice, prosody: Prosody, out: Path, what: str) -> Synthesis:
        if voice.pitch_by_speed:
            # tape speed in steps of 1/40 (resampling 16 kHz <-> multiples of 400 Hz stays cheap)
            speed = round(prosody.pitch * 40) / 40
            prosody = dataclasses.replace(prosody, pitch=speed, pitch_range=1.0)
        else:
            speed = 1.0
            prosody = dataclasses.replace(prosody, pitch_range=1.0)
        args = [self.binary, "-voice", voice.voice, "--setf", f"duration_stretch={speed / prosody.rate:.4f}"]
        if not voice.pitch_by_speed and voice.f0 > 0:
            args += ["--setf", f"int_f0_target_mean={voice.f0 * prosody.pitch:.2f}"]
        args += ["-psdur", "-t", text, "-o", str(out)]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EngineError(f"{what}: running {args[0]} failed: {e}") from e
        if proc.returncode != 0 or not out.exists():
            raise EngineError(f"{what}: flite exited with {proc.returncode}: {proc.stderr.strip()[:300]}")
        wav, sr = sf.read(out, dtype="float32", always_2d=False)
        labels, ends = [], []
        for tok in proc.stdout.split():
            label, _, t = tok.rpartition(":")
            try:
                ends.append(float(t))
            except ValueError:
                raise EngineError(f"{what}: cannot parse flite segment {tok!r}") from None
            labels.append(label)
        if not labels:
            raise EngineError(f"{what}: flite printed no segments")
        starts = [0.0] + ends[:-1]
        phones, p_ends = map_segments(labels, starts, ends[-1], FLITE_TO_SHARED, what)
        if speed != 1.0:
            # play the waveform `speed` times faster: pitch x speed, times / speed
            sr_eff = int(round(SAMPLE_RATE * speed))
            wav = resample(resample(wav, sr, SAMPLE_RATE), sr_eff, SAMPLE_RATE)
            scale = SAMPLE_RATE / sr_eff
            p_ends = [t * scale for t in p_ends]
        else:
            wav = resample(wav, sr, SAMPLE_RATE)
        return Synthesis(wav=wav, phones=phones, ends=p_ends, prosody=prosody)


@functools.lru_cache(maxsize=None)
def get_engine(name: str) -> Espeak | Flite:
    """The per-process engine instance ``"espeak"`` or ``"flite"``."""
    if name == "espeak":
        return Espeak()
    if name == "flite":
        return Flite()
    raise EngineError(f"unknown engine {name!r}; known: ['espeak', 'flite']")


def synthesize(text: str, voice: Voice, prosody: Prosody = Prosody()) -> Synthesis:
    """Speak ``text`` with ``voice`` and ``prosody``: -> :class:`Synthesis` (16 kHz)."""
    return get_engine(voice.engine).synthesize(text, voice, prosody)
