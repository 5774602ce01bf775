"""One run's folder: what is in it, the markers that say how far it got, and writing its results.

A run is one execution of a parameterized notebook, e.g. one (encoder, strategy, seed). It lives in

    runs/<grid>/<run-id>/
        params.json     schema_version, grid, run_id, notebook, the notebook parameters, and provenance
                        (git commit and dirty flag, python/torch/diffusers/... versions, device)
        notebook.ipynb  the executed notebook (kept, error highlighted, when a cell fails)
        metrics.json    overall and per-skill scores with bootstrap CIs (written by the notebook)
        scores.csv      one row per benchmark prompt (written by the notebook; needed for paired CIs)
        logs/ samples/  heavy or noisy, git-ignored
        RUNNING         the lock of the process executing the run: pid, host, heartbeat (`run_lock`)
        .gitignore      "*" while it runs: a commit made meanwhile cannot pick up a half-written run
        FAILED          the error, when the notebook failed (the next batch retries the run)
        DONE            written last: a run is complete only when DONE exists (and, for a grid's
                        runs, a readable metrics.json; DONE beside FAILED is never complete)

Why a directory per run and a marker written last: a batch can be killed at any moment (a laptop
lid, a SLURM time limit) and started again; finished runs are never executed twice or lost, and a
half-written run is simply executed again.
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from t2istudy.staging import temporary_name
from t2istudy.study.grids import SCHEMA_VERSION
from t2istudy.study.provenance import provenance
from t2istudy.study.run_lock import read_holder

MARKERS = ("DONE", "FAILED", "RUNNING")
RUNNER_ENV = "T2ISTUDY_RUNNER"  # set while the runner executes a notebook: the runner writes DONE itself


class CorruptFile(ValueError):
    """A run file that cannot be read (a write cut short, an edit): names the file and a fix that keeps
    the run's weights. A ValueError, so that the command line prints it without a traceback."""

    def __init__(self, path: Path, reason: str, fix: str = ""):
        self.path, self.reason = Path(path), reason
        fix = fix or (
            f"Move it aside (mv {path} {path}.bad) and run the grid again: the run is executed again and "
            f"keeps its trained weights."
        )
        super().__init__(f"{path} {reason}. {fix}")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CorruptFile(path, f"is not valid JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise CorruptFile(path, f"is not text ({err})") from err
    if not isinstance(data, dict):
        raise CorruptFile(path, f"holds a {type(data).__name__}, not a JSON object")
    return data


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """A JSON-lines log (``train_log.jsonl``), tolerant of the one tear a kill can cause.

    A process killed while appending leaves a torn last line: it is dropped with a warning naming the
    file (the run resumes from its checkpoint and logs that step again). A bad line before the last one
    is not a tear but a damaged file: :class:`CorruptFile` naming the file and the line. [] when absent.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a {type(record).__name__}, not a JSON object")
        except ValueError as err:
            if number == len(lines):
                warnings.warn(
                    f"{path}: dropped its torn last line {number} ({line[:60]!r}): a write cut short by a kill",
                    stacklevel=2,
                )
                break
            raise CorruptFile(
                path,
                f"line {number} is not valid JSON ({err}) and is not the last line, so not a torn write",
                fix=(
                    f"Move the log aside (mv {path} {path}.bad): the run's checkpoints and weights are kept "
                    f"and the next `grid run` resumes it (its log restarts from the checkpoint)."
                ),
            ) from err
        records.append(record)
    return records


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so that a kill never leaves half a JSON file. The temp name is
    unique to its writer: two processes writing the same file (two `grid run`s writing grid.json) must not
    rename each other's temp file away."""
    tmp = path.with_name(temporary_name(path.name))
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


def run_state(run_dir: Path, *, metrics: bool = False) -> str:
    """done | failed | running | interrupted | pending | corrupt (see :func:`run_problem`).

    ``metrics``: the run must also have a readable metrics.json to be done (a grid's runs: the runner
    requires it), so that a run whose metrics were lost is executed again instead of counted.
    """
    if run_problem(run_dir, metrics=metrics):
        return "corrupt"
    if (run_dir / "DONE").exists():
        return "done"
    if (run_dir / "FAILED").exists():
        return "failed"
    holder = read_holder(run_dir)
    if holder is not None:
        return "interrupted" if holder.stale_reason() else "running"
    return "interrupted" if (run_dir / "params.json").exists() else "pending"


def run_problem(run_dir: Path, *, metrics: bool = False) -> str | None:
    """Why a run that looks finished cannot count as done; None when nothing is wrong.

    DONE beside FAILED (two processes finished one run, or a run finished by hand after a failure), and,
    with ``metrics``, DONE with metrics.json missing or unreadable. `grid run` executes such a run again:
    the run notebook reuses its trained weights (train/final) and only samples and scores again.
    """
    if not (run_dir / "DONE").exists():
        return None
    rerun = (
        f"Run `t2istudy grid run <grid file> --only {run_dir.name}`: it is executed again and reuses its "
        f"trained weights (only sampling and scoring run again)."
    )
    if (run_dir / "FAILED").exists():
        return f"corrupt: DONE and FAILED are both in {run_dir}, so it is not known which is true. {rerun}"
    if metrics:
        path = run_dir / "metrics.json"
        if not path.is_file():
            return f"incomplete: {path} is missing although DONE exists. {rerun}"
        try:
            read_json(path)
        except CorruptFile as err:
            return f"corrupt: {path} {err.reason}. {rerun}"
    return None


def now() -> str:
    """The time for markers and records: UTC, to the second."""
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
        write_json(
            params,
            {
                "schema_version": SCHEMA_VERSION,
                "grid": out_dir.parent.name,
                "run_id": out_dir.name,
                "notebook": "interactive",
                "params": {},
                "started": now(),
                "provenance": provenance(),
            },
        )
    (out_dir / "FAILED").unlink(missing_ok=True)  # a run is never left both DONE and FAILED
    write_json(out_dir / "DONE", {"finished": now(), "by": "notebook"})


def write_tier_results(out_dir: str | Path, tier: str, scores: pd.DataFrame, summary: pd.DataFrame) -> Path:
    """A second benchmark tier of the same run (the GenEval-style tier beside the held-out one):
    ``scores_<tier>.csv`` and ``metrics.json["tiers"][tier]`` = overall + one entry per task. Call it after
    :func:`write_results`, which writes metrics.json afresh."""
    out_dir = Path(out_dir)
    metrics_file = out_dir / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(
            f"{metrics_file} is missing: call write_results first, then write_tier_results."
        )
    table = scores.drop(columns=[c for c in ("skills", "spec", "scene") if c in scores.columns])
    table.to_csv(out_dir / f"scores_{tier}.csv", index=False)
    stats = {
        str(name): {"n": int(row["n"]), **{k: float(row[k]) for k in ("mean", "ci_low", "ci_high")}}
        for name, row in summary.iterrows()
    }
    metrics = json.loads(metrics_file.read_text())
    metrics.setdefault("tiers", {})[tier] = {"overall": stats.pop("overall"), "tasks": stats}
    write_json(metrics_file, metrics)
    return metrics_file
