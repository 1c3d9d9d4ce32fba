"""O3S objectives (imf.eval.o3s_objectives): each objective's metric is what it says, a mix is the
weighted sum of its normalised terms, the held-out verdict calls a clear win a win and no effect no win,
and a bad objective fails early naming itself."""
import math

import pandas as pd
import pytest
import torch

from imf.core.config import ConfigError
from imf.eval.o3s_objectives import (LOSS, TIE, WIN, Bench, ObjectiveError, baseline_grids, objective_note,
                                     objective_scales, objective_study, parse_objective, parse_objectives, set_score,
                                     utterance_objective)
from imf.flow.o3s import O3SConfig
from imf.flow.schedules import sway, uniform
from imf.runs.params import check
from imf.runs.sections_config import O3SSection
from tests.eval_fakes import eval_set


def late_field(x, *, t, r=None, cond):
    """``v = -2.1 t^2 x``: with 2 Euler steps the output depends on t_1, best (closest to the converged
    solution) at t_1 = 2/3, not at the uniform 1/2."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return -2.1 * t ** 2 * x


def still_field(x, *, t, r=None, cond):
    """``v = 0``: every grid gives the same output (O3S can change nothing)."""
    return torch.zeros_like(x)


def bench(field=late_field, n_dev=4, n_test=6):
    return Bench({"s": field}, eval_set(n_dev, seed=1), eval_set(n_test, seed=2), field, reference_nfe=32, batch_size=8)


def test_dist_ref_is_minus_the_distance_to_the_reference_and_zero_on_the_reference_grid():
    b = bench()
    obj = parse_objective("dist_ref")
    assert obj.columns == ("dist_ref",) and not obj.mix
    own = b.table("dev", "s", uniform(32), ["dist_ref"])["dist_ref"]  # the reference grid itself
    assert torch.equal(own, torch.zeros(4, dtype=torch.float64))
    assert set_score(b.scores(obj, "dev", "s", uniform(32), {"dist_ref": 1.0})) == 0.0
    # at 2 NFE: minus the mean absolute difference to the reference on each utterance's valid frames
    x = b.table("dev", "s", uniform(2), ["dist_ref"])["dist_ref"]
    es, ref = b.dev, b.reference_output("dev")
    factor = (1 - 0.0) * (1 - 2.1 * 0.25 * 0.5)  # Euler on [0, 0.5, 1]: x_1 = z_0 (1 - 2.1 * 0.5^2 * 0.5)
    for i in range(4):
        m = es.mask[i]
        expect = (es.z_0[i][:, m] * factor - ref[i][:, m]).abs().mean().item()
        assert x[i].item() == pytest.approx(expect, rel=1e-6)
    assert set_score(b.scores(obj, "dev", "s", uniform(2), {"dist_ref": 1.0})) == pytest.approx(-x.mean().item())


def test_wer_and_sim_terms_read_their_columns_with_their_signs():
    table = {"wer": torch.tensor([0.1, float("nan"), 0.3], dtype=torch.float64),
             "sim": torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64)}
    wer, sim = parse_objective("wer"), parse_objective("sim")
    assert torch.allclose(utterance_objective(wer, table, {"wer": 1.0})[[0, 2]], -table["wer"][[0, 2]])
    assert set_score(utterance_objective(wer, table, {"wer": 1.0})) == pytest.approx(-0.2)  # NaN skipped
    assert set_score(utterance_objective(sim, table, {"sim": 1.0})) == pytest.approx(0.6)


def test_a_mix_is_the_weighted_sum_of_its_normalised_terms():
    anchor = {"dist_ref": torch.tensor([0.2, 0.4, 0.3, 0.5], dtype=torch.float64),
              "wer": torch.tensor([0.0, 0.5, float("nan"), 0.25], dtype=torch.float64)}
    table = {"dist_ref": torch.tensor([0.1, 0.3, 0.2, 0.6], dtype=torch.float64),
             "wer": torch.tensor([0.1, 0.2, float("nan"), 0.0], dtype=torch.float64)}
    mix = parse_objective({"dist_ref": 1.0, "wer": 0.5})
    scales = objective_scales(mix, anchor)
    # the normalisers: each term's standard deviation over the (dev) utterances of the anchor, NaN skipped
    assert scales["dist_ref"] == pytest.approx(torch.tensor([0.2, 0.4, 0.3, 0.5]).std().item())
    assert scales["wer"] == pytest.approx(torch.tensor([0.0, 0.5, 0.25]).std().item())
    u = utterance_objective(mix, table, scales)
    expect = 1.0 * (-0.3) / scales["dist_ref"] + 0.5 * (-0.1) / scales["wer"]  # means: dist 0.3, wer 0.1 (3 utts)
    assert set_score(u) == pytest.approx(expect, rel=1e-12)
    assert mix.name == "1*dist_ref + 0.5*wer" and mix.spec() == {"dist_ref": 1.0, "wer": 0.5}


def test_a_mix_on_a_bench_equals_the_weighted_sum_of_its_single_terms():
    b = bench()
    mix = parse_objective({"dist_ref": 2.0, "fs_closeness": 0.5})
    scales = objective_scales(mix, b.table("dev", "s", uniform(2), mix.columns))
    g = torch.tensor([0.0, 0.6, 1.0], dtype=torch.float64)
    terms = {t: set_score(b.scores(parse_objective(t), "dev", "s", g, {t: 1.0})) for t in mix.terms}
    expect = 2.0 * terms["dist_ref"] / scales["dist_ref"] + 0.5 * terms["fs_closeness"] / scales["fs_closeness"]
    assert set_score(b.scores(mix, "dev", "s", g, scales)) == pytest.approx(expect, rel=1e-9)


def test_a_term_that_does_not_vary_cannot_be_normalised():
    mix = parse_objective({"dist_ref": 1.0, "wer": 1.0})
    anchor = {"dist_ref": torch.tensor([0.1, 0.2]), "wer": torch.tensor([1.0, 1.0])}
    with pytest.raises(ObjectiveError, match="'wer' cannot be normalised"):
        objective_scales(mix, anchor)


def test_a_clear_held_out_win_is_a_win():
    b = bench(late_field)
    study = objective_study(b, ["dist_ref"], {"s": [2]}, O3SConfig(max_evals=30, ternary_iters=8), progress=False)
    t = study.table
    assert list(t.baseline) == ["uniform", "sway"]  # no EPSS table at 2 NFE
    found = study.results[("dist_ref", "s", 2)].best_grid
    assert found[1].item() == pytest.approx(2 / 3, abs=0.03)  # the known optimum of t_1
    for r in t.itertuples():
        assert r.verdict == WIN and r.gain > 2 * r.gain_se > 0 and r.n == 6 and r.wins == 6
        assert r.gain == pytest.approx(r.test_found - r.test_baseline, rel=1e-9)
        assert r.dev_found > r.dev_baseline
    assert t.baseline_grid.iloc[1] == " ".join(f"{v:.3f}" for v in sway(2).tolist())
    assert study.searches.dev_best.iloc[0] == pytest.approx(t.dev_found.iloc[0])
    assert "`dist_ref` gives at least one held-out win" in objective_note(t)


def test_a_grid_already_found_by_the_same_objective_is_judged_not_searched_again():
    b, cfg = bench(late_field), O3SConfig(max_evals=30, ternary_iters=8)
    searched = objective_study(b, ["dist_ref"], {"s": [2]}, cfg, progress=False)
    grid = searched.results[("dist_ref", "s", 2)].best_grid
    calls = []
    counted = Bench({"s": lambda x, **kw: calls.append(1) or late_field(x, **kw)}, b.dev, b.test, late_field,
                    reference_nfe=32, batch_size=8)
    settled = []  # notebook 04 writes each settled grid under objectives/ (reused ones too)
    reused = objective_study(counted, ["dist_ref"], {"s": [2]}, cfg, progress=False,
                             searched={("dist_ref", "s", 2): grid}, on_search=lambda *a: settled.append(a))
    assert [(o.name, s, n) for o, s, n, _ in settled] == [("dist_ref", "s", 2)]
    assert torch.equal(settled[0][3].best_grid, grid)
    assert reused.results == {} and reused.searches.evals.iloc[0] == 0 and "reused" in reused.searches.stopped.iloc[0]
    # the same verdicts from the same grid; sampled only to judge it: dev found/uniform/sway, test found/uniform/sway
    cols = ["baseline", "dev_found", "dev_baseline", "test_found", "test_baseline", "gain", "verdict", "grid"]
    pd.testing.assert_frame_equal(reused.table[cols], searched.table[cols])
    assert len(calls) <= 2 * 2 * 3


def test_no_effect_is_no_win():
    study = objective_study(bench(still_field), ["dist_ref", {"fs_closeness": 1.0, "gv_closeness": 1.0}], {"s": [5]},
                            O3SConfig(max_evals=10, ternary_iters=2), progress=False)
    t = study.table
    assert set(t.baseline) == {"uniform", "sway", "epss"} and len(t) == 6
    assert (t.verdict == TIE).all() and (t.gain == 0).all()
    assert objective_note(t).startswith("Held-out verdict") and "no objective gives a held-out win" in objective_note(t)


def test_note_says_which_objective_wins_and_which_loses():
    t = pd.DataFrame([
        {"objective": "sim", "system": "student", "nfe": 2, "baseline": "uniform", "gain": 0.001, "gain_se": 0.002,
         "verdict": TIE},
        {"objective": "dist_ref", "system": "teacher", "nfe": 5, "baseline": "sway", "gain": 0.05, "gain_se": 0.01,
         "verdict": WIN},
        {"objective": "dist_ref", "system": "teacher", "nfe": 5, "baseline": "epss", "gain": -0.05, "gain_se": 0.01,
         "verdict": LOSS}])
    note = objective_note(t)
    assert "`dist_ref` gives at least one held-out win" in note
    assert "`sim` wins in none of its 1 comparisons" in note
    assert "teacher 5 NFE vs sway (+0.05 ± 0.01)" in note and "loses in 1 (teacher 5 NFE vs epss)" in note


@pytest.mark.parametrize("spec, match", [
    ("speed", "unknown objective 'speed'"),
    ({"dist_ref": 1.0, "pesq": 1.0}, "unknown objective term 'pesq'"),
    ({"dist_ref": -1.0}, "weight of 'dist_ref'"),
    ({"dist_ref": True}, "weight of 'dist_ref'"),
    ({}, "empty mix"),
    (3, "got int 3"),
])
def test_a_bad_objective_is_an_error_naming_it(spec, match):
    with pytest.raises(ObjectiveError, match=match):
        parse_objective(spec, "OBJECTIVES[0]")
    with pytest.raises(ObjectiveError, match=r"objectives\[1\]"):
        parse_objectives(["dist_ref", spec])


def test_a_bad_objective_fails_before_any_work():
    calls = []

    def counting(x, *, t, r=None, cond):
        calls.append(1)
        return late_field(x, t=t, cond=cond)

    with pytest.raises(ObjectiveError, match="'SIM'"):
        objective_study(bench(counting), ["dist_ref", "SIM"], {"s": [2]}, progress=False)
    with pytest.raises(ObjectiveError, match="repeated"):
        parse_objectives(["dist_ref", "dist_ref"])
    assert calls == []


def test_the_profile_section_and_the_notebook_parameter():
    with pytest.raises(ConfigError, match="objectives.*'bleu'"):
        O3SSection(objectives=("dist_ref", "bleu"))
    assert O3SSection.from_dict({"objectives": ["wer", {"dist_ref": 1, "wer": 0.5}]}).objectives[1] == {
        "dist_ref": 1, "wer": 0.5}
    given = {"OBJECTIVES": ["dist_ref", {"dist_ref": 1.0, "wer": 0.5}]}
    assert check("04_o3s", given) == given  # a list of names and mixes passes the notebook's parameter check


def test_baseline_grids_skip_epss_where_it_has_no_table():
    assert sorted(baseline_grids(3)) == ["sway", "uniform"]
    assert sorted(baseline_grids(6)) == ["epss", "sway", "uniform"]
    assert all(math.isclose(g[-1].item(), 1.0) for g in baseline_grids(6).values())


def test_notebook_04_wiring_writes_the_table_grids_and_a_note_from_the_numbers(nb_env, tmp_path):
    """imf.runs.eval_o3s.run_objectives + report_o3s on fakes: [] takes the profile's objectives, each search's
    grid is written under objectives/, the CSVs and metrics hold the table, the section its note."""
    from types import SimpleNamespace

    from imf.runs.eval_o3s import O3SStudy, run_objectives
    from imf.runs.report import results_dir
    from imf.runs.sections_eval import report_o3s

    out = results_dir() / "04_o3s"
    out.mkdir(parents=True)
    test = eval_set(6, seed=2)
    wb = SimpleNamespace(P={"o3s": {"objectives": ["dist_ref", {"dist_ref": 1.0, "fs_closeness": 0.5}]}},
                         student=late_field, es=test, out=out, profile="tiny")
    dev = eval_set(4, seed=1)
    study = O3SStudy(wb, "neg_dist_ref", "dist_ref", dev, None, None, late_field, 2.0, 32,
                     O3SConfig(max_evals=8, ternary_iters=3), 8)
    res = run_objectives(study, [], [2], [5], progress=False)
    assert [o.spec() for o in res.objectives] == wb.P["o3s"]["objectives"]
    assert len(res.table) == 2 * (2 + 3)  # student 2: uniform, sway; teacher 5: + epss
    assert (out / "objectives/dist_ref/student_nfe2/grid.json").exists()
    assert (out / "objectives/mix_dist_ref1_fs_closeness0.5/teacher_nfe5/grid.json").exists()
    empty = pd.DataFrame(columns=["student_nfe", "verdict", "gain", "gain_se"])
    m = report_o3s(study, pd.DataFrame(), pd.DataFrame({"system": ["student"]}), empty, [], res)
    assert len(m["objectives"]["table"]) == 10 and m["objectives"]["objectives"] == wb.P["o3s"]["objectives"]
    assert pd.read_csv(out / "objectives.csv").shape[0] == 10
    section = (results_dir() / "sections/04_o3s.md").read_text()
    assert "Which O3S objective wins on held-out data" in section and objective_note(res.table) in section


def test_judged_columns_are_the_audio_terms_only():
    """What a bench's judges must score: the objectives' audio columns, never the intrinsic ones."""
    from imf.eval.o3s_objectives import judged_columns

    assert judged_columns(["dist_ref", {"dist_ref": 1.0, "wer": 0.5}, "sim", "fs_closeness"]) == {"wer", "sim"}
    assert judged_columns(["dist_ref"]) == set()
