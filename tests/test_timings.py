"""Pipeline timings: results/timings.csv written atomically, the ETA computed from the previous run's
rows of the same profile, and the README's wall-time table."""
import json
import math

import pandas as pd
import pytest

from imf.core import runtime
from imf.runs import pipeline, report
from imf.runs.timings import eta_line, estimate_left, fmt_seconds, notebook_times, previous_seconds, read_timings, record


def executed_copy(path, durations, total):
    """A papermill-executed notebook with these code-cell durations and this total duration."""
    cells = [{"cell_type": "code", "source": [], "metadata": {"papermill": {"duration": d}}, "outputs": []}
             for d in durations]
    cells.insert(1, {"cell_type": "markdown", "source": [], "metadata": {}})
    path.write_text(json.dumps({"cells": cells, "metadata": {"papermill": {"duration": total}}}))
    return path


def test_notebook_times_split_the_wall_time_into_startup_imports_and_work(tmp_path):
    t = notebook_times(executed_copy(tmp_path / "x.ipynb", [3.0, 0.5, 10.0], 20.0), wall=21.0)
    assert t == {"seconds": 21.0, "startup_s": 7.5, "imports_s": 3.0, "work_s": 10.5}
    assert t["startup_s"] + t["imports_s"] + t["work_s"] == t["seconds"]
    missing = notebook_times(tmp_path / "none.ipynb", wall=5.0)
    assert missing["seconds"] == 5.0 and all(missing[k] != missing[k] for k in ("startup_s", "imports_s", "work_s"))


def test_record_replaces_the_row_of_its_profile_and_notebook_only(tmp_path):
    path = tmp_path / "timings.csv"
    record(path, "tiny", "00_corpus", {"seconds": 10.0}, finished="t1")
    record(path, "small", "00_corpus", {"seconds": 40.0}, finished="t1")
    record(path, "tiny", "01_teacher", {"seconds": 5.0}, finished="t1")
    df = record(path, "tiny", "00_corpus", {"seconds": 12.5, "imports_s": 2.0}, finished="t2")
    back = read_timings(path)
    assert len(back) == len(df) == 3
    assert previous_seconds(back, "tiny") == {"00_corpus": 12.5, "01_teacher": 5.0}
    assert previous_seconds(back, "small") == {"00_corpus": 40.0}
    assert back.set_index(["profile", "notebook"]).loc[("tiny", "00_corpus"), "finished"] == "t2"


def test_record_is_atomic_a_write_killed_halfway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "timings.csv"
    record(path, "tiny", "00_corpus", {"seconds": 10.0}, finished="t1")
    before = path.read_text()
    real_open = open

    class Killed(Exception):
        pass

    def dying_open(file, mode="r", *a, **k):  # the write of the new table dies after half of it
        f = real_open(file, mode, *a, **k)
        if "w" in mode:
            write = f.write

            def half(s):
                write(s[: len(s) // 2])
                f.flush()
                raise Killed()
            f.write = half
        return f

    monkeypatch.setattr(runtime, "open", dying_open, raising=False)
    with pytest.raises(Killed):
        record(path, "tiny", "01_teacher", {"seconds": 99.0}, finished="t2")
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timings.csv"]  # no half-written temporary left


def test_eta_is_the_previous_runs_times_of_what_is_left_else_unknown():
    prev = {"00_corpus": 20.0, "00_vocoder": 100.0, "01_teacher": 30.0}
    assert estimate_left(prev, ["00_vocoder", "01_teacher"]) == 130.0
    assert estimate_left(prev, ["01_teacher", "02_distill"]) is None
    assert eta_line(prev, ["00_vocoder", "01_teacher"]) == "left ~2m10s (previous run's times)"
    assert eta_line(prev, ["02_distill"]) == "left unknown (no recorded time for 02_distill)"
    assert eta_line(prev, ["01_teacher", "02_distill"]) == (  # the timed ones' sum as a lower bound
        f"left > ~{fmt_seconds(prev['01_teacher'])} (previous run's times; no recorded time for 02_distill)")
    assert eta_line({}, [f"n{i}" for i in range(5)]) == "left unknown (no recorded time for 5 notebooks)"
    assert [fmt_seconds(s) for s in (7.4, 75.4, 3725.0, None)] == ["7s", "1m15s", "1h02m", "unknown"]


def test_pipeline_prints_the_eta_from_the_previous_run_and_records_each_notebook(tmp_path, monkeypatch, capsys):
    """The ETA uses the previous run's rows of the SAME profile (not another profile's, not the rows this run
    is writing); each finished notebook replaces its row; the README ends with the table."""
    monkeypatch.setenv("IMF_RESULTS", str(tmp_path))
    path = tmp_path / "timings.csv"
    record(path, "tiny", "00_corpus", {"seconds": 20.0}, finished="old")
    record(path, "tiny", "00_vocoder", {"seconds": 100.0}, finished="old")
    record(path, "small", "01_teacher", {"seconds": 600.0}, finished="old")
    clock = iter(range(0, 10_000, 7))  # every time.time() call advances 7 s
    monkeypatch.setattr(pipeline.time, "time", lambda: float(next(clock)))
    monkeypatch.setattr(pipeline, "run_notebook", lambda name, out_dir, params: executed_copy(
        tmp_path / f"{name}.ipynb", [1.0, 2.0], 4.0))
    assert pipeline.main(["--profile", "tiny", "--only", "00_corpus", "00_vocoder"]) == 0
    out = capsys.readouterr().out.splitlines()
    starts = [line for line in out if line.endswith(") ...")]
    assert "left ~2m00s (previous run's times)" in starts[0] and "1/2" in starts[0]
    assert "left ~1m40s (previous run's times)" in starts[1] and "2/2" in starts[1]
    assert "previous run 20s" in next(line for line in out if "00_corpus done in 7s" in line)
    assert pipeline.main(["--profile", "tiny", "--only", "01_teacher"]) == 0
    assert "left unknown (no recorded time for 01_teacher)" in capsys.readouterr().out  # small's row is not tiny's
    back = read_timings(path).set_index(["profile", "notebook"])
    assert back.loc[("tiny", "00_corpus"), "seconds"] == 7.0 and back.loc[("tiny", "00_corpus"), "finished"] != "old"
    assert back.loc[("tiny", "00_corpus"), "imports_s"] == 1.0 and back.loc[("tiny", "00_corpus"), "work_s"] == 2.0
    assert back.loc[("tiny", "00_corpus"), "cpu_s"] >= 0  # the kernels' CPU (none here: nothing was spawned)
    assert back.loc[("small", "01_teacher"), "seconds"] == 600.0
    readme = (tmp_path / "README.md").read_text()
    assert "## Wall time per notebook" in readme


def test_readme_table_lists_each_profiles_notebooks_in_order_with_a_total(tmp_path, monkeypatch):
    monkeypatch.setenv("IMF_RESULTS", str(tmp_path))
    (tmp_path / "sections").mkdir()
    (tmp_path / "sections" / "00_corpus.md").write_text("## 00 — corpus\n")
    assert "Wall time" not in report.build_readme().read_text()  # nothing recorded: no table
    path = tmp_path / "timings.csv"
    for name, s in (("01_teacher", 30.0), ("00_vocoder", 100.0), ("00_corpus", 20.0)):
        record(path, "tiny", name, {"seconds": s, "startup_s": 1.0, "imports_s": 2.0, "work_s": s - 3.0}, finished="t")
    record(path, "small", "00_corpus", {"seconds": 33.0}, finished="t")
    readme = report.build_readme().read_text()
    assert readme.index("## 00 — corpus") < readme.index("## Wall time per notebook")
    tiny = readme[readme.index("Profile `tiny`"):]
    rows = [line.split("|")[1].strip() for line in tiny.splitlines() if line.startswith("| 0") or line.startswith("| total")]
    assert rows == ["00_corpus", "00_vocoder", "01_teacher", "total"]
    total = next(line for line in tiny.splitlines() if line.startswith("| total"))
    assert "| 2m30s | 150.0 | 3.0 | 6.0 | 141.0 |" in total  # cpu_s not recorded: NaN summed to 0
    assert "Profile `small`" in readme and readme.index("Profile `small`") < readme.index("Profile `tiny`")
    record(path, "tiny", "08_text2mel", {"seconds": 50.0, "startup_s": 1.0, "imports_s": 2.0, "work_s": 47.0}, finished="t")
    tiny = report.build_readme().read_text().split("Profile `tiny`")[1]
    rows = [line.split("|")[1:3] for line in tiny.splitlines() if line.startswith("| 0") or line.startswith("| total")]
    assert [(n.strip(), w.strip()) for n, w in rows] == [("00_corpus", "20s"), ("00_vocoder", "1m40s"), ("01_teacher", "30s"),
                                                         ("08_text2mel", "50s"), ("total 00–07", "2m30s"),
                                                         ("total", "3m20s")]  # the hour's budget covers 00-07
    record(path, "tiny", "08a_alignment", {"seconds": 900.0, "startup_s": 1.0, "imports_s": 2.0, "work_s": 897.0},
           finished="t")
    tiny = report.build_readme().read_text().split("Profile `tiny`")[1]
    rows = [line.split("|")[1:3] for line in tiny.splitlines() if line.startswith("| 0") or line.startswith("| total")]
    assert [(n.strip(), w.strip()) for n, w in rows][-3:] == [
        ("total 00–07", "2m30s"), ("total", "3m20s"), ("08a_alignment (study, not in the total)", "15m00s")]
    assert isinstance(read_timings(path), pd.DataFrame)


def test_steal_is_the_eighth_field_of_the_cpu_line_in_seconds(tmp_path):
    import os
    from imf.runs.timings import steal_seconds
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")
    stat.write_text(f"cpu  10 0 5 100 0 0 0 {3 * hz} 0 0\ncpu0 5 0 2 50 0 0 0 {hz} 0 0\n")
    assert steal_seconds(stat) == 3.0
    assert math.isnan(steal_seconds(tmp_path / "missing"))
    path = tmp_path / "timings.csv"
    record(path, "tiny", "00_corpus", {"seconds": 9.0, "steal_s": 2.5}, finished="t")
    assert read_timings(path).loc[0, "steal_s"] == 2.5
