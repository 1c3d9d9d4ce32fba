"""Notebook parameters are checked against the notebook's own ``parameters`` cell before any work:
in ``run_notebook``/the pipeline, and inside the notebook for a plain ``papermill`` call."""
import argparse
import json
import os
import subprocess
import sys

import nbformat
import pytest

from imf.core.runtime import repo_root
from imf.runs import pipeline
from imf.runs.params import ParameterError, check, check_parameters, declared, injected_names, parse_assignments

ROOT = repo_root()


def test_declared_reads_names_defaults_and_comments_of_the_parameters_cell():
    p = declared("02_distill")
    assert list(p)[:3] == ["PROFILE", "SEED", "STEPS"]
    assert p["ABLATION"].default is True and p["CFG_SCALE"].default == 0.0 and p["FREEZE"].default == "encoder"
    assert p["STEPS"].comment.startswith("distillation steps")
    for name in pipeline.available() + list(pipeline.STUDIES):  # every pipeline notebook declares flat literals, PROFILE first
        assert list(declared(name))[0] == "PROFILE"


def test_a_parameters_cell_of_anything_but_literal_assignments_is_an_error():
    with pytest.raises(ParameterError, match="'N' must be a literal"):
        parse_assignments("N = 2 * 3\n", "x.ipynb")
    with pytest.raises(ParameterError, match="line 2: expected `NAME = literal`"):
        parse_assignments("N = 2\nprint(N)\n", "x.ipynb")


@pytest.mark.parametrize("given, message", [
    ({"STEPZ": 3}, r"02_distill.ipynb: unknown parameter 'STEPZ' \(did you mean STEPS"),
    ({"CORPUS_DIR": "/nonexistent"}, r"unknown parameter 'CORPUS_DIR'; declared: PROFILE, SEED"),
    ({"STAGE2_STEPS": "x"}, r"parameter STAGE2_STEPS must be an int, got str 'x'"),
    ({"STEPS": 1.5}, r"parameter STEPS must be an int, got float"),
    ({"STEPS": True}, r"parameter STEPS must be an int, got bool"),
    ({"ABLATION": "no"}, r"parameter ABLATION must be True or False, got str 'no'"),
    ({"ABLATION": "false"}, r"parameter ABLATION must be True or False"),
    ({"ABLATION": 0}, r"parameter ABLATION must be True or False, got int 0"),
    ({"CFG_SCALE": "2"}, r"parameter CFG_SCALE must be a number, got str"),
    ({"RUN_NAME": 7}, r"parameter RUN_NAME must be a string, got int 7 .*-r RUN_NAME VALUE"),
    ({"PROFILE": "small2"}, r"parameter PROFILE is 'small2'; choose one of \['paper', 'small', 'small-long', 'tiny'\]"),
])
def test_check_rejects_unknown_names_and_wrong_types_naming_the_parameter(given, message):
    with pytest.raises(ParameterError, match=message):
        check("02_distill", given)


def test_check_accepts_the_declared_types_and_makes_ints_floats_for_float_parameters():
    out = check("02_distill", {"PROFILE": "tiny", "STEPS": 3, "CFG_SCALE": 2, "ABLATION": False, "FREEZE": "none"})
    assert out == {"PROFILE": "tiny", "STEPS": 3, "CFG_SCALE": 2.0, "ABLATION": False, "FREEZE": "none"}
    assert isinstance(out["CFG_SCALE"], float)


def _notebook(tmp_path, params_src):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params_src)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_list_parameters_take_lists_of_the_default_items_type(tmp_path):
    path = _notebook(tmp_path, "NFES = [1, 2]  # NFEs\nNAMES = []  # anything\nOPT = None  # anything\n")
    assert check(path, {"NFES": (3, 4), "NAMES": ["a", 1], "OPT": 5}) == {"NFES": [3, 4], "NAMES": ["a", 1], "OPT": 5}
    with pytest.raises(ParameterError, match=r"NFES must be a list, got str '1,2' .*-y 'NFES: \[1, 2\]'"):
        check(path, {"NFES": "1,2"})
    with pytest.raises(ParameterError, match=r"parameter NFES\[1\] must be an int, got str"):
        check(path, {"NFES": [1, "2"]})


def test_check_parameters_reads_papermill_injected_names_from_the_kernel_history():
    src = "".join(json.loads((ROOT / "notebooks/02_distill.ipynb").read_text())["cells"][2]["source"])
    ns = {}
    exec(src, ns)  # the parameters cell
    ns.pop("__builtins__")
    injected = '# Parameters\nPROFILE = "tiny"\nSTEPZ = 3\n'
    assert injected_names(["", "import x", src, injected]) == ["PROFILE", "STEPZ"]
    ns.update(PROFILE="tiny", STEPZ=3, In=["", src, injected])
    with pytest.raises(ParameterError, match=r"unknown parameter 'STEPZ' \(did you mean STEPS"):
        check_parameters("02_distill", ns)
    ns.update(In=["", src, '# Parameters\nPROFILE = "tiny"\nCFG_SCALE = 2\n'], CFG_SCALE=2)
    params = check_parameters("02_distill", ns)
    assert params["PROFILE"] == "tiny" and params["CFG_SCALE"] == 2.0 and isinstance(ns["CFG_SCALE"], float)
    ns["ABLATION"] = "no"  # e.g. edited by hand in JupyterLab: no injected cell, the values are still checked
    with pytest.raises(ParameterError, match="ABLATION must be True or False"):
        check_parameters("02_distill", {k: v for k, v in ns.items() if k != "In"})
    del ns["SEED"]
    with pytest.raises(ParameterError, match=r"\['SEED'\] are not defined"):
        check_parameters("02_distill", ns)


def test_run_notebook_checks_before_papermill_starts(tmp_path):
    with pytest.raises(ParameterError, match="unknown parameter 'STEPZ'"):
        pipeline.run_notebook("02_distill", tmp_path, {"PROFILE": "tiny", "STEPZ": 3})
    with pytest.raises(ParameterError, match="ABLATION must be True or False"):
        pipeline.run_notebook("02_distill", tmp_path, {"ABLATION": "no"})
    assert not list(tmp_path.iterdir())  # nothing executed, nothing written


@pytest.mark.parametrize("argv, message", [
    (["--from", "02_distil"], "argument --from: unknown notebook '02_distil' (did you mean 02_distill?); choose from 00_corpus"),
    (["--only", "00_corpus", "03_nfe"], "argument --only: unknown notebook '03_nfe' (did you mean 03_nfe_curves?)"),
    (["--profile", "tinny"], "argument --profile: invalid choice: 'tinny'"),
])
def test_pipeline_cli_rejects_unknown_names_with_an_argparse_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        pipeline.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_pipeline_names_a_missing_notebook_before_running_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "notebook_path", lambda name: tmp_path / f"{name}.ipynb")
    with pytest.raises(FileNotFoundError, match=r"02_distill.ipynb does not exist; known: \['00_corpus'"):
        pipeline.run_notebook("02_distill", tmp_path / "out", {})
    (tmp_path / "00_corpus.ipynb").write_text((ROOT / "notebooks/00_corpus.ipynb").read_text())
    monkeypatch.setattr(pipeline, "run_notebook", lambda *a, **k: pytest.fail("ran a notebook"))
    assert pipeline.main(["--profile", "tiny", "--only", "00_corpus", "01_teacher"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / '01_teacher.ipynb'}" in err and "do not exist" in err and "present: ['00_corpus']" in err


def test_studies_run_only_when_named():
    """A study (08a_alignment) is not in the default run; --only runs it; a typo of it gets a close match."""
    assert "08a_alignment" in pipeline.STUDIES and "08a_alignment" not in pipeline.available()
    assert pipeline.selected(["08a_alignment"], None) == ["08a_alignment"]
    assert pipeline.selected(None, "08_text2mel") == ["08_text2mel", "09_listening_test"]
    with pytest.raises(argparse.ArgumentTypeError, match="did you mean 08a_alignment"):
        pipeline.notebook_name("08a_alignmnt")


@pytest.mark.slow  # a fresh interpreter imports torch
def test_python_m_pipeline_with_a_typo_exits_2_without_a_traceback():
    r = subprocess.run([sys.executable, "-m", "imf.runs.pipeline", "--from", "02_distil"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr and "did you mean 02_distill?" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["-p", "STEPZ", "3"], "unknown parameter 'STEPZ' (did you mean STEPS"),
    (["-p", "CORPUS_DIR", "/nonexistent"], "unknown parameter 'CORPUS_DIR'"),
    (["-p", "STAGE2_STEPS", "x"], "parameter STAGE2_STEPS must be an int, got str 'x'"),
    (["-p", "ABLATION", "no"], "parameter ABLATION must be True or False, got str 'no'"),
])
def test_plain_papermill_fails_in_the_notebooks_first_cell(tmp_path, args, message):
    """A plain ``papermill`` call (no imf.runs.pipeline) stops at the check, before the notebook opens any run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "IMF_RESULTS": str(tmp_path / "results"),
           "IMF_RUNS": str(tmp_path / "runs"), "IMF_DATA": str(tmp_path / "data")}
    papermill = os.path.join(os.path.dirname(sys.executable), "papermill")
    r = subprocess.run([papermill, str(ROOT / "notebooks/02_distill.ipynb"), str(tmp_path / "out.ipynb"),
                        "-p", "PROFILE", "tiny", *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "ParameterError" in r.stderr and message in r.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_pipeline_sweeps_leftovers_of_killed_writes_before_running(tmp_path, monkeypatch):
    """A kill during an atomic write leaves `.<name>.<8>.tmp<ext>` files: the next pipeline start removes
    exactly those (a user's own dot-file stays) before it runs anything."""
    monkeypatch.setenv("IMF_RESULTS", str(tmp_path))
    (tmp_path / "runs").mkdir()
    leftovers = [tmp_path / "runs" / ".02_distill.ipynb.k3j9x2ab.tmp.ipynb", tmp_path / ".README.md.q8w7e6r5.tmp.md"]
    kept = tmp_path / "runs" / ".my_notes.tmp"
    for f in leftovers + [kept]:
        f.write_text("half")
    ran = []
    monkeypatch.setattr(pipeline, "run_notebook", lambda name, *a, **k: ran.append(
        (name, [f.exists() for f in leftovers])))
    monkeypatch.setattr(pipeline, "build_readme", lambda: None)
    assert pipeline.main(["--profile", "tiny", "--only", "00_corpus"]) == 0
    assert ran == [("00_corpus", [False, False])] and kept.exists()


def test_executed_copies_are_signed_so_they_open_trusted(tmp_path, monkeypatch):
    """papermill's copies open untrusted (frozen progress bars, widgets as text); the pipeline signs them
    with the user's notary. An unsigned or edited copy is not trusted: the check can fail."""
    import nbformat
    from nbformat.sign import NotebookNotary

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    path = tmp_path / "x.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)", outputs=[
        nbformat.v4.new_output("display_data", data={"text/html": "<b>widget</b>"})])])
    nbformat.write(nb, str(path))
    assert not NotebookNotary().check_signature(nbformat.read(str(path), as_version=4))
    pipeline.trust(path)
    assert NotebookNotary().check_signature(nbformat.read(str(path), as_version=4))
    nb.cells[0].outputs[0].data["text/html"] = "<b>tampered</b>"
    nbformat.write(nb, str(path))
    assert not NotebookNotary().check_signature(nbformat.read(str(path), as_version=4))
