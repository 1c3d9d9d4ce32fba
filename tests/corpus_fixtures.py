"""Tiny real-corpus-layout folders spoken by the embedded engines (tests and the hand-run acceptance).

Each utterance is synthesised offline (:func:`imf.data.engines.synthesize`), stored at another rate
than the corpus's (LJSpeech 22.05 kHz, LibriTTS 24 kHz) so importing resamples, and its known phone
alignment is written as an MFA-style TextGrid with praatio (ARPAbet upper case, stress digit on
vowels, silence as an empty label).

    python -m tests.corpus_fixtures /tmp/imp/libritts-tiny   # the acceptance run's LibriTTS corpus
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from imf.data.build import VOICE_BY_NAME
from imf.data.engines import SAMPLE_RATE, Prosody, resample, synthesize
from imf.data.text import SIL, make_sentence

VOWELS = {"aa", "ae", "ah", "ao", "aw", "ax", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw"}
SPEAKERS = ("es-gb-grandma", "fl-slt", "es-caribbean-andy", "fl-kal16", "es-nyc-m1")


def speak(voice: str, seed: int, j: int, rate: int) -> tuple[np.ndarray, list[tuple[float, float, str]], str]:
    """(float32 audio at ``rate``, MFA-style phone intervals, text) of utterance ``j``."""
    rng = np.random.default_rng([seed, j])
    text = make_sentence(rng)
    syn = synthesize(text, VOICE_BY_NAME[voice], Prosody(rate=float(rng.uniform(0.9, 1.1))))
    wav = resample(syn.wav, SAMPLE_RATE, rate)
    wav = 0.1 * wav / max(float(np.sqrt((wav ** 2).mean())), 1e-4)
    duration = len(wav) / rate
    starts = [0.0] + syn.ends[:-1]
    ends = syn.ends[:-1] + [duration]  # MFA's last interval ends at the file's end
    labels = ["" if p == SIL else p.upper() + ("1" if p in VOWELS else "") for p in syn.phones]
    return np.clip(wav, -0.99, 0.99).astype(np.float32), list(zip(starts, ends, labels)), text


def write_textgrid(path: Path, intervals: list[tuple[float, float, str]], duration: float, text: str = "") -> Path:
    from praatio import textgrid
    from praatio.data_classes.interval_tier import IntervalTier

    tg = textgrid.Textgrid()
    tg.addTier(IntervalTier("words", [(0.0, duration, text)], 0.0, duration))
    tg.addTier(IntervalTier("phones", [iv for iv in intervals if iv[2]], 0.0, duration))  # MFA omits silences
    path.parent.mkdir(parents=True, exist_ok=True)
    tg.save(str(path), format="long_textgrid", includeBlankSpaces=True)
    return path


def make_libritts(root: Path, speakers=SPEAKERS[:3], utts: int = 4, held_out: tuple[str, ...] = (),
                  textgrids: bool = True, rate: int = 24000) -> Path:
    """``root/<subset>/<speaker>/<chapter>/<id>.wav`` + ``.normalized.txt`` (+ ``<id>.TextGrid`` beside them):
    speakers in ``held_out`` go under ``test-clean``, the others under ``train-clean-100``."""
    for s, name in enumerate(speakers):
        spk, chapter = str(100 + s), str(1000 + s)
        folder = root / ("test-clean" if name in held_out else "train-clean-100") / spk / chapter
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(utts):
            wav, intervals, text = speak(name, s, j, rate)
            ident = f"{spk}_{chapter}_{j:06d}_000000"
            sf.write(folder / f"{ident}.wav", wav, rate, subtype="PCM_16")
            (folder / f"{ident}.normalized.txt").write_text(text + "\n")
            if textgrids:
                write_textgrid(folder / f"{ident}.TextGrid", intervals, len(wav) / rate, text)
    return root


def make_ljspeech(root: Path, utts: int = 5, rate: int = 22050, textgrid_dir: Path | None = None) -> Path:
    """``root/metadata.csv`` + ``root/wavs/LJ001-000j.wav`` (one voice); TextGrids into ``textgrid_dir`` if given."""
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    lines = []
    for j in range(utts):
        wav, intervals, text = speak(SPEAKERS[1], 7, j, rate)
        ident = f"LJ001-{j + 1:04d}"
        sf.write(root / "wavs" / f"{ident}.wav", wav, rate, subtype="PCM_16")
        lines.append(f"{ident}|{text.upper()}|{text}")
        if textgrid_dir is not None:
            write_textgrid(textgrid_dir / f"{ident}.TextGrid", intervals, len(wav) / rate, text)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def make_manifest(root: Path, speakers=SPEAKERS[:3], utts: int = 3, rate: int = 16000, suffix: str = ".csv") -> Path:
    """``root/audio/<speaker>_<j>.wav`` and ``root/manifest<suffix>`` (CSV or JSONL: audio, text, speaker)."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for s, name in enumerate(speakers):
        for j in range(utts):
            wav, _, text = speak(name, 20 + s, j, rate)
            rel = f"audio/{name}_{j}.wav"
            sf.write(root / rel, wav, rate, subtype="PCM_16")
            rows.append({"audio": rel, "text": text, "speaker": name})
    path = root / f"manifest{suffix}"
    if suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/imp/libritts-tiny")
    make_libritts(out, speakers=SPEAKERS, utts=12, held_out=(SPEAKERS[-1],))
    print(out)
