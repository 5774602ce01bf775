"""Comparisons across grids under one protocol: released recipes against ``recipe:paper`` (issue 18), and
inference prompt upsampling against the same models' prompts as written; both paired by seed and prompt
with the statistics of :mod:`t2istudy.analysis.stats`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from t2istudy.analysis.calls import adjust, declared, mark_exploratory, seeds_declared
from t2istudy.analysis.stats import (
    PENDING,
    Options,
    arm_table,
    difference,
    paired_effect,
    paired_matrices,
    pairs,
    point,
    split,
)
from t2istudy.diffusion import train_folder
from t2istudy.run_store import PARAMS, TRAIN_LOG, read_json
from t2istudy.study import run_results
from t2istudy.text.aggregation import parse_strategy, recipe_of
from t2istudy.text.recipes import named_recipe


def tier_scores(
    root: str | Path, grid: str, metric: str, budgets: Mapping[str, int | None] | None = None
) -> dict[str, pd.DataFrame]:
    """{tier: per-prompt scores} for every tier the grid's runs were judged on, runs beyond their seed
    budget marked ``exploratory``: what a family spanning the tiers (the claims) is called over."""
    out = {}
    for tier in run_results.TIERS:
        try:
            scores = run_results.load_scores(root, grid, metric, tier)
        except ValueError:  # no run of the grid has this tier (scored before it existed)
            continue
        if len(scores):
            out[tier] = mark_exploratory(scores, budgets or {})
    return out


def upsampling_effect(
    root: str | Path,
    grid: str,
    baseline_grid: str,
    metric: str = "score",
    opts: Options = Options(),
    budgets: Mapping[str, int | None] | None = None,
) -> pd.DataFrame:
    """Inference prompt upsampling's effect on both tiers: each arm of ``grid`` (runs sampled with
    ``prompt_upsampling``, reusing the models of ``baseline_grid``'s runs) against the same arm of
    ``baseline_grid``, paired by seed and prompt (:func:`paired_effect`), on the seeds each grid declared
    (``budgets``: ``calls.seed_budgets``), called as one family (``calls.FAMILIES["upsampling"]``). Empty
    when ``grid`` has no runs."""
    # a run's noise rule is the same on every tier: one check before the tiers
    run_results.check_same_noise_rule(
        *(run_results.load_metrics(root, g, metric) for g in (grid, baseline_grid))
    )
    out = []
    for tier in run_results.TIERS:
        treated = run_results.load_scores(root, grid, metric, tier)
        if treated.empty:
            continue
        control = run_results.load_scores(root, baseline_grid, metric, tier)
        treated, control = (mark_exploratory(t, budgets or {}) for t in (treated, control))
        for (enc, strategy, rewriter), arm in treated.groupby(
            ["encoder", "strategy", "prompt_upsampling"], sort=False
        ):
            base = control[(control["encoder"] == enc) & (control["strategy"] == strategy)]
            table = paired_effect(arm, base, opts) if len(base) else pd.DataFrame()
            if len(table):
                out.append(table.assign(tier=tier, encoder=enc, strategy=strategy, rewriter=rewriter))
    if not out:
        return pd.DataFrame()
    table = adjust(pd.concat(out, ignore_index=True), opts.min_seeds)
    first = ["tier", "encoder", "strategy", "rewriter"]
    return table[first + [c for c in table.columns if c not in first]]


# A grid that reruns an earlier one's arms under a new protocol -> the grid it replaces: the analysis pairs
# each arm with the same arm there. small3 is small2's arms and seeds on the binding levers at 6,000 steps
# (issue 36, grids/small3.yaml).
REPLACES = {"small3": "small2"}
# The calls of a protocol against the one it replaces, per arm: (tier, skill or task group)
PROTOCOL_CALLS = (("heldout", "overall"), ("geneval", "overall"), ("geneval", "binding"))


def protocol_effect(
    root: str | Path,
    grid: str,
    baseline_grid: str,
    metric: str = "score",
    opts: Options = Options(),
    budgets: Mapping[str, int | None] | None = None,
    pending: Iterable[tuple[str, str]] = (),
) -> pd.DataFrame:
    """A new protocol against the one it replaces, arm by arm: each (encoder, strategy) of ``grid`` minus
    the same arm of ``baseline_grid``, paired by seed and prompt (per-prompt noise: seed s of both drew the
    same noise for a prompt), on :data:`PROTOCOL_CALLS`: overall on both tiers and the binding mean on the
    GenEval-style tier (the three binding tasks' means' mean, issue 36's measure). One family
    (``calls.FAMILIES["protocol"]``): ``treated``, ``control``, the difference, p, Holm's ``p_holm`` and the
    verdict. ``budgets`` (``calls.seed_budgets``): declared seeds only. ``pending``: the arms ``grid``
    declares (``calls.declared_arms``); one not landed on both sides reads "not run" and counts with p = 1,
    so a partial grid is called as its whole family. Empty when there is no arm at all."""
    scores: dict[tuple[str, str], pd.DataFrame] = {}
    for tier in dict.fromkeys(t for t, _ in PROTOCOL_CALLS):
        for g in (grid, baseline_grid):
            try:
                found = run_results.load_scores(root, g, metric, tier)
            except ValueError:  # no run of the grid has this tier yet
                found = pd.DataFrame(columns=["encoder", "strategy", "seed", "id"])
            if len(found):  # both grids name their runs alike: the grid in front, so a pair names both sides
                found = declared(mark_exploratory(found, budgets or {}))
                found = found.assign(run_id=g + "/" + found["run_id"])
            scores[g, tier] = found  # (provenance.run_provenance(..., qualified=True) reads the ids so)
    run_results.check_same_noise_rule(
        *(
            run_results.load_metrics(root, g, metric)
            for g in (grid, baseline_grid)
            if len(scores[g, "heldout"])
        )
    )
    landed = scores[grid, "heldout"][["encoder", "strategy"]].drop_duplicates().itertuples(index=False)
    out = []
    for enc, strategy in sorted({*map(tuple, landed), *pending}):
        for tier, skill in PROTOCOL_CALLS:
            a, b = (s[(s["encoder"] == enc) & (s["strategy"] == strategy)] for s in
                    (scores[grid, tier], scores[baseline_grid, tier]))  # fmt: skip
            arm = {"tier": tier, "skill": skill, "encoder": enc, "strategy": strategy,
                   "seeds_declared": seeds_declared(pending, (enc, strategy))}  # fmt: skip
            if a.empty or b.empty:
                out.append({**arm, **PENDING, "n_prompts": 0, "pairs": "", "verdict": "not run"})
                continue
            row = paired_effect(a, b, opts, skills=[skill]).iloc[0].drop("skill").to_dict()
            out.append({**arm, **row})
    if not out:
        return pd.DataFrame()
    return adjust(pd.DataFrame(out), opts.min_seeds)


SWEPT = ("encoder", "strategy", "seed")  # what may differ between runs compared under one protocol


def _protocols(root: str | Path, grid: str) -> dict[str, str]:
    """{run_id: its settings other than encoder, strategy and seed} for a grid's complete runs. The
    projection's width rule (``train_options.projection_lr``) is the identity for an arm that reads one state
    (``diffusion.options.projection_lr_factor``), so there it reads ``*``: such a run is the same protocol
    under either rule (small2's ``norm_mean`` runs are recipe:paper under grids/recipes_width.yaml's rule too)."""
    out = {}
    for run in run_results.find_runs(root, grid):
        record = read_json(run / "params.json")
        params = record.get("params", {})
        rest = {k: v for k, v in params.items() if k not in SWEPT}
        options = dict(rest.pop("train_options", None) or {})
        rule = options.pop("projection_lr", "shared")
        if parse_strategy(params.get("strategy", "norm_mean")).kind != "concat":
            rule = "*"
        rest["train_options"] = {**options, "projection_lr": rule}
        out[record["run_id"]] = json.dumps(rest, sort_keys=True)
    return out


def _one_protocol(protocols: set[str]) -> set[str]:
    """The protocols with the width rule's wildcard filled in from the runs that state a rule (one rule: the
    wildcard takes it; none: ``shared``, the default), so a single-state arm matches either rule."""
    settings = [json.loads(p) for p in protocols]
    rules = {d["train_options"]["projection_lr"] for d in settings} - {"*"}
    rule = rules.pop() if len(rules) == 1 else "shared" if not rules else None
    for d in settings:
        if d["train_options"]["projection_lr"] == "*" and rule is not None:
            d["train_options"]["projection_lr"] = rule
    return {json.dumps(d, sort_keys=True) for d in settings}


def _recipe_runs(
    root: str | Path,
    grid: str,
    baseline: str,
    baseline_grid: str | None,
    metric: str,
    tier: str,
    budgets: Mapping[str, int | None],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and scores of ``grid``'s runs on ``tier``, strategies named by their recipe, plus the
    ``baseline`` runs of ``baseline_grid`` for the (encoder, seed) pairs the grid has no baseline run of;
    runs beyond their grid's seed budget marked ``exploratory``."""
    tables = []
    for source in [grid] + ([baseline_grid] if baseline_grid else []):
        metrics = run_results.load_metrics(root, source, metric, tier)
        if metrics.empty:
            continue
        scores = run_results.load_scores(root, source, metric, tier)
        names = {s: recipe_of(s) or s for s in scores["strategy"].unique()}
        metrics["strategy"], scores["strategy"] = (
            metrics["strategy"].map(names),
            scores["strategy"].map(names),
        )
        tables.append((source, mark_exploratory(metrics, budgets), mark_exploratory(scores, budgets)))
    if not tables or tables[0][0] != grid:
        return pd.DataFrame(), pd.DataFrame()
    metrics, scores = tables[0][1], tables[0][2]
    run_results.check_same_noise_rule(*(t[1] for t in tables))
    if len(tables) == 2:
        pair = ["encoder", "seed"]
        own = pd.MultiIndex.from_frame(metrics.loc[metrics["strategy"] == baseline, pair])
        extra_m, extra_s = tables[1][1], tables[1][2]
        extra_m = extra_m[
            (extra_m["strategy"] == baseline)
            & extra_m["encoder"].isin(metrics["encoder"])
            & ~pd.MultiIndex.from_frame(extra_m[pair]).isin(own)
        ]
        if len(extra_m):
            theirs = _protocols(root, baseline_grid)
            protocols = _one_protocol(
                set(_protocols(root, grid).values()) | {theirs[r] for r in extra_m["run_id"].unique()}
            )
            if len(protocols) != 1:
                settings = [json.loads(v) for v in sorted(protocols)]
                keys = sorted({k for d in settings for k in d})
                values = {k: sorted({json.dumps(d.get(k)) for d in settings}) for k in keys}
                differ = ", ".join(f"{k} ({', '.join(v)})" for k, v in values.items() if len(v) > 1)
                raise ValueError(
                    f"The {baseline} runs of {baseline_grid!r} are not the same protocol as {grid!r}'s runs: "
                    f"they differ in {differ}. Run {baseline} in {grid!r} itself, or pass baseline_grid=None."
                )
            ids = set(extra_m["run_id"])
            metrics = pd.concat([metrics, extra_m], ignore_index=True)
            scores = pd.concat([scores, extra_s[extra_s["run_id"].isin(ids)]], ignore_index=True)
    return metrics, scores


def recipe_comparison(
    root: str | Path,
    grid: str = "recipes",
    baseline: str = "recipe:paper",
    metric: str = "score",
    opts: Options = Options(),
    baseline_grid: str | None = None,
    budgets: Mapping[str, int | None] | None = None,
    pending: Iterable[tuple[str, str]] = (),
) -> pd.DataFrame:
    """Released recipes under one protocol (issue 18), on both tiers: per (tier, encoder, recipe) the
    overall score over seeds with its two-level CI, the conditioning projection's parameter count (concat
    recipes widen it) and the paired difference to ``baseline`` on the same encoder, with its verdict and
    the baseline's own score on the seeds and prompts the difference pairs (``<baseline>_same_seeds``).
    A strategy is named by its recipe when its expansion is one (``norm_mean`` reads ``recipe:paper``).
    ``baseline_grid``: a grid whose ``baseline`` runs stand in for the grid's own where it has none, when
    every setting but encoder, strategy and seed is the same (small2's ``norm_mean`` runs are recipe:paper's);
    ``grids`` says where each arm's runs come from. ``budgets`` (``calls.seed_budgets``): seeds beyond a
    grid's budget are left out (``n_exploratory`` counts them). Every difference is one call of a family
    (``calls.FAMILIES["recipes"]``): ``p``, Holm's ``p_holm`` and the verdict called on it. ``pending``: the
    (encoder, strategy) arms the grid declares (``calls.declared_arms``); one with no complete run reads "not
    run" and counts in Holm's correction with p = 1, so a partial grid is called as its whole family. Rows
    best first within each tier and encoder; empty when the grid has no complete runs."""
    named = named_recipe(baseline)
    short = named.name if named else baseline  # column names: paper_same_seeds, diff_vs_paper
    out, calls = [], []
    for tier in run_results.TIERS:
        metrics, scores = _recipe_runs(root, grid, baseline, baseline_grid, metric, tier, budgets or {})
        if metrics.empty:
            continue
        overall = metrics[metrics["skill"] == "overall"]
        arms = arm_table(overall, scores, opts)
        width = (
            overall.groupby(["encoder", "strategy"])["conditioner_parameters"].first()
            if "conditioner_parameters" in overall
            else pd.Series(dtype=float)
        )
        sources = overall.groupby(["encoder", "strategy"])["grid"].agg(lambda g: "+".join(dict.fromkeys(g)))
        for enc in arms["encoder"].unique():
            at_enc = declared(scores)[declared(scores)["encoder"] == enc]
            base = at_enc[at_enc["strategy"] == baseline]
            for row in arms[arms["encoder"] == enc].itertuples():
                is_base = row.strategy == baseline
                arm = at_enc[at_enc["strategy"] == row.strategy]
                stats, same_seeds = {}, np.nan
                if len(base) and not is_base:
                    paired_arm, paired_base = paired_matrices(arm, base, None)
                    stats = difference(paired_arm, paired_base, arm, None, opts)
                    stats["pairs"] = pairs(arm, base, paired_arm.index)
                    calls.append({**stats, "row": len(out)})
                    # the baseline on the seeds and prompts the difference pairs it on: with one recipe
                    # seed, paper's seed 0 alone, which can sit far from paper's mean over its seeds
                    same_seeds = point(split(paired_base, arm, None))
                name = str(row.strategy)
                recipe = named_recipe(name)
                out.append(
                    {
                        "tier": tier,
                        "encoder": enc,
                        "recipe": name,
                        "system": recipe.system if recipe else "",
                        "n_seeds": int(row.n_seeds),
                        "n_exploratory": int(row.n_exploratory),
                        "score": row.mean,
                        "ci_low": row.ci_low,
                        "ci_high": row.ci_high,
                        "projection_params": width.get((enc, row.strategy), np.nan),
                        f"{short}_same_seeds": same_seeds,
                        f"diff_vs_{short}": stats.get("diff", np.nan),
                        "diff_low": stats.get("ci_low", np.nan),
                        "diff_high": stats.get("ci_high", np.nan),
                        "p": stats.get("p", np.nan),
                        "p_holm": np.nan,
                        "verdict": "baseline" if is_base else "no baseline run",
                        "grids": sources.get((enc, row.strategy), grid),
                        "pairs": stats.get("pairs", ""),
                    }
                )
        landed = set(zip(overall["encoder"], overall["strategy"], strict=True))
        waiting = {(e, recipe_of(s) or s) for e, s in pending} - landed
        for enc, strategy in sorted((e, s) for e, s in waiting if s != baseline):
            calls.append({**PENDING, "row": len(out)})
            out.append({"tier": tier, "encoder": enc, "recipe": strategy, "n_seeds": 0, "n_exploratory": 0})
            out[-1].update(system=getattr(named_recipe(strategy), "system", ""), grids=grid, p=1.0)
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame(out)
    if calls:  # one family: every recipe's difference, every encoder and tier
        called = adjust(pd.DataFrame(calls), opts.min_seeds).set_index("row")
        table.loc[called.index, ["p_holm", "verdict"]] = called[["p_holm", "verdict"]]
    table["projection_params"] = table["projection_params"].astype("Int64")
    order = list(run_results.TIERS)
    return table.sort_values(
        ["tier", "encoder", "score"],
        key=lambda c: c.map(order.index) if c.name == "tier" else c,
        ascending=[True, True, False],
    ).reset_index(drop=True)


def load_train_logs(root: str | Path, grid: str) -> pd.DataFrame:
    """Every logged training step of a grid's complete runs, one row per (run, step): grid, run_id, encoder,
    strategy, seed and the log's columns (loss, grad_norm, lr). A run's log is read from its folder
    (``train_log.jsonl``, where it is committed: ``<run>/train/`` is not) or else from ``<run>/train/``;
    a run with neither is left out."""
    frames = []
    for out in run_results.find_runs(root, grid):
        folder = next((f for f in (out, out / "train") if (f / TRAIN_LOG).is_file()), None)
        if folder is None:
            continue
        record = read_json(out / PARAMS)
        params = record.get("params", {})
        keys = {
            "grid": grid,
            "run_id": record["run_id"],
            **{k: params.get(k) for k in ("encoder", "strategy", "seed")},
        }
        frames.append(pd.DataFrame(train_folder.read_train_log(folder)).assign(**keys))
    if not frames:
        return pd.DataFrame(columns=["grid", "run_id", "encoder", "strategy", "seed", "step", "loss"])
    logs = pd.concat(frames, ignore_index=True)
    first = ["grid", "run_id", "encoder", "strategy", "seed"]
    return logs[first + [c for c in logs.columns if c not in first]]


def concat_arm_logs(root: str | Path, grid: str, beside: str | None = None) -> pd.DataFrame:
    """The training logs (:func:`load_train_logs`) of a grid's concatenating arms, the wide
    projections whose training can diverge, and ``beside``'s runs of the same (encoder, strategy, seed):
    the same arms under another protocol (grids/recipes.yaml's shared learning rate beside
    grids/recipes_width.yaml's width rule). Strategies read by their recipe's name."""
    logs = load_train_logs(root, grid)
    logs = logs[logs["strategy"].map(lambda s: parse_strategy(s).kind == "concat").astype(bool)]
    if beside and len(logs):
        other = load_train_logs(root, beside)
        keys = ["encoder", "strategy", "seed"]
        wanted = pd.MultiIndex.from_frame(logs[keys].drop_duplicates())
        logs = pd.concat([logs, other[pd.MultiIndex.from_frame(other[keys]).isin(wanted)]], ignore_index=True)
    logs = logs.assign(strategy=[recipe_of(s) or s for s in logs["strategy"]])
    return logs.reset_index(drop=True)
