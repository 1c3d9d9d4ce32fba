"""Corpus importers (imf.data.importers) on tiny LJSpeech / LibriTTS / manifest folders spoken by the
embedded engines at test time (tests/corpus_fixtures.py), with MFA-style TextGrids written by praatio."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from imf.data import LogMel, MelTokenDataset, collate, load_corpus
from imf.data.corpus import CorpusError
from imf.data.importers import ImportConfig, detect_layout, import_corpus, normalize_phone, resolve_source
from imf.data.importers import core
from imf.data.importers.core import Utterance, assign_splits, held_out_speakers
from imf.data.text import PHONES, frame_durations
from imf.data.waves import MelWaveDataset
from imf.runs.pipeline import with_corpus_dir
from tests.corpus_fixtures import SPEAKERS, make_libritts, make_ljspeech, make_manifest, speak, write_textgrid

pytest.importorskip("praatio")
CFG = ImportConfig(workers=1)
SPEAKERS_E2E = SPEAKERS[:4]  # three seen speakers (train/dev/test) and one held out (unseen)


@pytest.fixture(scope="module")
def libritts(tmp_path_factory) -> Path:
    """3 speakers x 4 utterances at 24 kHz with TextGrids; the third speaker under test-clean (held out)."""
    return make_libritts(tmp_path_factory.mktemp("src") / "LibriTTS", held_out=("es-caribbean-andy",))


@pytest.fixture
def libritts_copy(libritts, tmp_path) -> Path:
    return Path(shutil.copytree(libritts, tmp_path / "LibriTTS"))


def test_libritts_import_is_a_corpus_the_datasets_read(libritts, tmp_path):
    corpus = load_corpus(import_corpus(libritts, CFG, root=tmp_path, progress=False))
    assert corpus.info["importer"] == "libritts" and corpus.aligned and corpus.sample_rate == 16000
    assert corpus.unseen_speakers == ["102"] and corpus.seen_speakers == ["100", "101"]  # test-clean is held out
    assert set(corpus.split("unseen").speaker) == {"102"} and len(corpus) == 12
    assert corpus.phones[: len(PHONES)] == PHONES  # ARPAbet stress dropped: the embedded corpus's ids
    batch = collate([MelTokenDataset(corpus, "train", max_frames=64, prompt_frames=16)[i] for i in range(3)])
    assert batch["z_1"].shape[:2] == (3, 80) and batch["tokens"].shape == batch["mask"].shape

    # the stored tokens are the TextGrid's phones at frame resolution; the mel is LogMel of the stored wav
    ident = corpus.split("train").id.iloc[0]
    _, intervals, _ = speak("es-gb-grandma", 0, 0, 24000)
    n_frames = int(corpus.row(ident).n_frames)
    durations = frame_durations([e for _, e, _ in intervals], n_frames, 16000 / 256)
    ids, got = corpus.phone_ids(ident)
    assert got.tolist() == durations and int(got.sum()) == n_frames
    assert [corpus.phones[i] for i in ids] == [normalize_phone(lab) for _, _, lab in intervals]
    wav = corpus.load_wav(ident)
    assert abs(len(wav) - round(corpus.row(ident).n_samples)) == 0 and abs(len(wav) / 16000 - intervals[-1][1]) < 1e-3
    torch.testing.assert_close(LogMel(corpus.mel_config)(wav), corpus.load_mel(ident), rtol=0, atol=1e-5)


def test_ljspeech_import_with_textgrids_elsewhere(tmp_path):
    src = make_ljspeech(tmp_path / "LJSpeech-1.1", utts=4, textgrid_dir=tmp_path / "mfa_out")
    assert detect_layout(src) == "ljspeech"
    cfg = ImportConfig(workers=1, textgrid_dir=str(tmp_path / "mfa_out"), dev_fraction=0.25, test_fraction=0.25)
    corpus = load_corpus(import_corpus(src, cfg, root=tmp_path / "data", progress=False))
    assert corpus.speakers == ["LJSpeech-1.1"] and corpus.unseen_speakers == []  # one speaker: nobody held out
    assert corpus.manifest.split.tolist() == ["train", "train", "dev", "test"]
    assert corpus.manifest.text.iloc[0].islower()  # the normalized (third) field
    item = MelTokenDataset(corpus, "train", max_frames=32, prompt_frames=8)[0]
    assert item["z_1"].shape[1] == item["tokens"].shape[0]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_import_without_alignments(tmp_path, suffix):
    path = make_manifest(tmp_path / "mine", utts=3, suffix=suffix)
    corpus = load_corpus(import_corpus(path, ImportConfig(workers=1, n_unseen=1), root=tmp_path / "data", progress=False))
    assert not corpus.aligned and len(corpus.unseen_speakers) == 1 and len(corpus) == 9
    item = MelWaveDataset(corpus, "train")[0]  # audio + mels: vocoder / text2mel data
    assert item["mel"].shape[0] == 80
    with pytest.raises(CorpusError, match="without alignments"):
        MelTokenDataset(corpus, "train")[0]  # token2mel needs MFA alignments: a clear error


def test_manifest_split_column_is_used_as_given(tmp_path):
    path = make_manifest(tmp_path / "m", speakers=("fl-slt", "fl-rms"), utts=2)
    text = path.read_text().splitlines()
    splits = ["train", "test", "unseen", "unseen"]
    path.write_text("\n".join([text[0] + ",split"] + [f"{r},{s}" for r, s in zip(text[1:], splits)]) + "\n")
    corpus = load_corpus(import_corpus(path, CFG, root=tmp_path / "data", progress=False))
    assert corpus.manifest.sort_values("id").split.tolist() == ["unseen", "unseen", "train", "test"]
    assert corpus.unseen_speakers == ["fl-rms"]
    path.write_text(path.read_text().replace("unseen\n", "train\n", 1))  # fl-rms both seen and unseen
    with pytest.raises(CorpusError, match="speaker 'fl-rms' has utterances in 'unseen' and in other splits"):
        import_corpus(path, CFG, root=tmp_path / "data", progress=False)


# ------------------------------------------------------------------------------------------------
# errors name the file
# ------------------------------------------------------------------------------------------------
def test_bad_rows_name_the_file_and_line(tmp_path):
    src = make_ljspeech(tmp_path / "LJ", utts=2)
    with open(src / "metadata.csv", "a") as f:
        f.write("LJ001-0003 only one field\n")
    with pytest.raises(CorpusError, match=r"metadata\.csv line 3: expected 'id\|text"):
        import_corpus(src, CFG, root=tmp_path / "data", progress=False)
    path = make_manifest(tmp_path / "m", speakers=("fl-slt",), utts=2)
    path.write_text(path.read_text().replace(",fl-slt\n", ",\n", 1))  # the first row loses its speaker
    with pytest.raises(CorpusError, match=r"manifest\.csv line 2: empty field\(s\) \['speaker'\]"):
        import_corpus(path, CFG, root=tmp_path / "data", progress=False)


def test_missing_files_are_named(libritts_copy, tmp_path):
    wav = next(libritts_copy.rglob("*.wav"))
    wav.with_suffix(".TextGrid").unlink()
    with pytest.raises(CorpusError, match=re.escape(f"{wav.stem}.TextGrid: alignment missing for {wav}")):
        import_corpus(libritts_copy, CFG, root=tmp_path / "data", progress=False)
    wav.unlink()
    with pytest.raises(CorpusError, match=re.escape(f"{wav}: audio file missing")):
        import_corpus(libritts_copy, CFG, root=tmp_path / "data", progress=False)
    text = next(libritts_copy.rglob("*.normalized.txt"))
    text.unlink()
    with pytest.raises(CorpusError, match=re.escape(f"{text.name}: text missing for the audio")):
        import_corpus(libritts_copy, CFG, root=tmp_path / "data", progress=False)


def test_misaligned_textgrid_is_named(libritts_copy, tmp_path):
    wav = sorted(libritts_copy.rglob("*.wav"))[1]
    _, intervals, text = speak("es-gb-grandma", 0, 0, 24000)  # another utterance's alignment
    tg = write_textgrid(wav.with_suffix(".TextGrid"), [(a * 1.5, b * 1.5, p) for a, b, p in intervals],
                        intervals[-1][1] * 1.5, text)
    with pytest.raises(CorpusError, match=re.escape(str(tg)) + ".*the alignment ends at .* but the audio lasts"):
        import_corpus(libritts_copy, CFG, root=tmp_path / "data", progress=False)


# ------------------------------------------------------------------------------------------------
# resumable, cached
# ------------------------------------------------------------------------------------------------
def test_an_interrupted_import_resumes_to_the_same_corpus(libritts, tmp_path, monkeypatch):
    whole = import_corpus(libritts, CFG, root=tmp_path / "a", progress=False)
    made, original = [], core.make_utterance

    def dies_after_five(root, job):
        if len(made) == 5:
            raise KeyboardInterrupt
        made.append(job.utt.id)
        return original(root, job)

    monkeypatch.setattr(core, "make_utterance", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        import_corpus(libritts, CFG, root=tmp_path / "b", progress=False)
    out = tmp_path / "b" / whole.name
    assert not (out / "corpus.json").exists() and len(list((out / "meta").glob("*.json"))) == 5
    with pytest.raises(CorpusError, match="corpus.json: missing"):
        load_corpus(out)  # a half-imported corpus is not loadable

    reused = []
    finished = core.finished_row

    def counting(root, ident, key):
        row = finished(root, ident, key)
        reused.append(row is not None)
        return row

    monkeypatch.setattr(core, "make_utterance", original)
    monkeypatch.setattr(core, "finished_row", counting)
    assert import_corpus(libritts, CFG, root=tmp_path / "b", progress=False) == out
    assert len(reused) == 12 and sum(reused) == 5  # the 5 finished utterances are reused, 7 computed
    assert (out / "manifest.csv").read_bytes() == (whole / "manifest.csv").read_bytes()
    a, b = (json.loads((d / "corpus.json").read_text()) for d in (whole, out))
    assert {k: v for k, v in a.items() if k != "build_seconds"} == {k: v for k, v in b.items() if k != "build_seconds"}
    for mel in sorted((whole / "mel").glob("*.npy")):
        np.testing.assert_array_equal(np.load(mel), np.load(out / "mel" / mel.name))
    for wav in sorted((whole / "wav").glob("*.wav")):
        assert wav.read_bytes() == (out / "wav" / wav.name).read_bytes()

    # a finished import of the same config returns at once, touching no utterance
    reused.clear()
    assert import_corpus(libritts, CFG, root=tmp_path / "b", progress=False) == out and reused == []


# ------------------------------------------------------------------------------------------------
# pieces
# ------------------------------------------------------------------------------------------------
def test_phone_labels_and_layout_detection(libritts, tmp_path):
    assert [normalize_phone(p) for p in ("AH0", "IY1", "", "sp", "sil", "spn", "NG")] == \
        ["ah", "iy", "sil", "sil", "sil", "spn", "ng"]
    assert resolve_source(libritts)[0] == "libritts"
    assert resolve_source(f"manifest:{libritts}")[0] == "manifest"  # a prefix names the layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="cannot tell the corpus layout"):
        detect_layout(tmp_path / "empty")


def test_duration_filter_drops_and_records(libritts, tmp_path):
    corpus = load_corpus(import_corpus(libritts, ImportConfig(workers=1, max_seconds=2.2, name="short"), root=tmp_path,
                                       progress=False))
    seconds = corpus.manifest.n_samples / 16000
    assert seconds.max() <= 2.2 and len(corpus) + len(corpus.info["dropped"]) == 12 and corpus.info["dropped"]


def test_speaker_held_out_splits():
    cfg = ImportConfig(n_unseen=2, dev_fraction=0.2, test_fraction=0.2)
    assert held_out_speakers(["a"], cfg) == []  # never every speaker
    assert len(held_out_speakers(list("abcde"), cfg)) == 2
    assert held_out_speakers(list("abcde"), cfg) == held_out_speakers(list("edcba"), cfg)  # order-free
    assert held_out_speakers(list("abc"), cfg, ["c"]) == ["c"] and held_out_speakers(list("ab"), cfg, ["a", "b"]) != ["a", "b"]
    utts = [Utterance(f"{s}{j}", s, Path("x"), "t", "") for s in "ab" for j in range(5)]
    splits = assign_splits(utts, ["b"], cfg)
    assert [splits[f"a{j}"] for j in range(5)] == ["train", "train", "train", "dev", "test"]
    assert {splits[f"b{j}"] for j in range(5)} == {"unseen"}


def test_pipeline_passes_corpus_dir_only_where_declared(tmp_path):
    p = {"PROFILE": "tiny"}
    assert with_corpus_dir("01_teacher", p, f"libritts:{tmp_path}") == {"PROFILE": "tiny", "CORPUS_DIR": f"libritts:{tmp_path}"}
    assert with_corpus_dir("02_distill", p, str(tmp_path)) == p  # reads the teacher's corpus from its checkpoint
    assert with_corpus_dir("00_corpus", p, "") == p


# ------------------------------------------------------------------------------------------------
# acceptance: a tiny LibriTTS-layout corpus end to end through the notebooks (slow)
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_libritts_layout_end_to_end_through_the_notebooks(tmp_path, monkeypatch):
    """import (00_corpus) -> teacher (01) -> IntMeanFlow student (02) -> NFE evaluation (03), with CORPUS_DIR and
    PROFILE=tiny; 00_vocoder and the audio judges are left out to keep it short (the hand run has them)."""
    from imf.core.checkpoints import load_checkpoint
    from imf.runs.pipeline import run_notebook

    for var in ("IMF_RESULTS", "IMF_DATA", "IMF_RUNS"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    src = make_libritts(tmp_path / "LibriTTS", speakers=SPEAKERS_E2E, utts=10, held_out=(SPEAKERS_E2E[-1],))
    out = tmp_path / "imf_results" / "runs"
    run_notebook("00_corpus", out, {"PROFILE": "tiny", "CORPUS_DIR": str(src)})
    corpus = json.loads((tmp_path / "imf_results" / "00_corpus" / "metrics.json").read_text())
    assert corpus["n_utts"] == 40 and corpus["split_counts"]["unseen"] == 10
    run_notebook("01_teacher", out, {"PROFILE": "tiny", "CORPUS_DIR": str(src)})
    run_notebook("02_distill", out, {"PROFILE": "tiny", "ABLATION": False})
    run_notebook("03_nfe_curves", out, {"PROFILE": "tiny", "JUDGES": [], "SPEED_REPEATS": 1})
    imported = tmp_path / "imf_data" / "LibriTTS"
    assert Path(load_checkpoint(tmp_path / "imf_runs" / "tiny" / "teacher" / "checkpoints" / "last.pt")["config"]["corpus"]) == imported
    curves = pd.read_csv(tmp_path / "imf_results" / "03_nfe_curves" / "nfe_curves.csv")
    assert {"IntMeanFlow student"} <= set(curves.system) and curves.fs_ratio.notna().all()
