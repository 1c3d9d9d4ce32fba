"""The evaluation notebooks' package side: O3S results on disk, the stitched student history, the
MeanFlow-vs-IntMeanFlow verdict, the voices WER trusts."""
import json

import pandas as pd
import pytest
import torch

from imf.flow.o3s import O3SConfig, o3s_search
from imf.flow.schedules import load_grid, uniform
from imf.runs.eval_meanflow import EQUAL_WALL, STAGE1, STUDENT, stage_history, winners
from imf.runs.sections_eval import write_csv, write_o3s_result


def test_write_o3s_result_grid_history_json_and_csv(tmp_path):
    def metric(g):
        return -float(((g[1:-1] - torch.tensor([0.2, 0.6], dtype=torch.float64)) ** 2).sum())

    res = o3s_search(metric, uniform(3), O3SConfig(max_evals=30), progress=False)
    folder = write_o3s_result(res, tmp_path / "student_nfe3")
    assert torch.equal(load_grid(folder / "grid.json"), res.best_grid)
    meta = json.loads((folder / "grid.json").read_text())
    assert meta["score"] == res.best_score and meta["n_evals"] == res.n_evals and meta["nfe"] == 3
    assert json.loads((folder / "history.json").read_text()) == res.history
    lines = (folder / "history.csv").read_text().splitlines()
    assert lines[0] == "eval,sweep,position,score,best_so_far,time_grid"
    assert len(lines) == res.n_evals + 1
    first = pd.read_csv(folder / "history.csv").iloc[0]
    assert json.loads(first.time_grid) == uniform(3).tolist() and first.score == res.init_score
    assert sorted(p.name for p in folder.iterdir()) == ["grid.json", "history.csv", "history.json"]  # no temp files


def test_write_csv_is_the_frame_without_index(tmp_path):
    df = pd.DataFrame({"system": ["a", "b"], "nfe": [1, 2], "x": [0.1, 1e-5]})
    path = write_csv(df, tmp_path / "t.csv")
    assert path.read_text() == "system,nfe,x\na,1,0.1\nb,2,1e-05\n"


def test_stage_history_stitches_the_first_stage_in_front(tmp_path):
    first, second = tmp_path / "s1.pt", tmp_path / "s2.pt"
    torch.save({"history": [{"step": s, "loss": 1.0 / s} for s in (2, 4)], "config": {}}, first)
    torch.save({"history": [{"step": s, "loss": 0.1 * s} for s in (1, 2, 3)], "config": {"init": str(first)}}, second)
    h = stage_history(second)
    assert h.history.step.tolist() == [2, 4, 5, 6, 7] and h.history.loss.tolist()[2:] == pytest.approx([0.1, 0.2, 0.3])
    assert (h.stage1, h.stage1_steps, h.steps) == (str(first), 4, 7)
    alone = stage_history(first)
    assert (alone.stage1, alone.stage1_steps, alone.steps) == (None, 0, 4)


def test_the_equal_wall_point_counts_the_cache_and_each_logged_span(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "meta.json").write_text(json.dumps({"teacher_seconds": 100.0}))
    ckpts = tmp_path / "student" / "checkpoints"
    ckpts.mkdir(parents=True)
    # logged every 5 steps: seconds per step 0.4 over steps 1-5, 0.2 over 6-10, 0.3 over 11-15
    rows = [{"step": s, "loss": 1.0, "sec_per_step": v} for s, v in ((5, 0.4), (10, 0.2), (15, 0.3))]
    torch.save({"history": rows, "config": {"cache": str(cache)}}, ckpts / "last.pt")
    with pytest.raises(FileNotFoundError, match="step_10.pt.*02_distill"):
        stage_history(ckpts / "last.pt", equal_wall_step=10)
    (ckpts / "step_10.pt").write_bytes(b"")
    h = stage_history(ckpts / "last.pt", equal_wall_step=10)
    assert h.equal_wall == ckpts / "step_10.pt" and h.cache_seconds == 100.0
    assert h.seconds(10) == pytest.approx(100 + 5 * 0.4 + 5 * 0.2) and h.seconds(15) == pytest.approx(104.5)
    assert stage_history(ckpts / "last.pt").equal_wall is None


def test_winners_by_the_sign_table():
    ref = "teacher + CFG 2"
    rows = [(ref, 4, 1.10, 1.50, 0.0), (STUDENT, 1, 1.05, 1.40, 0.10), (STAGE1, 1, 1.30, 1.45, 0.30),
            ("MF a", 1, 1.20, 1.45, 0.20), ("MF b", 1, 1.11, 1.50, 0.25), ("MF a", 2, 9.0, 9.0, 0.01)]
    q = pd.DataFrame(rows, columns=["system", "nfe", "fs_ratio", "gv_ratio", "dist_ref"])
    v = winners(q, ref)
    assert v["best_mf"] == "MF a"  # lowest dist_ref at 1 NFE (the 2-NFE row does not count)
    # dist_ref lower wins; the ratios: closer to the guided teacher's own (1.10, 1.50) wins
    assert v["wins"] == {"fs_ratio": "IMF", "gv_ratio": "MF", "dist_ref": "IMF"}
    assert v["wins_stage1"] == {"fs_ratio": "MF", "gv_ratio": "MF", "dist_ref": "MF"}
    assert v["reference"] == {"fs_ratio": 1.10, "gv_ratio": 1.50, "dist_ref": 0.0}
    assert winners(q[q.system != STAGE1], ref)["wins_stage1"] is None and v["wins_equal_wall"] is None
    q.loc[q.system == STAGE1, "system"] = EQUAL_WALL
    assert winners(q, ref)["wins_equal_wall"] == {"fs_ratio": "MF", "gv_ratio": "MF", "dist_ref": "MF"}
