"""Every pipeline notebook executed by papermill in the tiny profile, in order, sharing one
isolated data/runs/results tree; each test checks the metrics its notebook recorded."""
import json

import pytest

from imf.runs.pipeline import available, run_notebook
from imf.core.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("IMF_RESULTS", "results"), ("IMF_DATA", "data"), ("IMF_RUNS", "runs")):
            mp.setenv(var, str(root / sub))
        mp.setenv("IMF_THREADS", "2")
        yield root


def run(tree, name, **params):
    if name not in available():
        pytest.skip(f"notebooks/{name}.ipynb does not exist yet")
    out = run_notebook(name, tree / "results" / "runs", {"PROFILE": "tiny", **params})
    assert out.exists()
    return json.loads((tree / "results" / name / "metrics.json").read_text())


def test_00_corpus(tree):
    m = run(tree, "00_corpus")
    assert m["n_speakers"] >= 8 and m["n_engines"] >= 2 and m["n_utts"] > 0


def test_00_vocoder(tree):
    m = run(tree, "00_vocoder", JUDGES=["sim", "mos"])
    assert m["vocoder_steps"] == 4 and (tree / "runs/tiny/vocoder/checkpoints/last.pt").exists()
    systems = {r["system"]: r for r in m["copy_synthesis"]}
    assert {"vocoder", "Griffin-Lim", "real recordings"} <= set(systems)
    assert 1.0 <= systems["Griffin-Lim"]["pesq"] <= 4.7 and 0 < systems["Griffin-Lim"]["stoi"] <= 1
    assert len(m["per_voice"]) >= 8


def test_01_teacher(tree):
    m = run(tree, "01_teacher")
    assert m["steps"] == 12 and m["final_loss"] > 0
    assert 0 < m["fs_ratio_cfg_1"] and 0 < m["fs_ratio_cfg_max"]
    assert -1 <= m["noise_corr_1"] <= 1 and -1 <= m["noise_corr_max"] <= 1
    assert (tree / "runs/tiny/teacher/checkpoints/last.pt").exists()
    readme = (tree / "results/README.md").read_text()
    assert "01 — token2mel teacher" in readme and "fs_ratio" in readme


def test_02_distill(tree):
    m = run(tree, "02_distill")
    assert m["steps"] == 4 and m["teacher_nfe"] == 4
    # the tiny profile has a second, whole-interval stage started from the first student: 03-06 read it
    assert m["stage2_steps"] == 2 and m["stage2_p_full"] == 0.5 and m["final_run"] == "student_stage2"
    stage2 = load_checkpoint(tree / "runs/tiny/student_stage2/checkpoints/last.pt")["config"]
    assert stage2["init"] == str(tree / "runs/tiny/student/checkpoints/last.pt") and stage2["imf"]["p_full"] == 0.5
    assert [r["teacher_nfe"] for r in m["ablation"]] == [2, 4]
    assert all(r["sec_per_step"] > 0 for r in m["ablation"])


def test_distill_second_stage_starts_from_the_student(tree):
    """``distill(init=student)`` continues from the student's EMA weights (not the teacher's)."""
    from imf.data import load_corpus
    from imf.flow.objectives import IMFConfig
    from imf.models import student_from_teacher
    from imf.train.trainer import TrainConfig
    from imf.core.checkpoints import load_model
    from imf.train.token2mel import distill

    def max_gap(a, b):
        return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    runs = tree / "runs" / "tiny"
    teacher_ckpt, student_ckpt = runs / "teacher/checkpoints/last.pt", runs / "student/checkpoints/last.pt"
    corpus = load_corpus(load_checkpoint(teacher_ckpt)["config"]["corpus"])
    cfg = TrainConfig(steps=1, batch_size=2, lr=1e-12, warmup=0, ckpt_every=1, log_every=1)
    trainer, _ = distill(corpus, teacher_ckpt, tree / "stage2", cfg, IMFConfig(teacher_nfe=2, p_full=0.5),
                         progress=False, init=student_ckpt)
    student, fresh = load_model(student_ckpt), student_from_teacher(load_model(teacher_ckpt))
    # one step at lr 1e-12 from the student's EMA weights, far from the teacher-initialised student
    assert max_gap(trainer.model, student) < 1e-6 < max_gap(fresh, student)
    assert load_checkpoint(tree / "stage2/checkpoints/last.pt")["config"]["init"] == str(student_ckpt)
    with pytest.raises(ValueError, match="not a student checkpoint"):
        distill(corpus, teacher_ckpt, tree / "stage2_bad", cfg, init=teacher_ckpt, progress=False)


def test_03_nfe_curves(tree):
    m = run(tree, "03_nfe_curves", SPEED_REPEATS=1)
    assert m["student_fs_ratio_1"] > 0 and m["speedup_student_1"] > 1
    assert m["dist_criterion_below_teacher_4"] == (m["student_dist_ref_1"] < m["teacher_cfg_dist_ref_4"])
    paired = m["dist_paired_student1_vs_teacher4"]
    assert paired["n"] == 4 and paired["verdict"] in ("student closer", "teacher closer", "within noise")


def test_04_o3s(tree):
    m = run(tree, "04_o3s", METRIC="sim", MAX_EVALS=6, ITERS=2, SCAN_POINTS=3, STUDENT_NFES="2", TEACHER_NFES="5")
    assert {(s["model"], s["nfe"]) for s in m["searches"]} == {("student", 2), ("teacher", 5)}
    assert all(s["dev_best"] >= s["dev_init"] for s in m["searches"])
    assert (tree / "results/04_o3s/student_nfe2/grid.json").exists()
    (v,) = m["student_verdict"]
    assert v["gain_se"] >= 0 and v["verdict"] in ("O3S better", "uniform better", "within noise")


def test_04_o3s_on_an_intrinsic_metric(tree):
    m = run(tree, "04_o3s", METRIC="neg_dist_ref", MAX_EVALS=6, ITERS=2, SCAN_POINTS=3, STUDENT_NFES="2",
            TEACHER_NFES="5")
    (v,) = m["student_verdict"]
    assert v["metric"] == "dist_ref" and v["gain_se"] >= 0 and v["uniform"] > 0 and v["o3s"] > 0


def test_05_meanflow_vs_imf(tree):
    m = run(tree, "05_meanflow_vs_imf", STEPS=3)
    assert {r["objective"] for r in m["memory"]} == {"cfm", "imf", "meanflow"}
    assert len(m["quality_1nfe"]) == 5  # the final student, its first stage, three MeanFlow runs
    assert m["imf_stage1_steps"] > 0 and set(m["winner_per_metric_stage1"]) == {"fs_ratio", "gv_ratio", "dist_ref"}


def test_06_listen(tree):
    m = run(tree, "06_listen", N_UTTS=2, JUDGES=["pesq"])
    assert m["n_utts"] == 2 and m["judges"] == ["pesq"]
    assert m["systems"] == ["ground truth", "copy-synthesis", "teacher + CFG 2", "IntMeanFlow student"]
    points = {(r["system"], r["nfe"]) for r in m["mean_scores"]}
    assert points == {("ground truth", 0), ("copy-synthesis", 0)} | {
        (s, n) for s in ("teacher + CFG 2", "IntMeanFlow student") for n in (1, 2, 4, 32)}
    assert all(r["pesq"] > 0 and r["fs_ratio"] > 0 for r in m["mean_scores"])
    assert (tree / "results/06_listen/comparison.png").exists() and (tree / "results/06_listen/scores.csv").exists()
    executed = (tree / "results/runs/06_listen.ipynb").read_text()
    assert executed.count("<audio") == 6  # the static players (2 utterances x 3 systems)
    assert "06 — listening comparison" in (tree / "results/README.md").read_text()


def test_07_token2wav(tree):
    m = run(tree, "07_token2wav", JUDGES=["sim", "pesq", "stoi"])
    names = ["VAE oracle", "FM 10-step", "MF No-FT", "MF Decoder-FT", "MF Joint-FT", "IMF-distilled (1 step)"]
    assert [r["system"] for r in m["table"]] == names
    assert [r["nfe"] for r in m["table"]] == [0, 10, 1, 1, 1, 1]
    assert {k: v["steps"] for k, v in m["stages"].items()} == {
        "vae": 4, "fm": 4, "meanflow": 3, "imf": 2, "decoder_ft": 2, "joint_ft": 2}
    assert all(1.0 <= r["pesq"] <= 4.7 and 0 < r["stoi"] <= 1 and r["rtf_e2e"] > 0 for r in m["table"])
    assert m["speed_ratio_fm_mf"] > 0 and set(m["orderings"]) == {"sim", "pesq", "stoi"}
    for run_name in ("vae", "fm", "mf", "imf", "mf_decft", "mf_joint"):
        assert (tree / f"runs/tiny/t2w_{run_name}/checkpoints/last.pt").exists()
    assert (tree / "results/07_token2wav/token2wav.png").exists()
    assert (tree / "results/runs/07_token2wav.ipynb").read_text().count("<audio") == 6
    assert "07 — one-step Token2Wav" in (tree / "results/README.md").read_text()
