"""The blind listening test: trial design, the crash-safe rating store, resume, blindness of the widget,
and the CMOS / SMOS analysis on synthetic ratings with and without a known effect.

The notebook itself runs in tests/test_notebooks.py (it needs the tiny pipeline's trained runs)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from imf.core.runtime import repo_root
from imf.eval.listening_test import (CMOS, COLUMNS, SMOS, ListeningTest, RatingStore, Trial, analyse, design_trials,
                                     next_trial, rating_row)

CONDS = {"c0": "SECRET-teacher@32", "c1": "SECRET-student@1", "c2": "SECRET-student@2"}
UTTS = ["u1", "u2", "u3", "u4"]


def make_test(tmp_path, name="t") -> ListeningTest:
    """A prepared test whose 'audio' files are distinct byte strings (the widget plays whatever bytes it gets)."""
    audio = {}
    for c in [*CONDS, "prompt"]:
        for u in UTTS:
            fname = f"{abs(hash((c, u))) % 10**12:012d}.wav"
            (tmp_path / "audio").mkdir(exist_ok=True)
            (tmp_path / "audio" / fname).write_bytes(f"RIFF-{c}-{u}".encode())
            audio[f"{c}/{u}"] = fname
    t = ListeningTest(tmp_path, name, dict(CONDS), "c0", list(UTTS), audio)
    t.save()
    return ListeningTest.open(tmp_path)


def row(i: int, rater="r") -> dict:
    t = Trial(CMOS, f"u{i}", "c1", "c0", "c1")
    return rating_row("t", rater, t, 1)


# --------------------------------------------------------------------------------------------
# trials
# --------------------------------------------------------------------------------------------

def test_trial_order_is_seeded_by_test_and_rater_and_ab_is_randomised():
    utts = [f"u{i}" for i in range(20)]
    a = design_trials("t", "alice", list(CONDS), "c0", utts)
    assert a == design_trials("t", "alice", list(CONDS), "c0", utts)  # reproducible after a restart
    assert a != design_trials("t", "bob", list(CONDS), "c0", utts)  # another rater, another order
    assert a != design_trials("t2", "alice", list(CONDS), "c0", utts)
    cmos = [t for t in a if t.kind == CMOS]
    smos = [t for t in a if t.kind == SMOS]
    assert a[: len(cmos)] == cmos  # CMOS block first
    assert sorted((t.condition, t.utt) for t in cmos) == sorted((c, u) for c in ("c1", "c2") for u in utts)
    assert sorted((t.condition, t.utt) for t in smos) == sorted((c, u) for c in CONDS for u in utts)
    for t in cmos:  # the reference is in exactly one slot, the rated condition in the other
        assert {t.a, t.b} == {"c0", t.condition} and t.flipped == (t.a == t.condition)
    flipped = np.mean([t.flipped for t in cmos])
    assert 0.25 < flipped < 0.75  # both orders occur (40 draws)
    assert [t.condition for t in cmos] != sorted(t.condition for t in cmos)  # shuffled, not blocked by system


def test_cmos_score_is_the_rated_condition_against_the_reference():
    plain, flipped = Trial(CMOS, "u", "c1", "c0", "c1"), Trial(CMOS, "u", "c1", "c1", "c0")
    assert rating_row("t", "r", plain, 2)["score"] == 2  # B (the condition) better than A (reference)
    assert rating_row("t", "r", flipped, 2)["score"] == -2  # B (the reference) better: the condition worse
    assert rating_row("t", "r", Trial(SMOS, "u", "c1", "c1"), 4)["score"] == 4
    for bad in (4, -4, 1.5, True):
        with pytest.raises(ValueError, match="CMOS answer"):
            rating_row("t", "r", plain, bad)
    with pytest.raises(ValueError, match="SMOS answer"):
        rating_row("t", "r", Trial(SMOS, "u", "c1", "c1"), 0)


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------

def test_ratings_are_appended_and_read_back(tmp_path):
    store = RatingStore(tmp_path / "ratings.csv")
    assert len(store.read()) == 0 and list(store.read().columns) == COLUMNS
    r = row(0, rater='odd, "rater"')  # commas and quotes survive the CSV round trip
    store.append(r)
    store.append(rating_row("t", "r", Trial(SMOS, "u1", "c1", "c1"), 5))  # no time measured: NaN seconds
    df = store.read()
    assert len(df) == 2 and df.rater.tolist() == ['odd, "rater"', "r"] and df.trial.tolist() == ["cmos:c1:u0", "smos:c1:u1"]
    assert df.score.tolist() == [1, 5] and df.b.tolist() == ["c1", ""] and (tmp_path / "ratings.csv").read_text().count("\n") == 3
    assert df.seconds.dtype == float and np.isnan(df.seconds.iloc[1]) and df.answer.dtype == np.int64
    with pytest.raises(ValueError, match="needs"):
        store.append({"rater": "x"})


WRITER = textwrap.dedent("""
    import sys, time, types
    sys.modules.setdefault("torch", types.ModuleType("torch"))  # the store needs no torch: start fast
    import imf.eval.listening_test as lt
    from imf.eval.listening_test import RatingStore, Trial, rating_row
    store, mode = RatingStore(sys.argv[1]), sys.argv[2]
    if mode == "half":
        def half(path, data):  # write half of the new file, then hang until killed
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
            print("HALF", flush=True)
            time.sleep(60)
        lt._write_bytes = half
    print("START", flush=True)
    i = int(sys.argv[3])
    while True:
        store.append(rating_row("t", "r", Trial("cmos", f"u{i}", "c1", "c0", "c1"), 1, 0.5))
        i += 1
""")


def _writer(path, mode, start):
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), mode, str(start)], stdout=subprocess.PIPE,
                            text=True, env=env)


def test_a_writer_killed_mid_write_leaves_the_old_ratings_whole(tmp_path):
    path = tmp_path / "ratings.csv"
    store = RatingStore(path)
    for i in range(5):
        store.append(row(i))
    before = path.read_bytes()
    proc = _writer(path, "half", 5)
    try:
        assert proc.stdout.readline().strip() == "START"
        assert proc.stdout.readline().strip() == "HALF"  # the new file is half written right now
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".ratings.csv.")]
        assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size < len(before) + 40
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert path.read_bytes() == before  # the kill lost the unsaved answer, nothing else
    store.append(row(5))  # the next writer removes the leftover and appends
    assert store.read().trial.tolist() == [f"cmos:c1:u{i}" for i in range(6)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ratings.csv.")] == []


def test_a_writer_killed_at_a_random_moment_leaves_only_whole_rows(tmp_path):
    path = tmp_path / "ratings.csv"
    rng = np.random.default_rng(0)
    n = 0
    for _ in range(2):  # kill a busy appender twice, at random moments
        proc = _writer(path, "loop", n)
        try:
            assert proc.stdout.readline().strip() == "START"
            time.sleep(0.2 + 0.3 * rng.random())
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            proc.kill()
        df = RatingStore(path).read()
        assert len(df) > n  # it wrote rows...
        assert df.trial.tolist() == [f"cmos:c1:u{i}" for i in range(len(df))]  # ...each one whole, none lost
        assert df.seconds.tolist() == [0.5] * len(df) and df.time.str.len().min() == 25
        n = len(df)


# --------------------------------------------------------------------------------------------
# resume and the widget
# --------------------------------------------------------------------------------------------

def test_resume_returns_the_next_unanswered_trial(tmp_path):
    test = make_test(tmp_path)
    trials = test.trials("alice")
    assert next_trial(trials, test.store.read(), "alice") == 0
    for t, v in zip(trials[:3], (1, -2, 0)):
        test.answer("alice", t, v)
    test.answer("bob", test.trials("bob")[0], 3)
    assert next_trial(trials, test.store.read(), "alice") == 3
    assert next_trial(test.trials("bob"), test.store.read(), "bob") == 1
    test.answer("alice", trials[5], 1)  # answered out of order (e.g. by another kernel): skipped, the gap asked
    assert next_trial(trials, test.store.read(), "alice") == 3
    for t in trials:
        if t.key not in set(test.store.read().trial):
            test.answer("alice", t, 1)
    assert next_trial(trials, test.store.read(), "alice") is None


def _shown_text(widget) -> str:
    """Every string a widget tree sends to the browser (values, descriptions, tooltips, classes, labels)."""
    out = []
    stack = [widget]
    while stack:
        w = stack.pop()
        for name in w.keys:
            v = getattr(w, name)
            if isinstance(v, (str, bytes)):
                out.append(v if isinstance(v, str) else v.decode(errors="replace"))
            elif isinstance(v, (list, tuple)):
                out += [x for x in v if isinstance(x, str)]
                stack += [x for x in v if hasattr(x, "keys") and hasattr(x, "comm")]
        if hasattr(w, "layout"):
            stack.append(w.layout)
    return "\n".join(out)


def test_the_widget_asks_blind_records_each_answer_and_resumes(tmp_path):
    pytest.importorskip("ipywidgets")
    from imf.viz.listening_test import ListeningTestUI

    test = make_test(tmp_path)
    ui = ListeningTestUI(test, "alice")
    n = len(ui.trials)
    for k in range(3):
        t = ui.trial
        shown = _shown_text(ui.widget)
        assert "SECRET" not in shown and not any(f in shown for f in test.audio.values())
        assert f"Trial {k + 1} of {n}" in ui.progress.value
        if t.kind == CMOS:  # A and B are the two conditions, in the trial's order
            assert (ui.audio_a.value, ui.audio_b.value) == (test.wav(t.a, t.utt), test.wav(t.b, t.utt))
            assert ui.cmos_row.layout.display == "flex" and ui.smos_row.layout.display == "none"
        ui.key.value = "7" if k != 1 else "x1"  # one key answers (the last character counts)
        got = test.store.read()
        assert len(got) == k + 1 and got.trial.iloc[-1] == t.key and got.answer.iloc[-1] == (3 if k != 1 else -3)
        assert ui.key.value == ""
    ui.cmos_buttons[-1].click()
    assert len(test.store.read()) == 4 and test.store.read().answer.iloc[-1] == -1
    again = ListeningTestUI(test, "alice")  # a restarted kernel resumes
    assert again.position == ui.position == 4 and "4 answered" in again.progress.value
    smos = ListeningTestUI(test, "alice")
    smos.position = next(i for i, t in enumerate(smos.trials) if t.kind == SMOS)
    smos.show()
    t = smos.trial
    assert (smos.audio_a.value, smos.audio_b.value) == (test.wav("prompt", t.utt), test.wav(t.a, t.utt))
    assert smos.smos_row.layout.display == "flex" and "SECRET" not in _shown_text(smos.widget)
    smos.key.value = "6"  # out of the SMOS scale: ignored
    assert len(test.store.read()) == 4
    nobody = ListeningTestUI(test, "")
    assert "No rater" in nobody.progress.value and nobody.key.disabled
    # one way for saved views (imf.viz.widgets): every control needs a kernel, the note says so once saved
    from imf.viz.widgets import KERNEL_NOTE, NEEDS_KERNEL

    controls = [*ui.cmos_buttons.values(), *ui.smos_buttons.values(), ui.key]
    assert all(NEEDS_KERNEL in w._dom_classes for w in controls) and not any(w.disabled for w in controls[:-1])
    assert KERNEL_NOTE in nobody.note._dom_classes and "ratings.csv" in nobody.note.value
    assert "running kernel" in nobody.note.placeholder and "RATER" in nobody.note.placeholder
    assert "imf-listen-test" in ui.widget._dom_classes and "imf-cmos-p3" in ui.cmos_buttons[3]._dom_classes


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------

def synthetic(cmos_effects: dict, smos_effects: dict, seed: int, n_raters=6, n_utts=8, rater_sd=0.5,
              utt_sd=0.3, noise=1.0) -> pd.DataFrame:
    """Ratings with known per-condition effects plus rater x condition and utterance effects and noise,
    rounded and clipped to the scales."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, effects, (lo, hi) in ((CMOS, cmos_effects, (-3, 3)), (SMOS, smos_effects, (1, 5))):
        rater = {c: rng.normal(0, rater_sd, n_raters) for c in effects}
        utt = rng.normal(0, utt_sd, n_utts)
        for c, mu in effects.items():
            for r in range(n_raters):
                for u in range(n_utts):
                    s = np.clip(np.round(mu + rater[c][r] + utt[u] + rng.normal(0, noise)), lo, hi)
                    rows.append({"rater": f"r{r}", "utt": f"u{u}", "kind": kind, "condition": c, "score": int(s)})
    return pd.DataFrame(rows)


def test_the_analysis_finds_a_known_effect():
    df = synthetic({"better": 1.0, "same": 0.0}, {"better": 4.0, "same": 2.5, "ref": 2.5}, seed=1)
    a = analyse(df, {"better": "student@1"}, n_boot=1000, seed=0)
    cmos = a[CMOS].set_index("condition")
    assert cmos.loc["student@1", "significant"] and not cmos.loc["same", "significant"]
    assert cmos.loc["student@1", "lo"] < cmos.loc["student@1", "mean"] < cmos.loc["student@1", "hi"]
    assert cmos.loc["student@1", "n"] == 48 and cmos.loc["student@1", "raters"] == 6
    assert cmos.loc["student@1", "mean"] == pytest.approx(df[(df.kind == CMOS) & (df.condition == "better")].score.mean())
    pair = a["cmos_pairs"].iloc[0]
    assert (pair.a, pair.b) == ("student@1", "same") and pair.significant and pair["diff"] > 0.5
    smos = a["smos_pairs"].set_index(["a", "b"])
    assert smos.loc[("student@1", "ref"), "significant"] and smos.loc[("student@1", "same"), "significant"]
    assert not smos.loc[("ref", "same"), "significant"]
    assert analyse(df, n_boot=1000, seed=0)[CMOS].equals(analyse(df, n_boot=1000, seed=0)[CMOS])  # seeded


def test_the_analysis_finds_nothing_where_there_is_nothing():
    """Over many null data sets (rater x condition effects, no true difference), the 95 % intervals
    call a difference in about 5 % of cases; intervals that ignored the rater clustering, or too
    few replicates, would call many more."""
    calls = cmos_calls = 0
    n_sets = 16
    for seed in range(n_sets):
        a = analyse(synthetic({"x": 0.0, "y": 0.0}, {"x": 3.0, "y": 3.0, "z": 3.0}, seed=100 + seed), n_boot=500, seed=seed)
        cmos_calls += a[CMOS].significant.sum()
        calls += a["cmos_pairs"].significant.sum() + a["smos_pairs"].significant.sum()
    assert cmos_calls / (2 * n_sets) <= 0.13 and calls / (4 * n_sets) <= 0.13


def test_the_analysis_of_no_ratings_is_empty(tmp_path):
    a = analyse(RatingStore(tmp_path / "none.csv").read())
    assert all(len(df) == 0 for df in a.values()) and "significant" in a[CMOS].columns


def test_the_notebook_parameters_are_checked_before_any_work():
    from imf.core.config import ConfigError
    from imf.runs.listening_test import ListeningTestConfig, parse_condition

    assert parse_condition("student@2:sway") == ("student", 2, "sway")
    assert parse_condition("teacher@32") == ("teacher", 32, "uniform") and parse_condition("ground truth")[1] == 0
    for bad in ("student", "student@0", "vocoder@1", "student@2:nope"):
        with pytest.raises((ConfigError, ValueError)):
            parse_condition(bad)
    ok = ListeningTestConfig.from_params({"PROFILE": "tiny", "CONDITIONS": ["teacher@4", "student@1"],
                                          "REFERENCE": "teacher@4", "RATER": "ann"})
    assert ok.spec()["conditions"] == ["teacher@4", "student@1"] and "rater" not in ok.spec()
    for bad, name in (({"REFERENCE": "student@9"}, "reference"), ({"CONDITIONS": ["teacher@4"]}, "conditions"),
                      ({"TEST": "../x"}, "test"), ({"KINDS": ["mos"]}, "kinds"), ({"RATER": "a\nb"}, "rater")):
        with pytest.raises(ConfigError, match=name):
            ListeningTestConfig.from_params({"PROFILE": "tiny", **bad})
