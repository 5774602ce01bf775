"""Checks made before a grid's runs execute: the training options each run asks for, and whether a run
that would resume was started with the parameters the grid asks for now.

A typo inside ``train_options`` (``pool_sise``) would otherwise surface as a TypeError in the run, once
per run, after a kernel start each; a value of the wrong type (YAML reads ``1e-3`` as a string) after the
data and the cache were built. And a grid edited while its runs are half-done would silently resume a
checkpoint trained with the old values under the new ones. Both checks read a run through its `RunConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t2istudy.diffusion import train_folder
from t2istudy.diffusion.train_folder import RESULT_NEUTRAL
from t2istudy.run_store import PARAMS, CorruptFile, read_json
from t2istudy.study.grids import RunSpec, run_path
from t2istudy.study.run_config import study_config

# Parameters that do not change a run's numbers: they may differ between a run's start and its resume.
# The trainer's own list (what a resume may change), plus the run settings of that kind.
NEUTRAL = RESULT_NEUTRAL | {"keep_checkpoints"}


def option_problems(spec: RunSpec) -> list[str]:
    """What is wrong with a study run's ``train_options`` (`RunConfig.option_problems`); [] for another
    notebook's run."""
    config = study_config(spec)
    return [] if config is None else config.option_problems()


def check_train_options(specs: list[RunSpec], where: str) -> None:
    """Raise one ValueError naming ``where`` (the grid file) and every distinct problem with the runs it
    affects, before anything runs."""
    found: dict[str, list[str]] = {}
    for spec in specs:
        for problem in option_problems(spec):
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
    if not (out / PARAMS).is_file():
        return None
    try:
        record = read_json(out / PARAMS)
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
