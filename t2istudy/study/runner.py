"""Executing a grid's runs: papermill per run (skip what is done, isolate failures), local workers or SLURM.

A batch can be killed at any moment and started again: finished runs are skipped, a half-written run is
executed again, and runs sharing an embedding-cache entry never build it twice at once (`cache_waves`).
Before the first kernel starts, every run's `RunConfig` is checked (`preflight`: strategy, preset, tier
sizes, training options, each with its one parser) and the grid's missing cache entries are built
(`prepare.prepare_grid`). Two runners (or SLURM jobs) on one grid never execute the same run: each claims a
run's lock right before executing it (`run_store.claim`) and skips a run another live process holds. DONE
is written here, last, after papermill has saved the executed notebook.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
import submitit

from t2istudy import run_store, staging
from t2istudy.run_store import markers, now, read_json, run_state, write_json
from t2istudy.study.grid_checks import check_train_options, param_differences, resume_conflict
from t2istudy.study.grids import (
    SCHEMA_VERSION,
    Grid,
    RunSpec,
    check_parameters,
    expand_grid,
    load_grid,
    notebook_parameters,
    run_path,
    select_runs,
)
from t2istudy.study.prepare import prepare_grid, runs_awaiting_build
from t2istudy.study.run_config import study_config
from t2istudy.study.run_folder import check_schema, params_record, relative
from t2istudy.text.aggregation import selected_states
from t2istudy.text.registry import encoder_num_states

CACHE_KEYS = ("encoder", "strategy")  # runs sharing these share an embedding cache entry


@dataclass
class RunResult:
    run_id: str
    state: str  # done | failed | skipped
    seconds: float = 0.0
    error: str = ""
    path: str = ""
    note: str = ""  # e.g. a stale lock taken over


def execute_run(
    spec: RunSpec,
    root: str | Path = "runs",
    *,
    threads: int | None = None,
    require_metrics: bool = True,
    force: bool = False,
    expect: dict[str, int] | None = None,
    claimed: run_store.Claim | None = None,
) -> RunResult:
    """Execute one run's notebook with papermill; never raises for a failing notebook (isolation).

    The run is claimed first (its RUNNING lock) and checked again under the lock: a run another live
    process holds, one that got DONE meanwhile, or (``expect``: its markers when the batch was planned)
    one another runner finished or failed since, is skipped; one holding training state from other
    parameters than ``spec``'s is refused (`grid_checks.resume_conflict`). ``force``: take over a lock
    held on another host (a job that died). A failing cell leaves ``notebook.ipynb`` with the error
    highlighted and a FAILED marker with the message; the batch goes on. DONE is written only after the
    notebook finished (and, for training runs, wrote metrics.json), and never beside FAILED.
    ``out_dir`` is passed when the notebook declares it. ``claimed``: the lock a caller took already (the
    launcher's job, from its training phase on); it is released here like one taken here.
    """
    out = run_path(root, spec).resolve()
    if run_state(out, metrics=require_metrics) == "done":
        return RunResult(spec.run_id, "skipped", path=str(out))
    out.mkdir(parents=True, exist_ok=True)
    claimed = claimed or run_store.claim(out, force=force)
    if claimed.lock is None:
        holder = claimed.holder.describe() if claimed.holder else "another process"
        return RunResult(
            spec.run_id, "skipped", error=f"running elsewhere ({holder}); not run here", path=str(out)
        )
    lock = claimed.lock
    try:
        state = run_state(out, metrics=require_metrics)
        if state == "done" or (expect is not None and markers(out) != expect):
            why = f"{state} meanwhile in another runner; not run again here"
            return RunResult(spec.run_id, "skipped", error=why, path=str(out))
        conflict = resume_conflict(spec, root)
        if conflict:
            return RunResult(spec.run_id, "failed", error=conflict, path=str(out))
        try:
            result = _execute(spec, out, lock, threads, require_metrics)
        except OSError as err:  # the run folder became unwritable mid-run: this run fails, the batch goes on
            return RunResult(spec.run_id, "failed", error=_unwritable(out, err), path=str(out))
        result.note = claimed.note
        return result
    finally:
        with contextlib.suppress(OSError):  # unwritable: the lock is left to go stale (its pid ends)
            lock.release()


def _unwritable(out: Path, err: OSError) -> str:
    """One line for a run whose folder could not be written (read-only, full, removed), naming what the
    notebook failed on first when the folder was not the first thing to fail."""
    first: BaseException = err
    while first.__context__ is not None:
        first = first.__context__
    cause = "" if first is err else f"; the run had failed first with {_error_message(first)}"
    return (
        f"the run folder {out} could not be written ({err.strerror or err}: {err.filename or out}), so no "
        f"FAILED marker is there{cause}. Make it writable and run the grid again (training resumes from its "
        "last checkpoint)."
    )


def _execute(
    spec: RunSpec, out: Path, lock: run_store.RunLock, threads: int | None, require_metrics: bool
) -> RunResult:
    """The claimed run's execution; the end marker is written only while this process holds the lock."""
    (out / "logs").mkdir(exist_ok=True)
    for name in ("FAILED", "DONE"):
        (out / name).unlink(missing_ok=True)
    if (out / "notebook.ipynb").exists():  # keep the previous failed attempt for reading
        os.replace(out / "notebook.ipynb", out / "notebook.previous.ipynb")
    write_json(out / run_store.PARAMS, params_record(spec))
    (out / ".gitignore").write_text("# in progress: git ignores this run until it has finished\n*\n")
    os.environ.setdefault("TQDM_DISABLE", "1")  # bars would only clutter the executed notebook and logs
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
    start = time.perf_counter()
    lost = "the lock was taken over meanwhile (--rerun-running elsewhere): its end marker is that runner's"
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
        if not lock.held():
            return RunResult(spec.run_id, "failed", seconds, f"{message}; {lost}", str(out))
        record = {"seconds": seconds, "error": message, "traceback": traceback.format_exc(limit=5)}
        _end_marker(out, "FAILED", record)
        return RunResult(spec.run_id, "failed", seconds, message, str(out))
    else:
        seconds = time.perf_counter() - start
        if not lock.held():
            return RunResult(spec.run_id, "skipped", seconds, lost, str(out))
        record = {"seconds": round(seconds, 1), "host": socket.gethostname(), "metrics": require_metrics}
        _end_marker(out, "DONE", record)
        return RunResult(spec.run_id, "done", seconds, path=str(out))
    finally:  # also on Ctrl-C: the run is then "interrupted" and the next batch executes it again
        # A killed process never gets here and leaves the .gitignore: half-written runs stay out of git.
        if lock.held():
            (out / ".gitignore").unlink(missing_ok=True)


def _end_marker(out: Path, name: str, record: dict[str, Any]) -> None:
    """DONE or FAILED, with when it finished; the other marker removed first (never both)."""
    (out / ("FAILED" if name == "DONE" else "DONE")).unlink(missing_ok=True)
    write_json(out / name, {"finished": now(), **record})


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


def _error_message(err: Exception) -> str:
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".strip()
    return f"{type(err).__name__}: {err}".strip()


def preflight(specs: list[RunSpec], where: str = "") -> None:
    """Check every study run's `RunConfig` (strategy and preset with their one parser, tier sizes, upsampling,
    training options) before any run starts, so that a typo fails in a second, not after a kernel start per
    run (encoders are checked by the run itself: their weights may exist only on the compute nodes).
    ``where``: the grid file, named in the error. Checks a grid must pass before it runs belong here."""
    for spec in specs:
        config = study_config(spec)
        if config is None:
            continue
        try:
            config.check()
        except ValueError as err:
            raise ValueError(f"{where + ': ' if where else ''}run {spec.run_id}: {err}") from err
    check_train_options(specs, where or (specs[0].grid if specs else "grid"))


def check_encoders(specs: list[RunSpec], where: str = "") -> None:
    """``--dry-run``'s look at this machine: each study run's encoder resolves (a registry name with its
    weights here, a local folder or .gguf file) and its strategy's layer indices exist in that encoder (its
    hidden states, read from its config; no weights load). Every bad run is named, with its arm; a real run
    does not ask (the weights may exist only on the compute nodes, and the run checks them itself)."""
    states: dict[str, int | Exception] = {}
    problems = []
    for spec in specs:
        config = study_config(spec)
        if config is None:
            continue
        if config.encoder not in states:
            try:
                states[config.encoder] = encoder_num_states(config.encoder)
            except (ValueError, OSError) as err:  # unknown name, missing weights, unreadable config
                states[config.encoder] = err
        found = states[config.encoder]
        try:
            if isinstance(found, Exception):
                raise found
            selected_states(config.strategy, found)
        except (ValueError, OSError) as err:
            problems.append(
                f"run {spec.run_id} (encoder {config.encoder}, strategy {config.strategy}): {err}"
            )
    if problems:
        raise ValueError(f"{where + ': ' if where else ''}" + "\n".join(problems))


def plan(specs: list[RunSpec], root: str | Path = "runs") -> dict[str, list[RunSpec]]:
    """Split runs by state (a grid's runs: DONE needs a readable metrics.json), checking schema, that
    finished runs match today's parameters, and that runs to resume do (``refused`` otherwise)."""
    by_state: dict[str, list[RunSpec]] = {}
    for spec in specs:
        out = run_path(root, spec)
        check_schema(out)
        state = run_state(out, metrics=True)
        if state == "done":
            recorded = read_json(out / run_store.PARAMS).get("params", {})
            differences = param_differences(recorded, spec.params)
            if differences:
                diff = sorted({line.partition(":")[0].partition(".")[0] for line in differences})
                raise ValueError(
                    f"{out} is complete but was run with different values for {diff} than the grid asks "
                    f"now ({'; '.join(differences)}). Give the grid a new 'name' (a new runs/ folder), or "
                    f"move that run aside (mv {out} {out}.old) to redo it."
                )
        elif state in ("failed", "interrupted", "corrupt") and resume_conflict(spec, root):
            state = "refused"
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
    job: Callable[..., RunResult] | None = None,
    log=print,
) -> list[RunResult]:
    """Execute every run of a grid that is not complete; returns one result per run (skipped included).

    ``job``: what each SLURM job runs, ``job(spec, root, expect, force)`` (default: the run's notebook in one
    process; `t2istudy.study.launch.job_function` trains under accelerate on every GPU first).

    ``launcher="local"`` runs ``workers`` notebooks at a time on this machine (each worker gets
    cpu_count // workers threads). ``launcher="slurm"`` submits one submitit job per run; ``cluster``
    picks submitit's backend ("slurm", or "local" to try the same path on one machine) and ``slurm``
    holds executor parameters (timeout_min, gpus_per_node, cpus_per_task, mem_gb, slurm_partition...).
    Runs locked by a live process (RUNNING with a heartbeat) are skipped; ``rerun_running`` takes over
    those held on another host (a cluster job that died: its lock also goes stale by itself once its
    heartbeat stops, `run_store.STALE_SECONDS`). A run holding training state from other parameters than
    the grid's now is refused (a failed result naming each difference). With ``prepare`` (local
    launcher) the runs' missing embedding caches are first built with one encoder pass per encoder
    (`t2istudy.study.prepare`); on a cluster, run `t2istudy grid prepare` as a job of its own first.
    """
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    specs = select_runs(expand_grid(grid), only)
    for spec in specs:
        check_parameters(spec.notebook, spec.params, where=f"run {spec.run_id}")
    preflight(specs, grid.source)
    groups = plan(specs, root)
    grid_dir = Path(root) / grid.name
    results = [RunResult(s.run_id, "skipped", path=str(run_path(root, s))) for s in groups.get("done", [])]
    busy = [] if rerun_running else groups.get("running", [])
    results += [RunResult(s.run_id, "skipped", error="running elsewhere (--rerun-running)") for s in busy]
    refused = groups.get("refused", [])
    results += [RunResult(s.run_id, "failed", error=resume_conflict(s, root) or "") for s in refused]
    states = ("pending", "failed", "interrupted", "corrupt") + (("running",) if rerun_running else ())
    todo = [s for s in specs if any(s in groups.get(state, []) for state in states)]
    log(
        f"[grid {grid.name}] {len(specs)} runs: {len(groups.get('done', []))} done, "
        f"{len(busy)} running elsewhere, {len(refused)} refused, {len(todo)} to run ({launcher}, workers={workers})"
        + "".join(f"\n  REFUSED {r.error}" for r in results if r.state == "failed")
    )
    if not todo:
        if not refused:
            log(f"[grid {grid.name}] nothing to run: every run is complete or running elsewhere")
        return results
    if launcher not in ("local", "slurm"):
        raise ValueError(f"Unknown launcher {launcher!r}: use 'local' or 'slurm'.")
    staging.check_writable(
        grid_dir,
        "The runs folder",
        f"{len(todo)} run(s) need to run. Make it writable (chmod -R u+w {grid_dir}), or pass --runs-dir with a "
        "writable folder (copy the finished runs there first, so that they are skipped).",
    )
    grid_record = {k: v for k, v in grid.__dict__.items() if k != "source"}
    grid_record["notebook"] = relative(grid.notebook)  # as params.json has it: no machine's path
    write_json(grid_dir / "grid.json", {"schema_version": SCHEMA_VERSION, **grid_record})
    expect = {s.run_id: markers(run_path(root, s).resolve()) for s in todo}
    start = time.perf_counter()
    prepared = False  # True: every cache entry the runs need exists now
    if prepare and launcher == "local":
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
            results += _run_local(wave, root, workers, log, start, expect, rerun_running)
        else:
            results += _run_submitit(
                wave, root, grid_dir, cluster or "slurm", slurm or {}, log, start, expect, rerun_running, job
            )
    failed = [r for r in results if r.state == "failed"]
    log(
        f"[grid {grid.name}] finished in {time.perf_counter() - start:.0f} s: "
        f"{sum(r.state == 'done' for r in results)} new, {len(failed)} failed"
        + "".join(f"\n  FAILED {r.run_id}: {r.error}" + _see(r) for r in failed)
    )
    return results


def _see(result: RunResult) -> str:
    notebook = Path(result.path) / "notebook.ipynb" if result.path else None
    return f" (see {notebook})" if notebook and notebook.exists() else ""


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
    try:
        return runs_awaiting_build(todo)
    except Exception as err:  # noqa: BLE001 - waves are a precaution; the runs themselves report errors
        log(f"[grid] could not look up the runs' cache entries ({_error_message(err)}); running in waves")
        return None


def _report(log, i: int, n: int, result: RunResult, start: float) -> None:
    extra = f"  {result.error}" if result.error else ""
    note = f"  ({result.note})" if result.note else ""
    log(
        f"[{i}/{n}] {result.state:7s} {result.run_id} ({result.seconds:.0f} s; "
        f"batch {time.perf_counter() - start:.0f} s){extra}{note}"
    )


def _execute_planned(spec: RunSpec, root: str, expect: dict[str, int], force: bool) -> RunResult:
    """execute_run with the markers seen when planning (positional, for submitit's map_array)."""
    return execute_run(spec, root, expect=expect, force=force)


def _run_local(
    todo: list[RunSpec], root, workers: int, log, start: float, expect: dict, force: bool = False
) -> list[RunResult]:
    results = []
    if workers <= 1:
        for i, spec in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] running {spec.run_id} ...")
            results.append(execute_run(spec, root, expect=expect.get(spec.run_id), force=force))
            _report(log, i, len(todo), results[-1], start)
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # fresh processes: no forked torch/OpenMP state
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {
            pool.submit(
                execute_run, spec, root, threads=threads, expect=expect.get(spec.run_id), force=force
            ): spec
            for spec in todo
        }
        for i, future in enumerate(cf.as_completed(futures), 1):
            spec = futures[future]
            try:
                results.append(future.result())
            except Exception as err:  # noqa: BLE001 - a crashed worker is one failed run
                results.append(RunResult(spec.run_id, "failed", error=_error_message(err)))
            _report(log, i, len(todo), results[-1], start)
    return results


def _run_submitit(
    todo,
    root,
    grid_dir: Path,
    cluster: str,
    options: dict,
    log,
    start: float,
    expect: dict,
    force: bool,
    job: Callable[..., RunResult] | None = None,
) -> list[RunResult]:
    executor = submitit.AutoExecutor(folder=grid_dir / ".submitit" / "%j", cluster=cluster)
    executor.update_parameters(name=f"t2istudy-{grid_dir.name}", **options)
    root = str(Path(root).resolve())
    n = len(todo)
    jobs = executor.map_array(
        job or _execute_planned, todo, [root] * n, [expect.get(s.run_id) for s in todo], [force] * n
    )
    log(
        f"submitted {len(jobs)} {cluster} jobs: {', '.join(str(j.job_id) for j in jobs[:5])}"
        + (" ..." if len(jobs) > 5 else "")
    )
    results = []
    for i, (submitted, spec) in enumerate(zip(jobs, todo, strict=True), 1):
        try:
            results.append(submitted.result())
        except Exception as err:  # noqa: BLE001 - the job died (time limit, node failure): record it
            results.append(RunResult(spec.run_id, "failed", error=_error_message(err)))
        _report(log, i, len(todo), results[-1], start)
    return results
