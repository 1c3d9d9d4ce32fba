"""The embedded corpus: determinism, re-run skipping, alignment, splits, errors, dataset/collate."""
from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from imf.core.config import ConfigError
from imf.data import (VOICES, CorpusConfig, CorpusError, EngineError, MelTokenDataset, build_corpus, check_files,
                      collate, load_corpus)
from imf.data.engines import ESPEAK_TO_SHARED, Flite, Prosody, Voice, synthesize
from imf.data.text import MAX_WORDS, MIN_WORDS, PHONES, frame_durations, sentence_for, vocabulary

# 5 utterances per speaker: 3 train, 1 dev, 1 test (the unseen speakers: 5 unseen)
MICRO = dict(profile="tiny", utts_per_speaker=5, dev_fraction=0.2, test_fraction=0.2)


def shared_micro(tmp_path_factory) -> Path:
    """The micro corpus in one folder per test session: built by the first module that asks,
    found at once by the others (build_corpus returns a finished corpus of the same config)."""
    root = tmp_path_factory.getbasetemp() / "shared-micro"
    return build_corpus(CorpusConfig.from_dict(MICRO), root=root, progress=False, workers=2)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The same micro corpus built twice: in 2 worker processes and in-process."""
    cfg = CorpusConfig.from_dict(MICRO)
    a = shared_micro(tmp_path_factory)
    b = build_corpus(cfg, root=tmp_path_factory.mktemp("b"), progress=False, workers=1)
    return a, b


@pytest.fixture(scope="module")
def corpus(micro):
    return load_corpus(micro[0])


# --- text and alignment units ----------------------------------------------------------------

def test_sentences_are_deterministic_and_4_to_12_words():
    s = [sentence_for(0, i) for i in range(300)]
    assert s == [sentence_for(0, i) for i in range(300)]
    assert s != [sentence_for(1, i) for i in range(300)]
    assert all(MIN_WORDS <= len(x.split()) <= MAX_WORDS for x in s)
    assert len(set(s)) > 280


def test_frame_durations_sum_exactly_and_give_every_phone_a_frame():
    fr = 16000 / 256
    d = frame_durations([0.0101, 0.0102, 0.5, 0.51, 1.0], n_frames=64, frame_rate=fr)
    assert sum(d) == 64 and min(d) >= 1 and len(d) == 5
    # the cumulative boundaries are the rounded end times where that leaves room
    assert np.cumsum(d)[2] == round(0.5 * fr)
    with pytest.raises(ValueError, match="cannot align"):
        frame_durations([0.1] * 5, n_frames=4, frame_rate=fr)


def test_espeak_mapping_covers_the_whole_vocabulary():
    """Every word the generator can emit maps onto the shared inventory for every espeak voice
    (an unmapped phoneme raises EngineError)."""
    words = vocabulary()
    chunks = [" ".join(words[i:i + 60]) + "." for i in range(0, len(words), 60)]
    for v in VOICES:
        if v.engine != "espeak":
            continue
        for text in chunks:
            syn = synthesize(text, v)
            assert set(syn.phones) <= set(PHONES[1:]), v.voice
    assert all(p in PHONES for shared in ESPEAK_TO_SHARED.values() for p in shared)


def test_espeak_is_a_pure_function_of_its_inputs():
    v = Voice("t", "espeak", "en+grandma")
    a = synthesize("please clean the bright cat quietly.", v, Prosody(1.1, 1.05, 1.2))
    synthesize("something else entirely.", Voice("u", "espeak", "en-029+Andy"), Prosody(0.9, 0.9, 0.7))
    b = synthesize("please clean the bright cat quietly.", v, Prosody(1.1, 1.05, 1.2))
    assert np.array_equal(a.wav, b.wav) and a.ends == b.ends


def test_missing_flite_says_how_to_install(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(EngineError, match="apt-get install flite"):
        Flite()


def test_unknown_config_key_names_it():
    with pytest.raises(ConfigError, match="profil"):
        CorpusConfig.from_dict({"profil": "tiny"})
    with pytest.raises(ConfigError, match="seed"):
        CorpusConfig.from_dict({"seed": "0"})
    with pytest.raises(ConfigError, match="profile"):
        CorpusConfig.from_dict({"profile": "huge"})
    with pytest.raises(ConfigError, match="speakers"):
        CorpusConfig.from_dict({"speakers": ["nobody"]})


# --- the built corpus ------------------------------------------------------------------------

def test_rebuild_is_byte_identical(micro):
    a, b = micro
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    m = pd.read_csv(a / "manifest.csv")
    for rel in m.mel:
        assert np.array_equal(np.load(a / rel), np.load(b / rel)), rel
    ja, jb = (json.loads((p / "corpus.json").read_text()) for p in (a, b))
    assert ja["mel_mean"] == jb["mel_mean"] and ja["mel_std"] == jb["mel_std"]


def test_rerun_skips_finished_work(micro, tmp_path):
    src = micro[0]
    cfg = CorpusConfig.from_dict(MICRO)
    t0 = time.perf_counter()
    assert build_corpus(cfg, root=src.parent, progress=False) == src
    assert time.perf_counter() - t0 < 0.5  # finished corpus, same config: returns at once

    # an interrupted build (no corpus.json, one utterance lost) reuses every other file
    root = tmp_path / "copy"
    shutil.copytree(src, root / src.name)
    dst = root / src.name
    (dst / "corpus.json").unlink()
    lost = "fl-slt_0001"
    (dst / "wav" / f"{lost}.wav").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (dst / "mel").iterdir()}
    build_corpus(cfg, root=root, progress=False, workers=1)
    changed = sorted(p.name for p in (dst / "mel").iterdir() if p.stat().st_mtime_ns != mtimes[p.name])
    assert changed == [f"{lost}.npy"]
    assert (dst / "manifest.csv").read_bytes() == (src / "manifest.csv").read_bytes()


def test_alignment_matches_audio_and_mel(corpus):
    hop = corpus.mel_config.hop_length
    for _, r in corpus.manifest.iterrows():
        d = [int(x) for x in r.durations.split()]
        assert len(d) == len(r.phones.split()) and min(d) >= 1
        assert sum(d) == r.n_frames == 1 + r.n_samples // hop, r.id
        assert corpus.load_mel(r.id).shape == (80, r.n_frames)
        assert corpus.load_wav(r.id).shape == (r.n_samples,)
        assert corpus.tokens(r.id).shape == (r.n_frames,)
    assert corpus.tokens(corpus.manifest.id[0]).min() >= 1  # no pad id inside an utterance
    assert corpus.phones[0] == "<pad>" and corpus.n_tokens == len(corpus.phones)


def test_mel_file_is_logmel_of_the_wav(corpus):
    from imf.models.features import LogMel

    ident = corpus.manifest.id[3]
    mel = LogMel(corpus.mel_config)(corpus.load_wav(ident))
    assert torch.allclose(mel, corpus.load_mel(ident), atol=1e-4)


def test_speakers_engines_and_unseen_split(corpus):
    m = corpus.manifest
    assert m.speaker.nunique() >= 8 and m.engine.nunique() >= 2
    unseen = set(m.speaker[m.split == "unseen"])
    assert unseen == set(corpus.unseen_speakers)
    assert sorted(m.engine[m.speaker.isin(unseen)].unique()) == ["espeak", "flite"]
    assert len(unseen) == 2 and not unseen & set(m.speaker[m.split != "unseen"])
    assert set(corpus.split("train").speaker) == set(corpus.seen_speakers)
    assert len(corpus.split("dev")) == len(corpus.split("test")) == len(corpus.seen_speakers)
    assert corpus.speaker_id(corpus.speakers[3]) == 3
    with pytest.raises(CorpusError, match="unknown split"):
        corpus.split("validation")
    with pytest.raises(CorpusError, match="unknown speaker"):
        corpus.speaker_id("nobody")


def test_prosody_varies_within_each_speaker(corpus):
    m = corpus.manifest
    for _, g in m.groupby("speaker"):
        assert g.pitch.nunique() == len(g) and g.rate.nunique() == len(g)
        assert g.f0.std() > 2.0  # Hz: the pitch draw reaches the audio
    # the measured F0 follows the pitch factor (relative to each speaker's mean)
    rel = np.log(m.f0) - m.groupby("speaker").f0.transform(lambda f: np.log(f).mean())
    assert np.corrcoef(np.log(m.pitch), rel)[0, 1] > 0.6


def test_mel_statistics_and_normalize_roundtrip(corpus):
    assert corpus.mel_mean.shape == corpus.mel_std.shape == (80,)
    assert corpus.mel_std.min() > 0
    mels = torch.cat([corpus.load_mel(i) for i in corpus.split("train").id], dim=1)
    assert torch.allclose(mels.mean(1), corpus.mel_mean, atol=1e-3)
    x = corpus.normalize(mels[None])
    assert torch.allclose(corpus.denormalize(x)[0], mels, atol=1e-4)
    with pytest.raises(ValueError, match="80"):
        corpus.normalize(torch.zeros(2, 79, 5))


# --- errors naming files ---------------------------------------------------------------------

@pytest.fixture
def broken(micro, tmp_path):
    """A copy of the micro corpus whose first three wavs are corrupt, empty and 22.05 kHz."""
    dst = tmp_path / "broken"
    shutil.copytree(micro[0], dst)
    c = load_corpus(dst)
    ids = c.manifest.id[:4].tolist()
    (dst / c.row(ids[0]).wav).write_bytes(b"RIFF\x00\x00garbage, not a wav file")
    sf.write(dst / c.row(ids[1]).wav, np.zeros(0, dtype=np.int16), 16000, subtype="PCM_16")
    sf.write(dst / c.row(ids[2]).wav, np.zeros(22050, dtype=np.int16), 22050, subtype="PCM_16")
    (dst / c.row(ids[3]).wav).unlink()
    return c, ids


@pytest.mark.parametrize("k, match", [(0, "corrupt"), (1, "empty"), (2, "22050 Hz"), (3, "missing")])
def test_bad_wav_raises_naming_the_file(broken, k, match):
    c, ids = broken
    path = str(c.root / c.row(ids[k]).wav)
    with pytest.raises(CorpusError, match=match) as e:
        c.load_wav(ids[k])
    assert path in str(e.value)


def test_load_corpus_errors_name_the_file(micro, tmp_path):
    with pytest.raises(CorpusError, match="corpus.json"):
        load_corpus(tmp_path)
    dst = tmp_path / "c"
    shutil.copytree(micro[0], dst)
    (dst / "manifest.csv").unlink()
    with pytest.raises(CorpusError, match=re.escape(str(dst / "manifest.csv"))):
        load_corpus(dst)
    (dst / "corpus.json").write_text("{not json")
    with pytest.raises(CorpusError, match=re.escape(str(dst / "corpus.json"))):
        load_corpus(dst)
    (dst / "corpus.json").write_text("{}")
    with pytest.raises(CorpusError, match="missing key"):
        load_corpus(dst)
    shutil.copy(micro[0] / "corpus.json", dst / "corpus.json")
    pd.read_csv(micro[0] / "manifest.csv").drop(columns=["durations"]).to_csv(dst / "manifest.csv", index=False)
    with pytest.raises(CorpusError, match="durations"):
        load_corpus(dst)


# --- damaged corpus files: errors name the utterance and the file ------------------------------

@pytest.fixture
def damaged(micro, tmp_path):
    dst = tmp_path / micro[0].name  # where build_corpus(root=tmp_path) looks for it
    shutil.copytree(micro[0], dst)
    return dst, load_corpus(dst).manifest


def test_truncated_wav_and_empty_mel_name_the_utterance(damaged):
    dst, m = damaged
    wav_id, mel_id, nan_id = m.id[1], m.id[2], m.id[3]
    data = (dst / m.wav[1]).read_bytes()
    (dst / m.wav[1]).write_bytes(data[: len(data) // 2])  # a copy killed half way
    (dst / m.mel[2]).write_bytes(b"")
    mel = np.load(dst / m.mel[3])
    mel[5, 7] = np.nan
    np.save(dst / m.mel[3], mel)
    c = load_corpus(dst)
    n = int(m.n_samples[1])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(dst / m.wav[1]))}: {(len(data) // 2 - 44) // 2} samples, "
                                          rf"the manifest says {n} \(utterance '{wav_id}'\); truncated"):
        c.load_wav(wav_id)
    with pytest.raises(CorpusError, match=rf"{re.escape(str(dst / m.mel[2]))}: empty mel file .*'{mel_id}'"):
        c.load_mel(mel_id)
    with pytest.raises(CorpusError, match=rf"1 non-finite values in the mel \(utterance '{nan_id}'\)"):
        c.load_mel(nan_id)
    ds = MelTokenDataset(c, split="train")
    with pytest.raises(CorpusError, match=mel_id):  # and so does a training item
        ds[ds.ids.index(mel_id)]


def _edit_row(k, **fields):
    def edit(text):
        lines = text.splitlines(keepends=True)
        df = pd.read_csv(io.StringIO(lines[0] + lines[k + 1]), dtype=str, keep_default_na=False)
        for key, v in fields.items():
            df[key] = v
        lines[k + 1] = df.to_csv(index=False, header=False, lineterminator="\n")
        return "".join(lines)
    return edit


MANIFEST_DAMAGE = {
    "non-numeric n_frames": (_edit_row(4, n_frames="abc"), r"line 6 \(utterance '{id4}'\): n_frames 'abc' is not"),
    "one duration short": (lambda s: _edit_row(4, durations=" ".join(_row(s, 4)["durations"].split()[:-1]))(s),
                           r"line 6 \(utterance '{id4}'\): \d+ phones but \d+ durations"),
    "durations off by one": (lambda s: _edit_row(4, durations=_row(s, 4)["durations"] + "1")(s),
                             r"line 6 \(utterance '{id4}'\): durations sum to"),
    "empty mel field": (_edit_row(7, mel=""), r"line 9 \(utterance '{id7}'\): empty field\(s\) \['mel'\]"),
    "cut mid-row": (lambda s: s[: s.index("\n", len(s) // 2) + 30], r"rows, .*corpus.json records \d+ utterances"),
}


def _row(text, k):
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).iloc[k]


@pytest.mark.parametrize("case", list(MANIFEST_DAMAGE))
def test_bad_manifest_rows_name_the_line_and_utterance(damaged, case):
    dst, m = damaged
    edit, match = MANIFEST_DAMAGE[case]
    path = dst / "manifest.csv"
    path.write_text(edit(path.read_text()))
    with pytest.raises(CorpusError, match=re.escape(str(path))) as e:
        load_corpus(dst)
    assert re.search(match.format(id4=m.id[4], id7=m.id[7]), str(e.value)), str(e.value)
    if case == "cut mid-row":  # the same manifest without the row count: the cut row itself is named
        info = json.loads((dst / "corpus.json").read_text())
        del info["n_utts"]
        (dst / "corpus.json").write_text(json.dumps(info))
        with pytest.raises(CorpusError, match=r"line \d+ \(utterance '.*'\): (empty field|.* is not)"):
            load_corpus(dst)


def test_finished_corpus_is_rechecked_and_damaged_files_rebuilt(micro, damaged):
    dst, m = damaged
    cfg = CorpusConfig.from_dict(MICRO)
    assert check_files(dst, json.loads((dst / "corpus.json").read_text())) == []
    wav, mel = dst / m.wav[5], dst / m.mel[6]
    good_wav, good_mel = wav.read_bytes(), mel.read_bytes()
    wav.write_bytes(good_wav[:1000])
    mel.unlink()
    problems = check_files(dst, json.loads((dst / "corpus.json").read_text()))
    assert len(problems) == 2 and m.id[5] in problems[0] and "missing" in problems[1] and m.id[6] in problems[1]
    with pytest.warns(UserWarning, match=r"2 damaged or missing file\(s\).*rebuilding"):
        assert build_corpus(cfg, root=dst.parent, progress=False, workers=1) == dst
    assert wav.read_bytes() == good_wav and mel.read_bytes() == good_mel
    assert (dst / "manifest.csv").read_bytes() == (micro[0] / "manifest.csv").read_bytes()


# --- dataset and collate ---------------------------------------------------------------------

def test_dataset_items_and_prompts(corpus):
    ds = MelTokenDataset(corpus, split="train", max_frames=48, prompt_frames=32, crop="random")
    assert len(ds) == len(corpus.split("train"))
    torch.manual_seed(0)
    for i in range(len(ds)):
        it = ds[i]
        row, prow = corpus.row(it["id"]), corpus.row(it["prompt_id"])
        T = it["z_1"].shape[1]
        assert it["z_1"].shape[0] == 80 and 1 <= T <= 48 and it["tokens"].shape == (T,)
        o = it["offset"]
        assert torch.equal(it["tokens"], corpus.tokens(it["id"])[o:o + T])
        assert torch.allclose(it["z_1"], corpus.normalize(corpus.load_mel(it["id"]))[:, o:o + T])
        assert it["prompt_id"] != it["id"] and prow.speaker == row.speaker and prow.split == "train"
        assert it["prompt"].shape[0] == 80 and 1 <= it["prompt"].shape[1] <= 32
        assert it["speaker"] == corpus.speaker_id(row.speaker) and it["text"] == row.text


def test_dataset_is_deterministic_without_random_crops(corpus):
    a = MelTokenDataset(corpus, split="unseen", max_frames=40, crop="start", seed=3)
    b = MelTokenDataset(corpus, split="unseen", max_frames=40, crop="start", seed=3)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["prompt_id"] == y["prompt_id"] and torch.equal(x["prompt"], y["prompt"])
        assert x["offset"] == 0 and torch.equal(x["z_1"], y["z_1"])
    # "seeded": a window anywhere in the utterance, the same for the same (seed, id), another for another seed
    a, b, c = (MelTokenDataset(corpus, split="unseen", max_frames=40, crop="seeded", seed=s) for s in (3, 3, 4))
    offsets = []
    for i in range(len(a)):
        x, y, z = a[i], b[i], c[i]
        assert x["offset"] == y["offset"] and torch.equal(x["z_1"], y["z_1"]) and x["z_1"].shape[1] == 40
        full_mel = corpus.normalize(corpus.load_mel(x["id"]))
        assert torch.equal(x["z_1"], full_mel[:, x["offset"]:x["offset"] + 40])
        offsets.append((x["offset"], z["offset"]))
    assert len({o for o, _ in offsets}) > 1 and any(o != o2 for o, o2 in offsets)
    full = MelTokenDataset(corpus, split="dev", crop="none", normalize=False)[0]
    assert torch.equal(full["z_1"], corpus.load_mel(full["id"]))
    # a dev pool with one utterance per speaker borrows the prompt from the speaker's other splits
    assert full["prompt_id"] != full["id"] and corpus.row(full["prompt_id"]).speaker == corpus.row(full["id"]).speaker
    with pytest.raises(ValueError, match="crop"):
        MelTokenDataset(corpus, crop="centre")
    with pytest.raises(CorpusError, match="unknown split"):
        MelTokenDataset(corpus, split="valid")


def test_collate_pads_and_masks(corpus):
    ds = MelTokenDataset(corpus, split="train", max_frames=64, prompt_frames=40, crop="none")
    items = [ds[i] for i in range(4)]
    b = collate(items)
    B, T = 4, max(it["z_1"].shape[1] for it in items)
    Tp = max(it["prompt"].shape[1] for it in items)
    assert b["z_1"].shape == (B, 80, T) and b["tokens"].shape == (B, T) and b["mask"].shape == (B, T)
    assert b["prompt"].shape == (B, 80, Tp) and b["prompt_mask"].shape == (B, Tp)
    assert b["mask"].dtype == torch.bool and b["tokens"].dtype == torch.long and b["speaker"].dtype == torch.long
    assert b["lengths"].tolist() == [it["z_1"].shape[1] for it in items]
    assert b["ids"] == [it["id"] for it in items] and b["texts"] == [it["text"] for it in items]
    for k, it in enumerate(items):
        n = it["z_1"].shape[1]
        assert b["mask"][k, :n].all() and not b["mask"][k, n:].any()
        assert (b["tokens"][k, n:] == 0).all() and (b["tokens"][k, :n] > 0).all()
        assert (b["z_1"][k, :, n:] == 0).all() and torch.equal(b["z_1"][k, :, :n], it["z_1"])
        assert b["prompt_mask"][k].sum() == it["prompt"].shape[1]


# --- the notebook ----------------------------------------------------------------------------

@pytest.mark.slow
def test_corpus_notebook_runs_and_records_metrics(nb_env):
    from imf.runs.pipeline import run_notebook

    out = run_notebook("00_corpus", nb_env / "runs", {"PROFILE": "tiny"})
    assert out.exists()
    metrics = json.loads((nb_env / "results" / "00_corpus" / "metrics.json").read_text())
    assert metrics["n_utts"] == 300 and metrics["n_speakers"] == 10 and metrics["n_engines"] == 2
    assert metrics["split_counts"] == {"train": 192, "dev": 24, "test": 24, "unseen": 60}
    assert metrics["build_seconds"] >= 0
    speakers = pd.read_csv(nb_env / "results" / "00_corpus" / "speakers.csv")
    assert len(speakers) == 10
    section = (nb_env / "results" / "sections" / "00_corpus.md").read_text()
    assert "00_corpus/" in section and ".png" in section
    assert (nb_env / "data" / "synth-tiny" / "corpus.json").exists()
