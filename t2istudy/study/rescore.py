"""Add the judge's shuffled-prompt control to runs that finished before it existed.

Why: ``scores.csv`` of a run scored by an older judge lacks ``score_shuffled`` / ``fraction_shuffled``
(see :class:`t2istudy.scoring.scorers.JudgeScorer`). Sampling is the expensive part of a run and its images
are kept in ``samples/``, so the control is computed from them without retraining or resampling. The
stored verdicts are recomputed first and must match exactly: if the judge changed since the run, the
run's scores are left as they are and the error says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from t2istudy.run_store import PARAMS, read_json, write_text
from t2istudy.scoring.scorers import JudgeScorer
from t2istudy.study.run_config import RunConfig
from t2istudy.study.run_results import find_runs
from t2istudy.study.tiers import TIERS

CONTROL_COLUMNS = ("score_shuffled", "fraction_shuffled")


def add_shuffled_control(run_dir: str | Path, force: bool = False) -> str:
    """Write the control columns into one run's scores.csv; returns what was done (for the log)."""
    run_dir = Path(run_dir)
    scores_path = run_dir / "scores.csv"
    stored = pd.read_csv(scores_path, dtype={"id": str})
    if set(CONTROL_COLUMNS) <= set(stored.columns) and not force:
        return "has the control already"
    config = RunConfig.from_params(read_json(run_dir / PARAMS).get("params", {}), known_only=True)
    if config.benchmark != "shapes" or config.scorer != "judge":
        return f"skipped: the control needs the shapes benchmark and the judge, not {config.scorer}"
    bench = config.tier_prompts(TIERS["heldout"])
    files = [run_dir / "samples" / f"{i:04d}-s{config.sample_seed}.png" for i in range(len(bench))]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: {len(missing)} of {len(files)} samples are missing (e.g. {missing[0].name}). Samples are "
            f"git-ignored: add the control on the machine that ran the run, or rerun the run."
        )
    if stored["id"].tolist() != bench["id"].tolist():
        raise ValueError(f"{scores_path} does not list the benchmark's prompts in order; it was not changed.")
    fresh = JudgeScorer().score(files, bench)
    for column in ("score", "fraction"):
        if not np.array_equal(fresh[column].to_numpy(float), stored[column].to_numpy(float)):
            raise ValueError(
                f"{run_dir}: the judge's {column} now differs from the stored one on "
                f"{int((fresh[column] != stored[column]).sum())} prompts (the judge changed since the run); "
                f"scores.csv was not changed. Rerun the run to score it with the current judge."
            )
    for column in CONTROL_COLUMNS:
        stored[column] = fresh[column].to_numpy()
    write_text(scores_path, stored.to_csv(index=False))
    means = stored[["fraction", "fraction_shuffled"]].mean()
    return f"added: fraction {means['fraction']:.3f}, shuffled {means['fraction_shuffled']:.3f}"


def apply_to_runs(
    root: str | Path, grid: str, action: Callable[[Path], str], only: list[str] | None = None, log=print
) -> int:
    """``action`` on every complete run of a grid (or those named in ``only``), logging what it did; a run it
    refuses (FileNotFoundError, ValueError) is reported and left alone, not fatal. Returns the refusals."""
    failed = 0
    for run_dir in find_runs(root, grid):
        if only and run_dir.name not in only:
            continue
        try:
            log(f"{run_dir.name}: {action(run_dir)}")
        except (FileNotFoundError, ValueError) as err:
            failed += 1
            log(f"{run_dir.name}: not changed: {err}")
    return failed


def add_shuffled_controls(root: str | Path, grid: str, force: bool = False, log=print) -> int:
    """The control for every complete run of a grid; a run whose samples are gone is reported, not fatal."""
    return apply_to_runs(root, grid, lambda run_dir: add_shuffled_control(run_dir, force), log=log)
