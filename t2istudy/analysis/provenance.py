"""Which code each compared run came from, marked per comparison and in each table's caption.

Why: a run trained or scored from a dirty working tree ran code no commit holds, and two runs trained at
different commits may differ by more than the arm. Neither makes a number wrong, but a reader must see it.
A run records the commit and dirty flag it was trained with (``params.json`` -> ``provenance``) and, when
``grid resample`` sampled and scored it again, those of its current scores (``metrics.json`` ->
``resampled``). :func:`mark` turns a table's ``pairs`` column (``stats.pairs``) into a ``provenance``
column, and :func:`caption` says in a sentence how many comparisons carry a mark.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from t2istudy.run_store import read_json
from t2istudy.study import run_results

CLEAN = "clean"
UNRECORDED = "unrecorded"  # the runs predate provenance records


def run_provenance(root: str | Path, grids, qualified: bool = False) -> pd.DataFrame:
    """One row per complete run of ``grids``: run_id, trained_commit, trained_dirty, scored_commit,
    scored_dirty (the current scores': a re-sampling's when the run was re-sampled, else the training's).
    ``qualified``: run ids as ``<grid>/<run_id>``, for tables that pair runs across grids of one design."""
    rows = []
    for grid in dict.fromkeys([grids] if isinstance(grids, str) else grids):
        trained = run_results.load_provenance(root, grid).set_index("run_id")
        for run in run_results.find_runs(root, grid):
            run_id = read_json(run / "params.json")["run_id"]
            commit, dirty = trained.loc[run_id, "git_commit"], trained.loc[run_id, "git_dirty"]
            metrics = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
            again = metrics.get("resampled") or {}
            rows.append(
                {
                    "grid": grid,
                    "run_id": f"{grid}/{run_id}" if qualified else run_id,
                    "trained_commit": commit,
                    "trained_dirty": dirty,
                    "scored_commit": again.get("git_commit", commit),
                    "scored_dirty": again.get("git_dirty", dirty),
                }
            )
    return pd.DataFrame(
        rows, columns=["grid", "run_id", "trained_commit", "trained_dirty", "scored_commit", "scored_dirty"]
    )


def _mark(pairs: str, runs: pd.DataFrame) -> str:
    """'dirty tree: k of n runs; different commits: j of m pairs', 'clean' or 'unrecorded'."""
    pairs_of = [p.split("+") for p in str(pairs).split(";") if p]
    ids = list(dict.fromkeys(r for pair in pairs_of for r in pair if r))
    known = runs.reindex(ids)
    if not ids or known["trained_dirty"].isna().all():
        return UNRECORDED if ids else ""
    dirty = known["trained_dirty"].fillna(False).astype(bool) | known["scored_dirty"].fillna(False).astype(
        bool
    )
    split = sum(
        1
        for a, b in pairs_of
        if a in runs.index
        and b in runs.index
        and runs.at[a, "trained_commit"] != runs.at[b, "trained_commit"]
    )
    parts = [f"dirty tree: {int(dirty.sum())} of {len(ids)} runs"] if dirty.any() else []
    parts += [f"different commits: {split} of {len(pairs_of)} pairs"] if split else []
    return "; ".join(parts) or CLEAN


def mark(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its ``pairs`` column replaced by ``provenance``: per comparison, how many of its runs
    were trained or scored from a dirty tree and how many of its seed pairs were trained at different
    commits ("clean" when none; ``runs``: :func:`run_provenance`)."""
    if "pairs" not in table.columns:
        return table
    by_id = runs.drop_duplicates("run_id").set_index("run_id")
    marks = [_mark(p, by_id) for p in table["pairs"]]
    return table.drop(columns="pairs").assign(provenance=marks)


def caption(table: pd.DataFrame) -> str:
    """A caption sentence naming how many comparisons use a dirty tree or pair different commits."""
    if "provenance" not in table.columns:
        return ""
    marks = table["provenance"].fillna("")
    made = marks != ""
    dirty = int(marks.str.contains("dirty tree").sum())
    split = int(marks.str.contains("different commits").sum())
    unrecorded = int((marks == UNRECORDED).sum())
    if not (dirty or split or unrecorded):
        return " Provenance: every comparison's runs were trained and scored from clean trees at one commit."
    made = int(made.sum())
    parts = [f"{dirty} of {made} comparisons use runs trained or scored from a dirty tree"]
    parts += [f"{split} of {made} pair runs trained at different commits"]
    parts += [f"{unrecorded} predate provenance records"] if unrecorded else []
    return " Provenance: " + ", ".join(parts) + " (column provenance)."


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per grid of :func:`run_provenance`: how many runs, how many trained / scored from a dirty tree, and
    at how many commits they were trained (RESULTS.md discloses these counts)."""
    return (
        runs.assign(
            trained_dirty=runs["trained_dirty"].fillna(False).astype(bool),
            scored_dirty=runs["scored_dirty"].fillna(False).astype(bool),
            unrecorded=runs["trained_dirty"].isna(),
        )
        .groupby("grid", sort=False)
        .agg(
            runs=("run_id", "size"),
            trained_dirty=("trained_dirty", "sum"),
            scored_dirty=("scored_dirty", "sum"),
            trained_commits=("trained_commit", "nunique"),
            unrecorded=("unrecorded", "sum"),
        )
        .reset_index()
    )
