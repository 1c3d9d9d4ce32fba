"""The package's shape: folders are layers, imports run only down, no cycles, small files, thin notebooks.

Layers, bottom to top (``imf/<layer>/``): core → flow → models → data → train → eval → viz → runs.
A module may import its own layer and the layers below it, never one above.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "imf"
LAYERS = ["core", "flow", "models", "data", "train", "eval", "viz", "runs"]
MAX_LINES = 450  # biggest file
MAX_NOTEBOOK_CODE_LINES = 45


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the ``imf`` package in ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "imf"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "imf":
                continue
            # `from imf.flow import schedules` imports the module imf.flow.schedules
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((node.lineno, sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                            or (ROOT / Path(*sub.split(".")) / "__init__.py").exists() else mod))
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def package_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_lives_in_a_layer():
    loose = [str(p.relative_to(ROOT)) for p in package_files()
             if p.parent != PKG and layer_of(module_name(p)) is None]
    top = [p.name for p in PKG.glob("*.py") if p.name != "__init__.py"]
    assert not loose and not top, f"modules outside the layers {LAYERS}: {loose + top}"


def test_imports_only_run_down():
    upward = []
    for path in package_files():
        mine = layer_of(module_name(path))
        if mine is None:
            continue
        for line, mod in imported_modules(path):
            theirs = layer_of(mod)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                upward.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {mod} ({theirs})")
    assert not upward, "imports running up the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {module_name(p): {m for _, m in imported_modules(p)} for p in package_files()}
    graph = {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle worth reporting
    for k, deps in graph.items():
        graph[k] = {d for d in deps if not (d.startswith(k + ".") or k.startswith(d + ".") and
                                            (ROOT / Path(*d.split(".")) / "__init__.py").exists())}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_files_are_small():
    big = {str(p.relative_to(ROOT)): n for p in package_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"files over {MAX_LINES} lines: {big}"


def code_lines(nb_path: Path) -> int:
    nb = json.loads(nb_path.read_text())
    src = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return sum(1 for s in src for line in s.splitlines() if line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("nb", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebooks_are_thin(nb):
    n = code_lines(ROOT / "notebooks" / nb)
    assert n <= MAX_NOTEBOOK_CODE_LINES, f"{nb}: {n} code lines (limit {MAX_NOTEBOOK_CODE_LINES})"


@pytest.mark.parametrize("nb", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebooks_carry_no_outputs_and_declare_parameters(nb):
    cells = json.loads((ROOT / "notebooks" / nb).read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{nb} has outputs"
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1, f"{nb}: one parameters cell"


def test_layout_checks_can_fail(tmp_path):
    """The import scanner sees an upward import, relative or absolute (guards the tests above)."""
    bad = PKG / "flow" / "_layout_probe.py"
    try:
        bad.write_text("from ..runs import report\nfrom imf.eval.sweep import nfe_sweep\n")
        found = [m for _, m in imported_modules(bad)]
        assert found == ["imf.runs.report", "imf.eval.sweep"]
        assert all(LAYERS.index(layer_of(m)) > LAYERS.index("flow") for m in found)
    finally:
        bad.unlink()
