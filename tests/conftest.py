import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

torch.set_num_threads(int(os.environ.get("IMF_THREADS", "2")))


@pytest.fixture
def nb_env(tmp_path, monkeypatch):
    """Isolated results/ and data/ folders for notebook runs (the kernel inherits os.environ)."""
    monkeypatch.setenv("IMF_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("IMF_DATA", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test sees the same global RNG state, whatever ran before it (no order-dependent draws)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory):
    """The tiny pipeline's data/runs/results tree, shared by the notebook tests and the browser test
    (each module sets it as its environment with :func:`tests.helpers.pipeline_env`). ``$IMF_TEST_TREE``:
    use (and fill) that folder instead, e.g. to rerun the browser test on notebooks already executed."""
    if os.environ.get("IMF_TEST_TREE"):
        from pathlib import Path

        return Path(os.environ["IMF_TEST_TREE"])
    return tmp_path_factory.mktemp("pipeline")
