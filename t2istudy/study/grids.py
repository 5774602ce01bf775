"""A grid file (YAML/JSON) -> the list of runs it asks for, with the notebook's parameters checked first.

A grid is fixed ``params`` for every run x the cartesian product of ``axes``, minus ``exclude``, plus
``include``; each run gets a readable id (``gemma3-270m__norm_mean__seed0``) and a folder
``runs/<grid>/<run-id>/`` (:func:`run_path`). Papermill silently injects parameters a notebook does not
declare, so every name is checked against the notebook's ``parameters`` cell before anything runs.

A string parameter may name another of the run's parameters in braces, filled per run:
``shared_train_dir: runs/small2/{encoder}__{strategy}__seed{seed}/train`` (only ``{name}`` with a
parameter's name is replaced, so a JSON object in a string is left alone).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import papermill
import yaml

SCHEMA_VERSION = 1
DEFAULT_GRID = "small2"  # the study's grid, on cpu-latent-v, the preset whose models draw (issue 17)
GRID_KEYS = ("name", "notebook", "description", "schema_version", "params", "axes", "exclude", "include")
GRID_KEYS += ("seed_budget",)  # seeds per arm fixed before the runs (t2istudy.analysis.calls)


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: the notebook, its parameters (without ``out_dir``) and where it goes."""

    grid: str
    run_id: str
    notebook: str
    params: dict[str, Any] = field(hash=False)


@dataclass
class Grid:
    """A grid file: fixed ``params`` for every run x the cartesian product of ``axes``.

    ``exclude`` drops runs matching any of its partial dicts; ``include`` adds explicit extra runs
    (each a dict of parameters on top of ``params``). Axis order sets the run-id order.
    """

    name: str
    notebook: str
    params: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    seed_budget: int | None = None  # seeds per arm declared in advance; the analysis marks more exploratory
    source: str = field(default="", compare=False)  # the grid file it was read from, for error messages

    def runs(self) -> list[RunSpec]:
        return expand_grid(self)


def load_grid(path: str | Path) -> Grid:
    """Read a grid file (YAML or JSON), rejecting unknown keys and malformed axes with a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Grid file not found: {path}. Pass a YAML/JSON grid such as grids/quick.yaml."
        )
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a grid file must be a mapping with keys {', '.join(GRID_KEYS)}.")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ValueError(
            f"{path}: unknown grid key(s) {unknown}; allowed keys are {list(GRID_KEYS)}. "
            f"Notebook parameters go under 'params' (fixed) or 'axes' (lists to sweep)."
        )
    version = raw.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: grid schema_version {version} but this t2istudy reads {SCHEMA_VERSION}.")
    if "notebook" not in raw:
        raise ValueError(
            f"{path}: missing 'notebook' (the notebook each run executes, e.g. notebooks/run.ipynb)."
        )
    notebook = Path(raw["notebook"])
    if not notebook.is_absolute() and not notebook.exists() and (path.parent.parent / notebook).exists():
        notebook = path.parent.parent / notebook  # grids/x.yaml names notebooks relative to the repo root
    axes = raw.get("axes") or {}
    if not isinstance(axes, dict):
        raise ValueError(f"{path}: 'axes' must map a parameter name to a list of values.")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: axis {key!r} must be a non-empty list, got {values!r}.")
    if not isinstance(raw.get("params") or {}, dict):
        raise ValueError(f"{path}: 'params' must be a mapping of parameter name -> value.")
    for section in ("exclude", "include"):
        items = raw.get(section) or []
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ValueError(f"{path}: {section!r} must be a list of mappings (parameter name -> value).")
    grid = Grid(
        name=str(raw.get("name") or path.stem),
        notebook=str(notebook.resolve()),
        params=dict(raw.get("params") or {}),
        axes={str(k): list(v) for k, v in axes.items()},
        exclude=list(raw.get("exclude") or []),
        include=list(raw.get("include") or []),
        description=str(raw.get("description") or ""),
        seed_budget=_seed_budget(raw, path),
        source=str(path),
    )
    check_parameters(grid.notebook, _all_keys(grid), where=str(path))
    return grid


def _seed_budget(raw: dict, path: Path) -> int | None:
    """The grid's ``seed_budget``: a positive whole number of seeds per arm, or None when not declared."""
    budget = raw.get("seed_budget")
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(
            f"{path}: seed_budget must be a positive whole number of seeds per arm (e.g. seed_budget: 3), "
            f"got {budget!r}."
        )
    return budget


def seed_budget(path: str | Path) -> int | None:
    """The seeds per arm a grid file declares in advance (``seed_budget``), read without checking the
    notebook: the analysis marks an arm's seeds beyond it exploratory. None when the file declares none."""
    raw = _read_yaml(Path(path))
    return _seed_budget(raw, Path(path)) if isinstance(raw, dict) else None


def _read_yaml(path: Path) -> Any:
    """The file's YAML (a superset of JSON); a syntax error names the file and the line, not '<unicode string>'."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = " ".join(
            str(p) for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p
        )
        raise ValueError(
            f"{where}: not valid YAML ({problem or err}). Fix the grid file there (indentation, a missing "
            f"':' or a quote left open; quote values holding ':' or '#', e.g. strategy: \"layer:9\")."
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err}); a grid file is YAML or JSON.") from err


def _all_keys(grid: Grid) -> dict[str, Any]:
    keys: dict[str, Any] = dict(grid.params)
    keys.update({k: v[0] for k, v in grid.axes.items()})
    for item in grid.exclude + grid.include:
        keys.update(item)
    return keys


def expand_grid(grid: Grid) -> list[RunSpec]:
    """The grid's runs: params x product(axes), minus exclude, plus include; ids must be unique."""
    overlap = sorted(set(grid.params) & set(grid.axes))
    if overlap:
        raise ValueError(
            f"Grid {grid.name!r}: {overlap} appear in both 'params' and 'axes'; keep each in one."
        )
    combos = [dict(zip(grid.axes, values, strict=True)) for values in itertools.product(*grid.axes.values())]
    combos = [c for c in combos if not any(_matches(c, ex) for ex in grid.exclude)]
    combos += [dict(item) for item in grid.include]
    specs: dict[str, RunSpec] = {}
    for combo in combos:
        rid = make_run_id(combo)
        if rid in specs:
            raise ValueError(
                f"Grid {grid.name!r}: two runs get the same id {rid!r} ({specs[rid].params} and {combo}); "
                f"make the axis values distinct."
            )
        specs[rid] = RunSpec(grid.name, rid, grid.notebook, fill_placeholders({**grid.params, **combo}))
    return list(specs.values())


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_placeholders(params: dict[str, Any]) -> dict[str, Any]:
    """Each string value's ``{name}`` -> ``str(params[name])``, for names of the run's own parameters."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in params:
            return match.group(0)
        value = params[name]
        if isinstance(value, str) and _PLACEHOLDER.search(value):
            raise ValueError(
                f"Grid parameter {{{name}}} is itself a template ({value!r}); name a plain value."
            )
        return str(value)

    return {k: _PLACEHOLDER.sub(fill, v) if isinstance(v, str) else v for k, v in params.items()}


def _matches(combo: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(k in combo and combo[k] == v for k, v in pattern.items())


def make_run_id(values: dict[str, Any]) -> str:
    """A readable, file-system safe id from the swept values: strings as-is, numbers as key+value.

    ``{"encoder": "gemma3-270m", "strategy": "layer[9]", "seed": 0}`` -> ``gemma3-270m__layer-9__seed0``.
    """
    parts = []
    for key, value in values.items():
        text = f"{key}{value}" if isinstance(value, (int, float, bool)) or value is None else str(value)
        parts.append(re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-"))
    return "__".join(parts) or "run"


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The notebook's declared parameters (its cell tagged ``parameters``), via papermill."""
    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"Notebook not found: {notebook}. Check the grid's 'notebook' path.")
    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise ValueError(
            f"{notebook} has no cell tagged 'parameters' (or it is empty): tag the cell that holds the "
            f"defaults so that runs can be parameterized."
        )
    return declared


def unparsable_parameters(notebook: str | Path) -> dict[str, str]:
    """Assignments in the parameters cell that papermill cannot read (it skips a line with two '=')."""
    cells = nbformat.read(str(notebook), as_version=4).cells
    source = next((c.source for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), "")
    lines = {}
    for line in source.splitlines():
        match = re.match(r"^([A-Za-z_]\w*)\s*(:[^=]*)?=[^=]", line)
        if match and line.count("=") > 1:
            lines[match.group(1)] = line
    return lines


def check_parameters(
    notebook: str | Path, params: dict[str, Any], where: str = "", need_out_dir: bool = True
) -> None:
    """Reject parameters the notebook does not declare (papermill would inject them without a word)."""
    declared = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(declared))
    src = f"{where}: " if where else ""
    unparsable = {k: v for k, v in unparsable_parameters(notebook).items() if k in unknown}
    if unparsable:
        name, line = next(iter(unparsable.items()))
        raise ValueError(
            f"{src}{notebook} declares {name!r} on a line papermill cannot parse ({line!r}): a parameter line "
            f"may hold only one '=' (rephrase comments such as '>= 3' or 'None = all'), so it cannot be set."
        )
    if unknown:
        raise ValueError(
            f"{src}parameter(s) {unknown} are not declared by {notebook}; it declares "
            f"{sorted(declared)}. Fix the spelling, or add the parameter to the notebook's 'parameters' cell."
        )
    if need_out_dir and "out_dir" not in declared:
        raise ValueError(
            f"{notebook} must declare an 'out_dir' parameter: the runner passes the run directory."
        )


def run_path(root: str | Path, spec: RunSpec) -> Path:
    return Path(root) / spec.grid / spec.run_id


def select_runs(specs: list[RunSpec], only: list[str] | None) -> list[RunSpec]:
    """The runs ``--only`` names, in the order named (the user's priority); a repeated id once."""
    if not only:
        return specs
    unknown = sorted(set(only) - {s.run_id for s in specs})
    if unknown:
        raise ValueError(f"--only names unknown run ids {unknown}; see `t2istudy grid status`.")
    by_id = {s.run_id: s for s in specs}
    return [by_id[run_id] for run_id in dict.fromkeys(only)]
