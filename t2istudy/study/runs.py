"""Run directories, the batch grid, and its launchers (papermill locally, submitit on SLURM).

A run is one execution of a parameterized notebook, e.g. one (encoder, strategy, seed). It lives in

    runs/<grid>/<run-id>/
        params.json     schema_version, grid, run_id, notebook and the notebook parameters
        notebook.ipynb  the executed notebook (kept, error highlighted, when a cell fails)
        metrics.json    overall and per-skill scores with bootstrap CIs (written by the notebook)
        scores.csv      one row per benchmark prompt (written by the notebook; needed for paired CIs)
        logs/ samples/  heavy or noisy, git-ignored
        RUNNING         pid and host while a process executes the run
        .gitignore      "*" while it runs: a commit made meanwhile cannot pick up a half-written run
        FAILED          the error, when the notebook failed (the next batch retries the run)
        DONE            written last: a run is complete only when DONE exists

Why a directory per run and a marker written last: a batch can be killed at any moment (a laptop
lid, a SLURM time limit) and started again; finished runs are never executed twice or lost, and a
half-written run is simply executed again.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import multiprocessing
import os
import re
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from t2istudy.diffusion import train_folder

SCHEMA_VERSION = 1
GRID_KEYS = ("name", "notebook", "description", "schema_version", "params", "axes", "exclude", "include")
MARKERS = ("DONE", "FAILED", "RUNNING")
CACHE_KEYS = ("encoder", "strategy")  # runs sharing these share an embedding cache entry
RUNNER_ENV = "T2ISTUDY_RUNNER"  # set while the runner executes a notebook: the runner writes DONE itself


# ---------------------------------------------------------------------------------------------
# Grids: a YAML/JSON file -> a list of runs


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

    def runs(self) -> list[RunSpec]:
        return expand_grid(self)


def load_grid(path: str | Path) -> Grid:
    """Read a grid file (YAML or JSON), rejecting unknown keys and malformed axes with a clear error."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Grid file not found: {path}. Pass a YAML/JSON grid such as grids/quick.yaml."
        )
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
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
    for section in ("params",):
        if not isinstance(raw.get(section) or {}, dict):
            raise ValueError(f"{path}: {section!r} must be a mapping of parameter name -> value.")
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
    )
    check_parameters(grid.notebook, _all_keys(grid), where=str(path))
    return grid


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
        specs[rid] = RunSpec(grid.name, rid, grid.notebook, {**grid.params, **combo})
    return list(specs.values())


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


# ---------------------------------------------------------------------------------------------
# Notebook parameters: papermill silently injects unknown names, so check them first


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """The notebook's declared parameters (its cell tagged ``parameters``), via papermill."""
    import papermill

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
    import nbformat

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


# ---------------------------------------------------------------------------------------------
# Run directories


def run_path(root: str | Path, spec: RunSpec) -> Path:
    return Path(root) / spec.grid / spec.run_id


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); delete the run directory to run it again."
        ) from err


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so that a kill never leaves half a JSON file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def check_schema(run_dir: Path) -> None:
    """A run written by another schema version cannot be mixed with new ones: say so and how to fix it."""
    params = run_dir / "params.json"
    if not params.exists():
        return
    version = read_json(params).get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{run_dir} was written with run schema version {version}, but this t2istudy uses "
            f"{SCHEMA_VERSION}. Move that runs/ directory aside (or delete it) and run the grid again."
        )


def run_state(run_dir: Path) -> str:
    """done | failed | running | interrupted | pending."""
    if (run_dir / "DONE").exists():
        return "done"
    if (run_dir / "FAILED").exists():
        return "failed"
    marker = run_dir / "RUNNING"
    if marker.exists():
        try:
            info = read_json(marker)
        except ValueError:
            return "interrupted"
        if info.get("host") != socket.gethostname():
            return "running"  # a cluster job: its pid cannot be checked from here
        return "running" if _pid_alive(int(info.get("pid", -1))) else "interrupted"
    return "interrupted" if (run_dir / "params.json").exists() else "pending"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_results(
    out_dir: str | Path,
    scores: pd.DataFrame,
    summary: pd.DataFrame,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Called by the run notebook: per-prompt ``scores.csv`` and ``metrics.json`` (overall + per skill).

    ``summary`` is ``scoring.summarize(scores)``: rows (skills, basic, advanced, overall) with columns
    n, mean, ci_low, ci_high. ``extra`` (training time, input scale, encoder size, ...) is stored as-is.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = scores.copy()
    for col in table.columns:
        if table[col].map(lambda v: isinstance(v, (tuple, list))).any():
            table[col] = table[col].map(
                lambda v: "|".join(map(str, v)) if isinstance(v, (tuple, list)) else v
            )
    keep = [c for c in table.columns if not table[c].map(lambda v: isinstance(v, (dict, set))).any()]
    table[keep].to_csv(out_dir / "scores.csv", index=False)
    rows = summary.set_index("skill") if "skill" in summary.columns else summary
    stats = {
        str(name): {"n": int(row["n"]), **{k: float(row[k]) for k in ("mean", "ci_low", "ci_high")}}
        for name, row in rows.iterrows()
    }
    if "overall" not in stats:
        raise ValueError("summary has no 'overall' row: pass scoring.summarize(scores) as the summary.")
    groups = {k: stats.pop(k) for k in ("overall", "basic", "advanced") if k in stats}
    metrics = {"schema_version": SCHEMA_VERSION, **groups, "skills": stats, **(extra or {})}
    write_json(out_dir / "metrics.json", metrics)
    return out_dir / "metrics.json"


def at_repo_root() -> Path:
    """Notebooks opened in JupyterLab from notebooks/ run there; make relative paths (runs/, cache/,
    figures/) mean the same as under papermill, which runs from the repository root."""
    cwd = Path.cwd()
    if cwd.name == "notebooks" and (cwd.parent / "t2istudy").is_dir() and (cwd.parent / "grids").is_dir():
        os.chdir(cwd.parent)
    return Path.cwd()


def finish_run(out_dir: str | Path) -> None:
    """Last cell of a run notebook: mark the run complete when executed by hand (JupyterLab).

    Under the runner this does nothing: the runner writes DONE itself after papermill has saved the
    executed notebook, so that DONE is really the last thing written.
    """
    out_dir = Path(out_dir)
    if os.environ.get(RUNNER_ENV):
        return
    if not (out_dir / "metrics.json").exists():
        raise FileNotFoundError(f"{out_dir}/metrics.json is missing: run the scoring cells before finishing.")
    params = out_dir / "params.json"
    if not params.exists():
        write_json(params, {"schema_version": SCHEMA_VERSION, "grid": out_dir.parent.name, "run_id": out_dir.name,
                            "notebook": "interactive", "params": {}, "started": _now()})  # fmt: skip
    write_json(out_dir / "DONE", {"finished": _now(), "by": "notebook"})


# ---------------------------------------------------------------------------------------------
# Executing one run


@dataclass
class RunResult:
    run_id: str
    state: str  # done | failed | skipped
    seconds: float = 0.0
    error: str = ""
    path: str = ""


def execute_run(
    spec: RunSpec, root: str | Path = "runs", *, threads: int | None = None, require_metrics: bool = True
) -> RunResult:
    """Execute one run's notebook with papermill; never raises for a failing notebook (isolation).

    A failing cell leaves ``notebook.ipynb`` with the error highlighted and a FAILED marker with the
    message; the batch goes on. DONE is written only after the notebook finished (and, for training
    runs, wrote metrics.json). ``out_dir`` is passed when the notebook declares it.
    """
    import papermill

    out = run_path(root, spec).resolve()
    if (out / "DONE").exists():
        return RunResult(spec.run_id, "skipped", path=str(out))
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for name in ("FAILED", "DONE"):
        (out / name).unlink(missing_ok=True)
    if (out / "notebook.ipynb").exists():  # keep the previous failed attempt for reading
        os.replace(out / "notebook.ipynb", out / "notebook.previous.ipynb")
    write_json(out / "params.json", _params_record(spec))
    write_json(out / "RUNNING", {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()})
    (out / ".gitignore").write_text("# in progress: git ignores this run until it has finished\n*\n")
    os.environ[RUNNER_ENV] = "1"
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars would only clutter the executed notebook and logs
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    start = time.perf_counter()
    try:
        with (
            open(out / "logs" / "stdout.txt", "w") as stdout,
            open(out / "logs" / "stderr.txt", "w") as stderr,
        ):
            papermill.execute_notebook(
                spec.notebook,
                str(out / "notebook.ipynb"),
                parameters={  # the run directory is the default out_dir; an explicit one wins
                    **({"out_dir": str(out)} if _declares_out_dir(spec.notebook) else {}),
                    **spec.params,
                },
                progress_bar=False,
                log_output=True,
                stdout_file=stdout,
                stderr_file=stderr,
            )
        if require_metrics and not (out / "metrics.json").exists():
            raise RuntimeError(f"the notebook finished but wrote no metrics.json in {out}")
    except Exception as err:  # noqa: BLE001 - isolation: any failure is recorded, the batch goes on
        seconds = time.perf_counter() - start
        message = _error_message(err)
        write_json(out / "FAILED", {"finished": _now(), "seconds": seconds, "error": message,
                                    "traceback": traceback.format_exc(limit=5)})  # fmt: skip
        return RunResult(spec.run_id, "failed", seconds, message, str(out))
    else:
        seconds = time.perf_counter() - start
        write_json(
            out / "DONE", {"finished": _now(), "seconds": round(seconds, 1), "host": socket.gethostname()}
        )
        return RunResult(spec.run_id, "done", seconds, path=str(out))
    finally:  # also on Ctrl-C: the run is then "interrupted" and the next batch executes it again
        (out / "RUNNING").unlink(missing_ok=True)
        # A killed process never gets here and leaves the .gitignore: half-written runs stay out of git.
        (out / ".gitignore").unlink(missing_ok=True)


def execute_notebook(
    notebook: str | Path, out_dir: str | Path, params: dict[str, Any] | None = None
) -> RunResult:
    """One notebook (not a training run) into ``out_dir``, with the same checks, markers and skip rule.

    Used for the study's side notebooks (layer norms, judge validation, probe) and the analysis.
    """
    params = dict(params or {})
    check_parameters(notebook, params, need_out_dir=False)
    out = Path(out_dir)
    spec = RunSpec(out.parent.name, out.name, str(Path(notebook).resolve()), params)
    check_schema(out)
    return execute_run(spec, out.parent.parent, require_metrics=False)


def _declares_out_dir(notebook: str | Path) -> bool:
    return "out_dir" in notebook_parameters(notebook)


def _params_record(spec: RunSpec) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "grid": spec.grid,
        "run_id": spec.run_id,
        "notebook": _relative(spec.notebook),
        "params": spec.params,
        "started": _now(),
        "host": socket.gethostname(),
    }


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path


def _error_message(err: Exception) -> str:
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".strip()
    return f"{type(err).__name__}: {err}".strip()


# ---------------------------------------------------------------------------------------------
# Batches: skip what is done, isolate failures, optional parallel workers or SLURM via submitit


def preflight(specs: list[RunSpec]) -> None:
    """Validate strategy and preset strings with their one parser before any run starts, so that a
    typo fails in a second, not after a kernel start per run (encoders are checked by the run itself:
    their weights may exist only on the compute nodes)."""
    from t2istudy.diffusion.model import get_preset
    from t2istudy.text.aggregation import parse_strategy

    checks = {"strategy": parse_strategy, "preset": get_preset}
    for spec in specs:
        for key, check in checks.items():
            if key in spec.params:
                try:
                    check(spec.params[key])
                except ValueError as err:
                    raise ValueError(f"run {spec.run_id}: {err}") from err


def plan(specs: list[RunSpec], root: str | Path = "runs") -> dict[str, list[RunSpec]]:
    """Split runs by state, checking schema and that finished runs match today's parameters."""
    by_state: dict[str, list[RunSpec]] = {}
    for spec in specs:
        out = run_path(root, spec)
        check_schema(out)
        state = run_state(out)
        if state == "done":
            recorded = read_json(out / "params.json").get("params", {})
            if recorded != spec.params:
                diff = sorted(
                    k for k in set(recorded) | set(spec.params) if recorded.get(k) != spec.params.get(k)
                )
                raise ValueError(
                    f"{out} is complete but was run with different values for {diff} than the grid asks "
                    f"now. Give the grid a new 'name' (a new runs/ folder), or delete that run to redo it."
                )
        by_state.setdefault(state, []).append(spec)
    return by_state


def run_grid(
    grid: Grid | str | Path,
    root: str | Path = "runs",
    *,
    workers: int = 1,
    launcher: str = "local",
    cluster: str | None = None,
    slurm: dict[str, Any] | None = None,
    only: list[str] | None = None,
    rerun_running: bool = False,
    prepare: bool = True,
    log=print,
) -> list[RunResult]:
    """Execute every run of a grid that is not complete; returns one result per run (skipped included).

    ``launcher="local"`` runs ``workers`` notebooks at a time on this machine (each worker gets
    cpu_count // workers threads). ``launcher="slurm"`` submits one submitit job per run; ``cluster``
    picks submitit's backend ("slurm", or "local" to try the same path on one machine) and ``slurm``
    holds executor parameters (timeout_min, gpus_per_node, cpus_per_task, mem_gb, slurm_partition...).
    Runs marked RUNNING by a live process here, or by any process on another host (a cluster job killed
    at its time limit leaves the marker), are skipped unless ``rerun_running``. With ``prepare`` (local
    launcher) the runs' missing embedding caches are first built with one encoder pass per encoder
    (`t2istudy.study.prepare`); on a cluster, run `t2istudy grid prepare` as a job of its own first.
    """
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    specs = select_runs(expand_grid(grid), only)
    for spec in specs:
        check_parameters(spec.notebook, spec.params, where=f"run {spec.run_id}")
    preflight(specs)
    groups = plan(specs, root)
    grid_dir = Path(root) / grid.name
    grid_dir.mkdir(parents=True, exist_ok=True)
    write_json(grid_dir / "grid.json", {"schema_version": SCHEMA_VERSION, **grid.__dict__})
    results = [RunResult(s.run_id, "skipped", path=str(run_path(root, s))) for s in groups.get("done", [])]
    busy = [] if rerun_running else groups.get("running", [])
    results += [RunResult(s.run_id, "skipped", error="running elsewhere (--rerun-running)") for s in busy]
    states = ("pending", "failed", "interrupted") + (("running",) if rerun_running else ())
    todo = [s for s in specs if any(s in groups.get(state, []) for state in states)]
    log(f"[grid {grid.name}] {len(specs)} runs: {len(specs) - len(todo) - len(busy)} done, "
        f"{len(busy)} running elsewhere, {len(todo)} to run ({launcher}, workers={workers})")  # fmt: skip
    if not todo:
        return results
    if launcher not in ("local", "slurm"):
        raise ValueError(f"Unknown launcher {launcher!r}: use 'local' or 'slurm'.")
    start = time.perf_counter()
    prepared = False  # True: every cache entry the runs need exists now
    if prepare and launcher == "local":
        from t2istudy.study.prepare import prepare_grid

        try:
            prepare_grid(grid, root, only=[s.run_id for s in todo], log=log)
            prepared = True
        except Exception as err:  # noqa: BLE001 - each run then builds its own entry, or fails on its own
            log(
                f"[grid {grid.name}] preparing the caches failed ({_error_message(err)}); each run builds its own"
            )
    waves = cache_waves(todo) if launcher == "slurm" or workers > 1 else [todo]
    if len(waves) > 1:  # some runs share a cache entry: wait only where that entry is still missing
        waves = cache_waves(todo, set() if prepared else _awaiting_build(todo, log))
    for wave in waves:
        if launcher == "local":
            results += _run_local(wave, root, workers, log, start)
        else:
            results += _run_submitit(wave, root, grid_dir, cluster or "slurm", slurm or {}, log, start)
    failed = [r for r in results if r.state == "failed"]
    log(f"[grid {grid.name}] finished in {time.perf_counter() - start:.0f} s: "
        f"{sum(r.state == 'done' for r in results)} new, {len(failed)} failed"
        + "".join(f"\n  FAILED {r.run_id}: {r.error} (see {r.path}/notebook.ipynb)" for r in failed))  # fmt: skip
    return results


def select_runs(specs: list[RunSpec], only: list[str] | None) -> list[RunSpec]:
    """The runs ``--only`` names, in the order named (the user's priority); a repeated id once."""
    if not only:
        return specs
    unknown = sorted(set(only) - {s.run_id for s in specs})
    if unknown:
        raise ValueError(f"--only names unknown run ids {unknown}; see `t2istudy grid status`.")
    by_id = {s.run_id: s for s in specs}
    return [by_id[run_id] for run_id in dict.fromkeys(only)]


def cache_waves(
    todo: list[RunSpec], building: set[str] | None = None, keys: tuple[str, ...] = CACHE_KEYS
) -> list[list[RunSpec]]:
    """Waves for parallel execution, so that two processes never build the same cache entry at once.

    Runs whose entries exist (not in ``building``) all go in the first wave, side by side; of the runs
    that would build an entry, one per entry (encoder, strategy) goes with them and the rest wait for
    the second wave. ``building=None`` (nothing could be looked up) treats every run as building."""
    builder: dict[tuple, RunSpec] = {}  # the one run per entry that builds it
    wait = []
    for spec in todo:
        if building is None or spec.run_id in building:
            key = tuple(str(spec.params.get(k)) for k in keys)
            if builder.setdefault(key, spec) is not spec:
                wait.append(spec)
    return [w for w in ([s for s in todo if s not in wait], wait) if w]


def _awaiting_build(todo: list[RunSpec], log) -> set[str] | None:
    """The runs that would build a cache entry themselves; None if the caches cannot be looked up here
    (a cluster's login node without the cache, say): then every run is treated as building."""
    from t2istudy.study.prepare import runs_awaiting_build

    try:
        return runs_awaiting_build(todo)
    except Exception as err:  # noqa: BLE001 - waves are a precaution; the runs themselves report errors
        log(f"[grid] could not look up the runs' cache entries ({_error_message(err)}); running in waves")
        return None


def _report(log, i: int, n: int, result: RunResult, start: float) -> None:
    extra = f"  {result.error}" if result.error else ""
    log(f"[{i}/{n}] {result.state:7s} {result.run_id} ({result.seconds:.0f} s; "
        f"batch {time.perf_counter() - start:.0f} s){extra}")  # fmt: skip


def _run_local(todo: list[RunSpec], root, workers: int, log, start: float) -> list[RunResult]:
    results = []
    if workers <= 1:
        for i, spec in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] running {spec.run_id} ...")
            results.append(execute_run(spec, root))
            _report(log, i, len(todo), results[-1], start)
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # fresh processes: no forked torch/OpenMP state
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(execute_run, spec, root, threads=threads): spec for spec in todo}
        for i, future in enumerate(cf.as_completed(futures), 1):
            spec = futures[future]
            try:
                results.append(future.result())
            except Exception as err:  # noqa: BLE001 - a crashed worker is one failed run
                results.append(RunResult(spec.run_id, "failed", error=_error_message(err)))
            _report(log, i, len(todo), results[-1], start)
    return results


def _run_submitit(
    todo, root, grid_dir: Path, cluster: str, options: dict, log, start: float
) -> list[RunResult]:
    import submitit

    executor = submitit.AutoExecutor(folder=grid_dir / ".submitit" / "%j", cluster=cluster)
    executor.update_parameters(name=f"t2istudy-{grid_dir.name}", **options)
    root = str(Path(root).resolve())
    jobs = executor.map_array(execute_run, todo, [root] * len(todo))
    log(f"submitted {len(jobs)} {cluster} jobs: {', '.join(str(j.job_id) for j in jobs[:5])}"
        + (" ..." if len(jobs) > 5 else ""))  # fmt: skip
    results = []
    for i, (job, spec) in enumerate(zip(jobs, todo, strict=True), 1):
        try:
            results.append(job.result())
        except Exception as err:  # noqa: BLE001 - the job died (time limit, node failure): record it
            results.append(RunResult(spec.run_id, "failed", error=_error_message(err)))
        _report(log, i, len(todo), results[-1], start)
    return results


# ---------------------------------------------------------------------------------------------
# Reading runs back: status, metrics and per-prompt scores


def grid_status(grid: Grid | str | Path, root: str | Path = "runs") -> pd.DataFrame:
    """One row per run of the grid: state, overall score with CI, seconds, error."""
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    rows = []
    for spec in expand_grid(grid):
        out = run_path(root, spec)
        check_schema(out)
        rows.append(_status_row(out, spec.run_id))
    columns = ["run_id", "state", "overall", "ci_low", "ci_high", "seconds", "progress", "error"]
    return pd.DataFrame(rows, columns=columns)


def training_progress(out: Path) -> str | None:
    """'step 650/800, last checkpoint-600' for an unfinished training run; None when none has started.

    Looks in the run directory and its subfolders (``<run>/train`` for the study notebook) for the folder
    that ``t2istudy.diffusion.train`` writes, so that ``grid status`` shows what a killed or failed run has kept:
    the next ``grid run`` resumes it from that checkpoint.
    """
    for folder in (out, *sorted(p for p in out.glob("*") if p.is_dir())):
        if train_folder.is_training_folder(folder):
            return train_folder.training_progress(folder)
    return None


def _status_row(out: Path, run_id: str) -> dict[str, Any]:
    state = run_state(out)
    row: dict[str, Any] = {"run_id": run_id, "state": state}
    if state in ("failed", "running", "interrupted"):
        row["progress"] = training_progress(out)
    if state == "done":
        overall = (
            read_json(out / "metrics.json").get("overall", {}) if (out / "metrics.json").exists() else {}
        )
        row.update(overall=overall.get("mean"), ci_low=overall.get("ci_low"), ci_high=overall.get("ci_high"))
        row["seconds"] = read_json(out / "DONE").get("seconds")
    elif state == "failed":
        info = read_json(out / "FAILED")
        row.update(seconds=info.get("seconds"), error=info.get("error", "")[:200])
    return row


def find_runs(root: str | Path, grid: str | None = None, done_only: bool = True) -> list[Path]:
    """Run directories under ``root`` (optionally one grid's), complete ones only by default."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"No runs directory at {root}: run a grid first (t2istudy grid run ...).")
    pattern = f"{grid}/*/params.json" if grid else "*/*/params.json"
    dirs = sorted(p.parent for p in root.glob(pattern))
    for d in dirs:
        check_schema(d)
    return [d for d in dirs if not done_only or (d / "DONE").exists()]


METRICS = {
    "score": "the scorer's verdict per prompt (judge: 1 if every constraint holds; VQAScore: P(yes))",
    "fraction": "share of the prompt's constraints that hold (judge only: partial credit)",
    "above_floor": "fraction minus the shuffled-prompt floor: the partial credit earned by following this "
    "prompt rather than by chance (judge only; secondary)",
}


def load_metrics(root: str | Path, grid: str | None = None, metric: str = "score") -> pd.DataFrame:
    """Long table of complete runs: one row per (run, skill-or-group) with its parameters and stats.

    Columns: grid, run_id, every notebook parameter (encoder, strategy, seed, ...), skill
    (a skill name or basic / advanced / overall), n, mean, ci_low, ci_high, plus scalar extras.
    ``metric="fraction"`` recomputes the stats from each run's scores.csv (the judge's partial credit),
    for when the all-or-nothing score sits at the floor.
    """
    from t2istudy.scoring.scorers import summarize  # scoring imports the judge; keep runs light to import

    _check_metric(metric)
    rows = []
    for out in find_runs(root, grid):
        if not (out / "metrics.json").exists():  # a side notebook's directory (layer norms, probe, ...)
            continue
        record, metrics = read_json(out / "params.json"), read_json(out / "metrics.json")
        base = {"grid": record["grid"], "run_id": record["run_id"], **record.get("params", {})}
        extras = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float, str, bool)) and k != "schema_version"
        }
        if metric == "score":
            stats = {k: metrics[k] for k in ("overall", "basic", "advanced") if k in metrics}
            stats.update(metrics.get("skills", {}))
        else:
            table = _read_scores(out, metric)
            table["skills"] = [tuple(str(t).split("|")) for t in table["skills"]]  # as scores.csv joins them
            stats = summarize(table, column=metric).to_dict(orient="index")
        for skill, values in stats.items():
            rows.append({**base, **extras, "skill": skill, **values})
    return pd.DataFrame(rows)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; use one of {sorted(METRICS)}.")


def _read_scores(out: Path, metric: str) -> pd.DataFrame:
    table = pd.read_csv(out / "scores.csv", dtype={"id": str})
    if metric == "above_floor":
        if "fraction_shuffled" not in table.columns:
            raise ValueError(
                f"{out / 'scores.csv'} has no shuffled-prompt control (fraction_shuffled): add it from the run's "
                f"samples with `t2istudy grid rescore <grid file>`, or use metric='fraction'."
            )
        table["above_floor"] = table["fraction"] - table["fraction_shuffled"]
    if metric not in table.columns:
        raise ValueError(
            f"{out / 'scores.csv'} has no {metric!r} column (VQAScore runs have only 'score'); "
            f"use metric='score' for this grid."
        )
    return table


def load_scores(root: str | Path, grid: str | None = None, metric: str = "score") -> pd.DataFrame:
    """Per-prompt scores of complete runs, with each run's parameters as columns (for paired CIs).

    With ``metric="fraction"`` the ``score`` column holds the judge's share of constraints held (the
    verdict is kept as ``verdict``), so every analysis function works on it unchanged. Where the judge
    wrote its shuffled-prompt control, ``shuffled`` holds the same metric on the stand-in image.
    """
    _check_metric(metric)
    frames = []
    for out in find_runs(root, grid):
        if not (out / "scores.csv").exists():
            continue
        record = read_json(out / "params.json")
        table = _read_scores(out, metric)
        if f"{metric}_shuffled" in table.columns:  # the judge's shuffled-prompt control (the floor)
            table["shuffled"] = table[f"{metric}_shuffled"]
        if metric != "score":
            table = table.rename(columns={"score": "verdict"}).assign(score=table[metric])
        for key, value in {
            "grid": record["grid"],
            "run_id": record["run_id"],
            **record.get("params", {}),
        }.items():
            table[key] = value
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["grid", "run_id", "id", "score"])
    return pd.concat(frames, ignore_index=True)
