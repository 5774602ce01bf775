"""A score table (one row per prompt) as GenAI-Bench's per-skill summary, and two runs' paired difference.

:func:`summarize` gives every skill, basic, advanced and overall a mean with a bootstrap CI over prompts;
:func:`paired_difference` compares two runs scored on the same prompts, per group, with a paired CI and
p-value (the form of the study's claims). Both resample through :mod:`t2istudy.scoring.bootstrap`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from t2istudy.scoring.bootstrap import mean_ci_over_prompts, mean_of_group_means_ci, paired_ci_over_prompts
from t2istudy.world.genai_bench import group_masks
from t2istudy.world.shapes_geneval import EXTRA_TASKS, TASKS


def summarize(
    table: pd.DataFrame, n_boot: int = 1000, seed: int = 0, column: str = "score", level: float = 0.95
) -> pd.DataFrame:
    """Rows: each skill present, basic, advanced, overall (GenAI-Bench's definitions, see
    :func:`genai_bench.group_masks`); columns: n, mean, ci_low, ci_high (bootstrap over prompts)."""
    if column not in table.columns:
        raise ValueError(f"The score table has no {column!r} column.")
    values = table[column].to_numpy(dtype=float)
    if np.isnan(values).any():
        bad = table.loc[np.isnan(values), "id"].tolist()[:5] if "id" in table.columns else "?"
        raise ValueError(f"The score table has missing scores (e.g. prompts {bad}); rescore them first.")
    rng = np.random.default_rng(seed)
    rows = {}
    for name, mask in group_masks(table).items():
        lo, hi = mean_ci_over_prompts(values[mask], rng, n_boot, level)
        rows[name] = {"n": int(mask.sum()), "mean": float(values[mask].mean()), "ci_low": lo, "ci_high": hi}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "group"
    return out


def summarize_geneval(
    table: pd.DataFrame, n_boot: int = 1000, seed: int = 0, column: str = "score", level: float = 0.95
) -> pd.DataFrame:
    """GenEval's summary of the GenEval-style tier: one row per task, and ``overall`` = the mean of the
    six task means (not of prompts), with bootstrap CIs resampling prompts within each task. The extra
    tasks (``EXTRA_TASKS``) get rows after ``overall`` when present and stay out of it."""
    if "task" not in table.columns or column not in table.columns:
        raise ValueError(f"A GenEval-style table needs 'task' and {column!r} columns (make_geneval_tier).")
    rng = np.random.default_rng(seed)
    rows, groups = {}, []
    for task in TASKS:
        values = table.loc[table["task"] == task, column].to_numpy(dtype=float)
        if len(values) == 0:
            raise ValueError(f"The GenEval-style table has no {task!r} prompts; overall needs all six tasks.")
        groups.append(values)
        lo, hi = mean_ci_over_prompts(values, rng, n_boot, level)
        rows[task] = {"n": len(values), "mean": float(values.mean()), "ci_low": lo, "ci_high": hi}
    lo, hi = mean_of_group_means_ci(groups, rng, n_boot, level)
    mean = float(np.mean([r["mean"] for r in rows.values()]))
    rows["overall"] = {"n": int(table["task"].isin(TASKS).sum()), "mean": mean, "ci_low": lo, "ci_high": hi}
    for task in EXTRA_TASKS:  # reported beside GenEval's six, never in overall
        values = table.loc[table["task"] == task, column].to_numpy(dtype=float)
        if len(values):
            lo, hi = mean_ci_over_prompts(values, rng, n_boot, level)
            rows[task] = {"n": len(values), "mean": float(values.mean()), "ci_low": lo, "ci_high": hi}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "group"
    return out


def paired_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    column: str = "score",
    level: float = 0.95,
) -> pd.DataFrame:
    """Per group: mean of ``a`` minus mean of ``b`` over the same prompts, with a paired bootstrap CI
    (the same resampled prompts for both) and a two-sided bootstrap p-value for "no difference"."""
    if "id" not in a.columns or "id" not in b.columns:
        raise ValueError("Both score tables need an 'id' column to pair prompts.")
    if a["id"].duplicated().any() or b["id"].duplicated().any():
        raise ValueError("Prompt ids must be unique in each score table to pair them.")
    missing = set(a["id"]) ^ set(b["id"])
    if missing:
        raise ValueError(
            f"The tables score different prompts ({len(missing)} ids in only one, e.g. {sorted(missing)[:3]}); "
            f"a paired difference needs the same prompts in both."
        )
    b = b.set_index("id").loc[a["id"]].reset_index()
    diff = a[column].to_numpy(float) - b[column].to_numpy(float)
    rng = np.random.default_rng(seed)
    rows = {}
    for name, mask in group_masks(a).items():
        d = diff[mask]
        lo, hi, p = paired_ci_over_prompts(d, rng, n_boot, level)
        rows[name] = {
            "n": int(mask.sum()),
            "mean_a": float(a[column].to_numpy(float)[mask].mean()),
            "mean_b": float(b[column].to_numpy(float)[mask].mean()),
            "diff": float(d.mean()),
            "ci_low": float(lo),
            "ci_high": float(hi),
            "p_boot": float(p),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "group"
    return out
