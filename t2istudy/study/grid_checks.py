"""Checks made before a grid's runs execute: the training options each run asks for, and whether a run
that would resume was started with the parameters the grid asks for now.

A typo inside ``train_options`` (``pool_sise``) would otherwise surface as a TypeError in the run
notebook's fourth cell, once per run, after a kernel start each; a value of the wrong type (YAML reads
``1e-3`` as a string) after the data and the cache were built. And a grid edited while its runs are
half-done would silently resume a checkpoint trained with the old values under the new ones.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from t2istudy.diffusion import train_folder
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.diffusion.train_folder import RESULT_NEUTRAL
from t2istudy.study.grids import RunSpec, notebook_parameters, run_path
from t2istudy.study.run_folder import CorruptFile, read_json

TRAIN_OPTIONS = "train_options"  # the run notebook's dict of further TrainOptions fields
SET_BY_NOTEBOOK = ("output_dir", "report_to", "progress")  # the run notebook passes these itself
# Parameters that do not change a run's numbers: they may differ between a run's start and its resume.
# The trainer's own list (what a resume may change), plus the run notebook's parameters of that kind.
NEUTRAL = RESULT_NEUTRAL | {"keep_checkpoints"}


def train_options_problems(spec: RunSpec, declared: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """What is wrong with the run's ``train_options`` (names, types, values), as the notebook would build
    its TrainOptions; [] for a notebook without that parameter. ``declared``: the notebook's parameters."""
    declared = notebook_parameters(spec.notebook) if declared is None else declared
    if TRAIN_OPTIONS not in declared or TRAIN_OPTIONS not in spec.params:
        return []
    given = spec.params[TRAIN_OPTIONS]
    if given is None:
        return []
    if not isinstance(given, dict):
        return [f"{TRAIN_OPTIONS} must be a mapping of option name -> value, got {given!r}"]
    hints = typing.get_type_hints(TrainOptions)
    problems = []
    for name, value in given.items():
        if name not in hints:
            close = difflib.get_close_matches(str(name), list(hints), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "see t2istudy.diffusion.options.TrainOptions"
            problems.append(f"{TRAIN_OPTIONS}.{name} is not a training option ({hint})")
        elif name in declared:
            problems.append(
                f"{TRAIN_OPTIONS}.{name}: set it as the notebook parameter {name!r} instead (the notebook "
                f"passes that one to the training options itself)"
            )
        elif name in SET_BY_NOTEBOOK:
            problems.append(f"{TRAIN_OPTIONS}.{name}: the run notebook sets it itself; drop it")
        elif (problem := _type_problem(value, hints[name])) is not None:
            problems.append(f"{TRAIN_OPTIONS}.{name}: {problem}")
    if problems:
        return problems
    try:  # the values, resolved and validated as the run would (presets, choices, ranges)
        resolve_options(TrainOptions(**_option_values(spec, declared)))
    except (ValueError, TypeError) as err:
        return [f"{TRAIN_OPTIONS}: {err}"]
    return []


def _option_values(spec: RunSpec, declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The TrainOptions keyword arguments the notebook builds: its parameters that are option fields
    (defaults overridden by the grid) plus ``train_options``."""
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    values: dict[str, Any] = {}
    for name in declared.keys() & fields:
        if name in spec.params:
            values[name] = spec.params[name]
        else:
            try:
                values[name] = ast.literal_eval(declared[name]["default"])
            except (ValueError, SyntaxError):
                continue  # a default the notebook computes: the dataclass default stands in
    return {**values, **(spec.params.get(TRAIN_OPTIONS) or {})}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Numbers and flags only: a YAML value of the wrong kind ('1e-3' is a string in YAML 1.1)."""
    allowed = set(typing.get_args(hint)) or {hint}
    if value is None:
        return None if type(None) in allowed else "must not be null"
    if bool in allowed:
        return (
            None if isinstance(value, bool) else f"{value!r} is a {type(value).__name__}, expected true/false"
        )
    wants = {t for t in allowed if t in (int, float)}
    if not wants:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fix = " (YAML reads 1e-3 as a string: write 1.0e-3)" if isinstance(value, str) else ""
        return f"{value!r} is a {type(value).__name__}, expected a number{fix}"
    if wants == {int} and isinstance(value, float) and not value.is_integer():
        return f"{value!r} must be a whole number"
    return None


def check_train_options(specs: list[RunSpec], where: str) -> None:
    """Raise one ValueError naming ``where`` (the grid file) and every distinct problem with the runs it
    affects, before anything runs."""
    declared_of: dict[str, dict[str, dict[str, Any]]] = {}
    found: dict[str, list[str]] = {}
    for spec in specs:
        if spec.notebook not in declared_of:
            declared_of[spec.notebook] = notebook_parameters(spec.notebook)
        for problem in train_options_problems(spec, declared_of[spec.notebook]):
            found.setdefault(problem, []).append(spec.run_id)
    if found:
        lines = [
            f"  {problem} (run{'s' if len(ids) > 1 else ''} {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''})"
            for problem, ids in found.items()
        ]
        raise ValueError(f"{where}: training options the runs cannot start with:\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Resuming with changed parameters

_MISSING = object()


def param_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'name: recorded -> wanted' for each parameter that differs; ``train_options`` compared option by
    option; the parameters in ``NEUTRAL`` (threads, logging, progress, ...) are left out."""
    flat_recorded, flat_wanted = _flatten(recorded), _flatten(wanted)
    lines = []
    for key in sorted(flat_recorded.keys() | flat_wanted.keys()):
        if key.rpartition(".")[2] in NEUTRAL:
            continue
        old, new = flat_recorded.get(key, _MISSING), flat_wanted.get(key, _MISSING)
        if old != new:
            lines.append(f"{key}: {_show(old)} when it started, {_show(new)} in the grid now")
    return lines


def _flatten(params: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _show(value: Any) -> str:
    return "(the notebook's default)" if value is _MISSING else repr(value)


def resumable_state(out: Path) -> str | None:
    """What a new execution of the run would continue from: 'checkpoint-600 in <dir>' or 'the trained
    weights in <dir>/final'; None when it would start from scratch."""
    for folder in (out, *sorted(p for p in out.glob("*") if p.is_dir())):
        if train_folder.is_trained(folder):
            return f"the trained weights in {folder / train_folder.FINAL}"
        saved = train_folder.complete_checkpoints(folder)
        if saved:
            return f"{saved[-1].name} in {saved[-1].parent}"
    return None


def resume_conflict(spec: RunSpec, root: str | Path) -> str | None:
    """Why the run must not be resumed: it holds training state from parameters other than the grid's
    now (each difference listed, with the fix); None when it may run."""
    out = run_path(root, spec)
    if not (out / "params.json").is_file():
        return None
    try:
        record = read_json(out / "params.json")
    except CorruptFile:
        return None  # rewritten when the run starts; the trainer still compares its own options.json
    if record.get("notebook") in (None, "interactive"):  # not the runner's record (finished by hand)
        return None
    differences = param_differences(record.get("params") or {}, spec.params)
    if not differences:
        return None
    resumed = resumable_state(out)
    if resumed is None:
        return None  # nothing to resume: the run starts afresh with the grid's values
    return (
        f"run {spec.run_id}: not resumed, because it was started with other parameters than the grid asks "
        f"for now and would continue from {resumed} with the new values mixed in:\n    "
        + "\n    ".join(differences)
        + f"\n  Fix: put the values it started with back into the grid file, or start it fresh in a new "
        f"folder: move {out} aside (mv {out} {out}.old: its weights stay there) or give the grid a new 'name'."
    )
