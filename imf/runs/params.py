"""Notebook parameters: what a notebook declares in its ``parameters`` cell, checked before any work.

papermill injects parameters without looking at them: an unknown name only logs "Passed unknown
parameter" (the notebook then runs on its defaults), and a value of the wrong type fails later, deep
inside, or not at all (``-p ABLATION no`` is the non-empty string ``"no"``: true). Here the declared
parameters are read from the notebook itself (its cell tagged ``parameters``: one
``NAME = literal  # comment`` per line) and every given value is checked against its default's type:

- an unknown name is an error, with the closest declared names as suggestions;
- ``int``: an int (never a bool); ``float``: an int or a float, returned as float (papermill's CLI
  turns ``-p W 2`` into the int 2);
- ``bool``: ``True`` or ``False`` only. papermill's CLI turns the text ``True``/``False`` into bools
  and leaves ``no``, ``yes``, ``true``, ``false`` as strings (and ``0``/``1`` as ints): those are
  errors naming the parameter, never guessed;
- ``str``: a string. papermill's CLI parses ``-p RUN 7`` into the int 7: an error that says to pass
  text with ``-r NAME VALUE`` (raw);
- ``list``: a list or tuple whose items have the type of the default's items (``-y 'NAMES: [1, 2]'``);
  a comma string such as ``"1,2"`` is an error;
- a ``None`` default accepts anything; ``PROFILE`` must name a profile of :mod:`imf.runs.profiles`.

Two places check: :func:`imf.runs.pipeline.run_notebook` (before papermill starts) with
:func:`check`, and each notebook's first code cell after its parameters with
:func:`check_parameters` (``params = check_parameters("02_distill", globals())``), which covers a
plain ``papermill`` call and JupyterLab: it reads the names papermill injected from the kernel's
input history (papermill's injected cell starts with ``# Parameters``) and the values from the
notebook's globals.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Mapping

from imf.core.config import ConfigError
from imf.core.runtime import repo_root
from imf.runs.profiles import PROFILES

INJECTED_HEADER = "# Parameters"  # the first line of the cell papermill injects (its default comment)


class ParameterError(ConfigError):
    """A notebook parameter is unknown or has the wrong type (names the notebook and the parameter)."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One declared parameter: ``NAME = default  # comment`` in the notebook's ``parameters`` cell."""
    name: str
    default: Any
    comment: str = ""


def notebook_file(notebook: str | Path) -> Path:
    """``notebooks/<name>.ipynb`` for a bare name, else the path itself."""
    p = Path(notebook)
    if p.suffix == ".ipynb":
        return p
    return repo_root() / "notebooks" / f"{p.name}.ipynb"


def parameters_source(notebook: str | Path) -> str:
    """The source of the notebook's cell tagged ``parameters`` (:class:`ParameterError` if none)."""
    path = notebook_file(notebook)
    if not path.exists():
        raise FileNotFoundError(f"notebook {path} does not exist")
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell["source"]
            return "".join(src) if isinstance(src, list) else src
    raise ParameterError(f"{path.name}: no code cell is tagged 'parameters'")


def parse_assignments(source: str, where: str) -> dict[str, Parameter]:
    """``NAME = literal  # comment`` lines of ``source`` as :class:`Parameter` s, in order.

    Anything else than an assignment of a Python literal to one name is an error naming the line.
    """
    lines = source.splitlines()
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ParameterError(f"{where}: the parameters do not parse: {e}") from None
    out: dict[str, Parameter] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ParameterError(f"{where}, line {node.lineno}: expected `NAME = literal`, got "
                                 f"{ast.get_source_segment(source, node)!r}")
        name = node.targets[0].id
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParameterError(f"{where}: parameter {name!r} must be a literal (flat primitives), got "
                                 f"{ast.get_source_segment(source, node.value)!r}") from None
        line = lines[node.end_lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line[node.end_col_offset:] else ""
        out[name] = Parameter(name, default, comment)
    return out


def declared(notebook: str | Path) -> dict[str, Parameter]:
    """The parameters ``notebook`` declares (name -> :class:`Parameter`), read from its ``parameters`` cell."""
    return parse_assignments(parameters_source(notebook), f"{notebook_file(notebook).name} (parameters cell)")


def check_value(where: str, p: Parameter, value: Any) -> Any:
    """``value`` checked against the type of ``p.default`` (see the module docstring); returns it (ints -> float
    for a float parameter, tuples -> lists for a list parameter)."""
    d, name = p.default, f"{where}: parameter {p.name}"
    got = f"got {type(value).__name__} {value!r}"
    if d is None:
        return value
    if isinstance(d, bool):
        if isinstance(value, bool):
            return value
        raise ParameterError(f"{name} must be True or False, {got} (papermill's -p turns only the text True or "
                             "False into a bool; 'no', 'yes', 'true', 'false', 0 and 1 are not accepted)")
    if isinstance(d, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParameterError(f"{name} must be an int, {got}")
    if isinstance(d, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ParameterError(f"{name} must be a number, {got}")
    if isinstance(d, str):
        if isinstance(value, str):
            return value
        hint = (f" (papermill's -p parses numbers and True/False/None: pass text with -r {p.name} VALUE)"
                if isinstance(value, (int, float, bool)) or value is None else "")
        raise ParameterError(f"{name} must be a string, {got}{hint}")
    if isinstance(d, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"{name} must be a list, {got} (pass lists with papermill -y '{p.name}: [1, 2]')")
        # items take the type of the default's first item (an empty default accepts any items)
        checked = [check_value(where, Parameter(f"{p.name}[{i}]", d[0]), v) if d else v for i, v in enumerate(value)]
        return checked if isinstance(d, list) else tuple(checked)
    return value


def _unknown(where: str, names: list[str], known: Mapping[str, Parameter]) -> ParameterError:
    parts = []
    for n in names:
        close = difflib.get_close_matches(n, list(known), n=3, cutoff=0.6)
        parts.append(f"{n!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    return ParameterError(f"{where}: unknown parameter{'s' if len(names) > 1 else ''} {', '.join(parts)}; "
                          f"declared: {', '.join(known)}")


def check(notebook: str | Path, given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` (name -> value, as papermill would inject them) against ``notebook``'s declared
    parameters; returns the checked values. :class:`ParameterError` names the notebook and the parameter."""
    where = notebook_file(notebook).name
    known = declared(notebook)
    unknown = [n for n in given if n not in known]
    if unknown:
        raise _unknown(where, unknown, known)
    values = {n: check_value(where, known[n], v) for n, v in given.items()}
    if "PROFILE" in values and isinstance(values["PROFILE"], str) and values["PROFILE"] not in PROFILES:
        raise ParameterError(f"{where}: parameter PROFILE is {values['PROFILE']!r}; choose one of {sorted(PROFILES)}")
    return values


def injected_names(history: list[str] | None) -> list[str]:
    """Names assigned by papermill's injected cells (sources starting with ``# Parameters``) in a kernel's
    input history (IPython's ``In``), in order of first appearance."""
    names: list[str] = []
    for src in history or []:
        if isinstance(src, str) and src.lstrip().startswith(INJECTED_HEADER):
            for node in ast.parse(src).body:
                if isinstance(node, ast.Assign):
                    names += [t.id for t in node.targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def check_parameters(notebook: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The check for a notebook's first code cell: ``params = check_parameters("02_distill", globals())``.

    Names papermill injected (read from the kernel's input history ``In``) must be declared; every declared
    parameter's current value (from ``namespace``) must have its default's type. Returns
    ``{NAME: value}`` of the declared parameters and writes checked values back into ``namespace``
    (``CFG_SCALE = 2`` becomes ``2.0``).
    """
    where = notebook_file(notebook).name
    known = declared(notebook)
    unknown = [n for n in injected_names(namespace.get("In")) if n not in known]
    if unknown:
        raise _unknown(where, unknown, known)
    missing = [n for n in known if n not in namespace]
    if missing:
        raise ParameterError(f"{where}: parameter(s) {missing} are not defined: run the parameters cell first")
    values = check(notebook, {n: namespace[n] for n in known})
    namespace.update(values)
    return values
