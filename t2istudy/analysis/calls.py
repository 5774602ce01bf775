"""How a table calls its comparisons: families of calls, Holm's correction, and seeds fixed in advance.

Why: a table that calls 14 differences "held" or "failed", each at 95% on its own, calls at least one
wrongly far more often than 5% of the time. So each table declares its family of calls (:data:`FAMILIES`),
every call carries the p-value of the two-level bootstrap that makes its CI
(``scoring.bootstrap.mean_of_group_means_test_over_seeds_and_prompts``: twice the smaller share of
resampled differences on either side of 0), and the verdict is called on Holm's adjusted p-value over the
family (``scoring.bootstrap.holm``); the raw CI stays beside it.

Seeds fixed in advance: a grid file declares each arm's seed budget (``seed_budget: 3``,
``study.grids.seed_budget``). An arm's seeds beyond it (its smallest ``budget`` seeds are the declared
ones) were added after a look at the results, which inflates the false-positive rate, so they are marked
``exploratory``: left out of every declared number and verdict, and reported beside them as exploratory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from t2istudy.scoring.bootstrap import holm
from t2istudy.study.grids import expand_grid, load_grid, seed_budget

ALPHA = 0.05  # family-wise error rate of every table's calls
DECLARED = "declared"  # a call on the seeds the grid declared in advance: in its family
EXPLORATORY = "exploratory"  # the same call on every seed run, beyond the budget: not in the family


@dataclass(frozen=True)
class Family:
    """A table's family of calls: the calls one Holm correction covers, said in words for its caption."""

    name: str
    calls: str


FAMILIES = {
    family.name: family
    for family in (
        Family("claims", "claims 1-3 for every encoder, on every tier the runs were judged on"),
        Family(
            "skill_gains", "norm_mean - last for every decoder LLM and skill (overall included), one tier"
        ),
        Family("claim4", "larger - smaller overall for every pair of one family's sizes, strategy and tier"),
        Family(
            "family_scaling",
            "larger - smaller of one family for every strategy and skill (overall included), one tier",
        ),
        Family("recipes", "every recipe's difference to the baseline, for every encoder and tier"),
        Family("upsampling", "upsampled - as written for every arm, tier and skill (overall included)"),
        Family(
            "protocol",
            "new protocol - the one it replaces for every arm: overall on each tier, the binding mean on the"
            " GenEval-style tier",
        ),
    )
}


def seed_budgets(grids_dir: str | Path, grids: Iterable[str]) -> dict[str, int | None]:
    """{grid: its declared seed budget} from ``<grids_dir>/<grid>.yaml``; None where the grid file declares
    none or does not exist (a test fixture's runs): then no seed is exploratory."""
    budgets: dict[str, int | None] = {}
    for grid in dict.fromkeys(grids):
        path = Path(grids_dir) / f"{grid}.yaml"
        budgets[grid] = seed_budget(path) if path.exists() else None
    return budgets


def declared_arms(grids_dir: str | Path, grid: str) -> dict[tuple[str, str], int]:
    """{(encoder, strategy): the seeds ``<grids_dir>/<grid>.yaml`` declares for it, within its seed budget};
    empty where the file does not exist (a test fixture's runs). An arm with no complete run yet is a pending
    call of its table's family, and so is a call whose arms have fewer landed seeds than declared
    (:func:`adjust`): a call on one training run cannot stand for three."""
    path = Path(grids_dir) / f"{grid}.yaml"
    if not path.exists():
        return {}
    grid = load_grid(path)
    seeds: dict[tuple[str, str], set[int]] = {}
    for run in expand_grid(grid):
        arm = (str(run.params["encoder"]), str(run.params["strategy"]))
        seeds.setdefault(arm, set()).add(int(run.params["seed"]))
    budget = grid.seed_budget
    return {arm: min(len(s), budget) if budget else len(s) for arm, s in seeds.items()}


def seeds_declared(arms: Collection[tuple[str, str]], *sides: tuple[str, str]) -> float:
    """The seeds a call on these (encoder, strategy) sides owes: the fewest any side's grid declares
    (``arms`` from :func:`declared_arms`); NaN where ``arms`` says no seed count (a plain set, or none)."""
    if not isinstance(arms, Mapping) or not all(side in arms for side in sides):
        return np.nan
    return float(min(arms[side] for side in sides))


def mark_exploratory(table: pd.DataFrame, budgets: Mapping[str, int | None]) -> pd.DataFrame:
    """``table`` (from ``run_results.load_metrics`` / ``load_scores``) with a boolean ``exploratory`` column:
    True for a run whose seed is beyond its grid's budget among its arm's seeds, smallest first."""
    table = table.copy()
    table["exploratory"] = False
    if table.empty:
        return table
    for (grid, _, _), arm in table.groupby(["grid", "encoder", "strategy"], sort=False):
        budget = budgets.get(str(grid))
        if budget is None:
            continue
        beyond = sorted(arm["seed"].unique())[budget:]
        table.loc[arm.index[arm["seed"].isin(beyond)], "exploratory"] = True
    return table


def declared(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs within their grid's seed budget (all rows when none was marked)."""
    if "exploratory" not in table.columns:
        return table
    return table[~table["exploratory"].astype(bool)]


def has_exploratory(table: pd.DataFrame) -> bool:
    return "exploratory" in table.columns and bool(table["exploratory"].astype(bool).any())


def exploratory_note(table: pd.DataFrame) -> str:
    """A caption sentence naming the runs beyond their grid's seed budget ("" when there are none)."""
    if not has_exploratory(table):
        return ""
    runs = table[table["exploratory"].astype(bool)].drop_duplicates("run_id")
    names = ", ".join(f"{r.encoder} {r.strategy} seed {r.seed}" for r in runs.itertuples())
    return (
        f" Exploratory (beyond the grid's declared seed budget, left out of every declared number and "
        f"verdict): {names}."
    )


def verdict(row: Mapping | pd.Series, min_seeds: int = 1, alpha: float = ALPHA) -> str:
    """held, failed or inconclusive; "not run" without a difference.

    With ``p_holm`` (the family's adjusted p-value) the call is made on it: held / failed when it is below
    ``alpha``, by the sign of the difference; a raw CI that excludes 0 without surviving the correction
    reads "inconclusive (held before Holm)". Without ``p_holm`` (a call outside any family), the raw CI
    decides: held above 0, failed below 0. An exploratory row reads "exploratory: <its raw verdict>".
    With fewer than ``min_seeds`` paired seeds every verdict reads "(preliminary: k seeds)": the CI then
    resamples too few training runs to cover run-to-run variance (the protocol asks for 3); with fewer than
    its grid declares (``seeds_declared``), "(preliminary: k of n seeds)", and :func:`adjust` counts it as
    pending.
    """
    if pd.isna(row["diff"]):
        return "not run"
    raw = "held" if row["ci_low"] > 0 else "failed" if row["ci_high"] < 0 else "inconclusive"
    adjusted = row.get("p_holm", np.nan)
    if row.get("design", DECLARED) != DECLARED:
        result = f"exploratory: {raw}"
    elif pd.isna(adjusted):
        result = raw
    elif adjusted < alpha:
        result = "held" if row["diff"] > 0 else "failed"
    else:
        result = "inconclusive" if raw == "inconclusive" else f"inconclusive ({raw} before Holm)"
    n, owed = int(row.get("n_seeds", min_seeds)), row.get("seeds_declared", np.nan)
    if n < owed:
        return f"{result} (preliminary: {n} of {int(owed)} seeds)"
    return result if n >= min_seeds else f"{result} (preliminary: {n} seed{'s' if n != 1 else ''})"


def adjust(table: pd.DataFrame, min_seeds: int = 1, alpha: float = ALPHA) -> pd.DataFrame:
    """The table as one family: ``p_holm`` (Holm over its declared rows with a p-value) and every
    ``verdict`` called on it. Exploratory rows keep their raw p and are called exploratory."""
    if table.empty:
        return table
    table = table.copy()
    in_family = ~table["p"].isna()
    if "design" in table.columns:
        in_family &= table["design"] == DECLARED
    # a call whose arms have not landed every declared seed is still owed: its raw p (from fewer training
    # runs than the protocol asks) enters the correction as 1, as a call not run does, so it cannot lower
    # the others' correction; it shows its raw CI and p and reads "(preliminary: k of n seeds)"
    owed = pd.Series(False, index=table.index)
    if {"n_seeds", "seeds_declared"} <= set(table.columns):
        owed = table["n_seeds"] < table["seeds_declared"]
    table["p_holm"] = np.nan
    table.loc[in_family, "p_holm"] = holm(table["p"].mask(owed, 1.0)[in_family].to_numpy())
    table["verdict"] = [verdict(row, min_seeds, alpha) for _, row in table.iterrows()]
    rest = [c for c in table.columns if c not in ("p_holm", "verdict")]
    at = rest.index("p") + 1  # the raw CI and p, then the adjusted p and the verdict called on it
    return table[rest[:at] + ["p_holm", "verdict"] + rest[at:]]


def family_note(table: pd.DataFrame, family: str, alpha: float = ALPHA) -> str:
    """A caption sentence: the family, its size, the correction and the p-value used."""
    size = int(table["p_holm"].notna().sum()) if "p_holm" in table.columns else 0
    note = (
        f" Family: {FAMILIES[family].calls} ({size} calls); verdicts on Holm-adjusted p < {alpha} "
        "(p_holm), p: two-sided two-level bootstrap p-value, beside the raw 95% CI."
    )
    if "design" in table.columns and (table["design"] != DECLARED).any():
        note += " Rows marked exploratory use seeds beyond the grid's declared seed budget and are no call."
    return note
