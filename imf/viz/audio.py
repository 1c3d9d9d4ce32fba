"""Views of waveform systems' audio: spectrogram panels with score bars, and audio players."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from imf.core.runtime import atomic_path
from imf.models.features import LogMel
from imf.eval.evalset import EvalSet


def plot_spectrograms(wavs: Mapping[str, Sequence[Tensor]], es: EvalSet, index: int, path: str | Path,
                      table: pd.DataFrame | None = None, columns: Sequence[str] = (), title: str = "Token2Wav") -> Path:
    """Log-mel of utterance ``index`` of a waveform eval set for the reference and every system
    (one panel each; ``wavs``: name -> list of (n_samples_i,)) and, with ``table`` (one row per
    ``system``), a bar chart per column of the systems' scores. Saved as PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    logmel = LogMel(es.corpus.mel_config)
    panels = [("reference", es.wavs[index][:es.n_samples[index]])] + [(k, v[index]) for k, v in wavs.items()]
    cols = [c for c in columns if table is not None and c in table]
    n_rows = len(panels) + (1 if cols else 0)
    fig = plt.figure(figsize=(10, 1.6 * n_rows + 0.5))
    for k, (name, w) in enumerate(panels):
        ax = fig.add_subplot(n_rows, 1, k + 1)
        with torch.no_grad():
            ax.imshow(logmel(w.float()).numpy(), origin="lower", aspect="auto", vmin=-11, vmax=2, cmap="magma")
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    if cols:
        gs = fig.add_gridspec(n_rows, len(cols))
        for j, c in enumerate(cols):
            ax = fig.add_subplot(gs[n_rows - 1, j])
            ax.bar(range(len(table)), table[c].astype(float).values, color="C0")
            ax.set_title(c, fontsize=8)
            ax.set_xticks(range(len(table)))
            ax.set_xticklabels([str(s)[:10] for s in table["system"]], rotation=60, fontsize=6)
    fig.suptitle(f"{title}: {es.ids[index]}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def play_utterance(wavs: Mapping[str, Sequence[Tensor]], es: EvalSet, index: int) -> None:
    """In a notebook: utterance ``index``'s id and text, then one audio player per system (same
    utterance, same noise)."""
    from IPython.display import Audio, Markdown, display

    print(f"utterance {es.ids[index]}: {es.texts[index]!r}")
    for name, ws in wavs.items():
        display(Markdown(f"**{name}**"), Audio(ws[index].numpy(), rate=es.corpus.sample_rate))
