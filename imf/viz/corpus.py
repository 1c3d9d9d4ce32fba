"""Figures of the embedded corpus (notebook 00_corpus): example log-mels with phone boundaries, F0 by speaker."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from imf.core.runtime import atomic_path
from imf.data import speaker_table


def _save(fig, path: str | Path, dpi: int = 90) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def example_ids(corpus, n: int, speakers: pd.DataFrame | None = None) -> list[str]:
    """The first utterance of ``n`` speakers, alternating engines (``speakers``: the corpus's
    :func:`~imf.data.speaker_table`, computed if not given)."""
    speakers = speaker_table(corpus) if speakers is None else speakers
    by_engine = [speakers.speaker[speakers.engine == e].tolist() for e in sorted(speakers.engine.unique())]
    shown = [s for group in zip(*by_engine) for s in group][:n]
    return [corpus.manifest[corpus.manifest.speaker == s].id.iloc[0] for s in shown]


def plot_corpus_examples(corpus, ids: list[str], path: str | Path) -> Path:
    """One log-mel panel per utterance id (title: speaker, voice, prosody, text); the first panel shows its
    frame-level phone alignment (boundaries and labels)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(ids), 1, figsize=(11, 2.3 * len(ids)), squeeze=False)
    for ax, ident in zip(axes[:, 0], ids):
        row = corpus.row(ident)
        ax.imshow(corpus.load_mel(ident).numpy(), origin="lower", aspect="auto", cmap="magma")
        ax.set_title(f"{row.speaker} ({row.engine} {row.voice}, pitch x{row.pitch:.2f}, rate x{row.rate:.2f}): "
                     f"{row.text}", fontsize=9)
        ax.set_ylabel("mel bin")
    if getattr(corpus, "aligned", True):  # a corpus imported without alignments has no phones to show
        phones, durations = corpus.phone_ids(ids[0])
        bounds = np.cumsum(durations.numpy())
        for b in bounds[:-1]:
            axes[0, 0].axvline(b - 0.5, color="cyan", lw=0.6)
        for p, b, d in zip(phones.tolist(), bounds, durations.tolist()):
            axes[0, 0].text(b - d / 2 - 0.5, 74, corpus.phones[p], color="white", ha="center", fontsize=7)
    mc = corpus.mel_config
    axes[-1, 0].set_xlabel(f"frame ({mc.hop_length / mc.sample_rate * 1000:.0f} ms)")
    fig.tight_layout()
    return _save(fig, path)


def plot_f0_by_speaker(corpus, path: str | Path) -> Path:
    """Box plot of the per-utterance median F0 of every speaker (pitch is drawn per utterance)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3))
    m = corpus.manifest
    ax.boxplot([m[m.speaker == s].f0.dropna() for s in corpus.speakers], showfliers=False)
    ax.set_xticks(range(1, len(corpus.speakers) + 1), corpus.speakers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("median F0 per utterance (Hz)")
    ax.set_title("per-utterance F0 by speaker (pitch drawn per utterance)")
    fig.tight_layout()
    return _save(fig, path)
