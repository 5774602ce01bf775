"""Tables, claims and figures for the analysis notebooks; everything is computed from ``runs/`` alone.

Numbers are per arm = (encoder, strategy) over its seeds. CIs resample prompts *and* seeds (a
two-level bootstrap): with a handful of seeds, prompt-only CIs would hide run-to-run variance, which
the pilot found could be as large as the effect under study. Differences between two arms are paired
by prompt and by seed: seed s of every arm saw the same training batches, noise and sampling noise.

Two benchmark tiers (``run_results.TIERS``), each loaded with its ``tier`` column: the held-out tier's
overall is the mean over prompts, the GenEval-style tier's the mean of its six task means (GenEval's rule,
so a task's weight does not depend on its prompt count); its CIs resample prompts within each task, and
seeds. The tier's tasks stand where the held-out tier's skills do, so every function reads either tier.

The paper's own numbers (``t2istudy/data/paper_results.csv``: VQAScore on GenAI-Bench with 7B-scale
encoders) sit beside ours with their source spelled out; they are not on the same scale as ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt  # the backend is matplotlib's choice: inline in Jupyter, Agg headless
import numpy as np
import pandas as pd
import seaborn as sns

from t2istudy.scoring.bootstrap import mean_of_group_means_ci_over_seeds_and_prompts
from t2istudy.scoring.failure_modes import FAILURES
from t2istudy.study import run_results
from t2istudy.study.run_folder import read_json
from t2istudy.text.aggregation import recipe_of
from t2istudy.text.plots_layers import plot_layer_norms
from t2istudy.text.recipes import RECIPES
from t2istudy.world.genai_bench import SKILL_GROUPS
from t2istudy.world.shapes_geneval import TASKS

OURS = "ours (shapes world, pixel judge)"
PAPER = "paper (GenAI-Bench, VQAScore)"
# Public parameter counts of the built-in encoders, used when a run did not record `encoder_params`.
NOMINAL_PARAMS = {
    "smollm2-135m": 134.5e6,
    "gemma3-270m": 268.1e6,
    "qwen2.5-0.5b": 494.0e6,
    "minilm-l6": 22.7e6,
}
BIDIRECTIONAL = {"minilm-l6"}  # built-ins; runs record `encoder_kind` for anything else
GROUPS = ("overall", "basic", "advanced")


@dataclass(frozen=True)
class Options:
    """Defaults of the analysis in one place."""

    n_boot: int = 2000
    seed: int = 0
    level: float = 0.95
    baseline_strategy: str = "last"  # the paper's baseline: last-layer embeddings
    best_strategy: str = "norm_mean"  # the paper's proposal: layer-normalized mean
    plain_mean: str = "mean"
    # Below min_seeds a verdict is marked preliminary: seed variance is under-sampled.
    min_seeds: int = 3
    bidirectional_strategy: str = "last"  # the paper's T5-XXL baseline uses its last layer


def paper_results() -> pd.DataFrame:
    """The paper's reported VQAScore (GenAI-Bench overall): only the numbers it states."""
    path = resources.files("t2istudy") / "data" / "paper_results.csv"
    return pd.read_csv(str(path), comment="#")


# ---------------------------------------------------------------------------------------------
# Arms: per-run metrics -> one row per (encoder, strategy, skill)


def encoder_info(metrics: pd.DataFrame) -> pd.DataFrame:
    """Encoder -> parameters and kind, from what runs recorded, else the built-in defaults."""
    rows = []
    for encoder, group in metrics.groupby("encoder"):
        params = group["encoder_params"].dropna() if "encoder_params" in group else pd.Series(dtype=float)
        kind = group["encoder_kind"].dropna() if "encoder_kind" in group else pd.Series(dtype=str)
        rows.append(
            {
                "encoder": encoder,
                "params": float(params.iloc[0]) if len(params) else NOMINAL_PARAMS.get(encoder, np.nan),
                "kind": str(kind.iloc[0])
                if len(kind)
                else ("bidirectional" if encoder in BIDIRECTIONAL else "decoder"),
            }
        )
    return pd.DataFrame(rows)


def arm_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each arm's per-skill score, with the seed standard deviation and count."""
    grouped = metrics.groupby(["encoder", "strategy", "skill"], sort=False)["mean"]
    table = grouped.agg(mean="mean", seed_sd="std", n_seeds="count").reset_index()
    table["seed_sd"] = table["seed_sd"].fillna(0.0)
    return table


def _matrix(scores: pd.DataFrame, skill: str | None = None, column: str = "score") -> pd.DataFrame:
    """Per-prompt scores of one arm as a [seed x prompt] table, restricted to a skill or skill group."""
    if skill not in (None, "overall"):
        wanted = set(SKILL_GROUPS.get(skill, (skill,)))
        scores = scores[
            scores["skills"].fillna("").astype(str).str.split("|").map(lambda tags: bool(wanted & set(tags)))
        ]
    return scores.pivot_table(index="seed", columns="id", values=column, aggfunc="mean")


def tier_of(table: pd.DataFrame) -> str:
    """The tier of a table from ``run_results.load_metrics`` / ``load_scores`` (their ``tier`` column);
    "heldout" for a table without one (built by hand, or loaded before tiers existed)."""
    tiers = table["tier"].dropna().unique() if "tier" in table.columns else []
    if len(tiers) > 1:
        raise ValueError(f"The table mixes tiers {sorted(tiers)}: analyse one tier at a time.")
    return str(tiers[0]) if len(tiers) else "heldout"


def _split(matrix: pd.DataFrame, scores: pd.DataFrame, skill: str | None) -> list[pd.DataFrame]:
    """The groups whose mean of means is the score on ``skill``: the whole [seed x prompt] matrix, except
    for the GenEval-style tier's overall, which is the mean of its task means (one matrix per task)."""
    if skill not in (None, "overall") or tier_of(scores) != "geneval":
        return [matrix]
    task = scores.drop_duplicates("id").set_index("id")["skills"].reindex(matrix.columns)
    return [matrix.loc[:, (task == t).to_numpy()] for t in task.unique()]


def _point(groups: list[pd.DataFrame]) -> float:
    """The mean of the groups' means (the plain mean for one group)."""
    return float(np.mean([np.nanmean(g.to_numpy()) for g in groups]))


def _mean_ci(groups: list[pd.DataFrame], opts: Options) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of the groups' means (see `_split`), resampling seeds and prompts
    within each group with the analysis' bootstrap settings; one group is the plain two-level bootstrap."""
    arrays = [g.to_numpy() for g in groups]
    return mean_of_group_means_ci_over_seeds_and_prompts(arrays, opts.n_boot, opts.seed, opts.level)


def arm_difference(
    a: pd.DataFrame, b: pd.DataFrame, skill: str | None = None, opts: Options = Options()
) -> dict:
    """Mean of (arm a - arm b) over the seeds and prompts both have, paired by seed and prompt, with a CI
    resampling seeds and prompts (unlike `scoring.summaries.paired_difference`: one run each, prompts only).
    On the GenEval-style tier the overall difference is that of the task means' means (GenEval's rule)."""
    return _difference(*_paired_matrices(a, b, skill), a, skill, opts)


def _paired_matrices(
    a: pd.DataFrame, b: pd.DataFrame, skill: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The [seed x prompt] matrices of arms a and b on the seeds and prompts both have."""
    ma, mb = _matrix(a, skill), _matrix(b, skill)
    seeds, prompts = ma.index.intersection(mb.index), ma.columns.intersection(mb.columns)
    return ma.loc[seeds, prompts], mb.loc[seeds, prompts]


def _difference(
    ma: pd.DataFrame, mb: pd.DataFrame, a: pd.DataFrame, skill: str | None, opts: Options
) -> dict:
    """Mean and CI of ma - mb (paired matrices; ``a``'s scores tell the tier's overall rule)."""
    n = {"n_seeds": ma.shape[0], "n_prompts": ma.shape[1]}
    if ma.size == 0:
        return {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, **n}
    mean, low, high = _mean_ci(_split(ma - mb, a, skill), opts)
    return {"diff": mean, "ci_low": low, "ci_high": high, **n}


def verdict(row: dict | pd.Series, min_seeds: int = 1) -> str:
    """held (CI above 0), failed (CI below 0), inconclusive (CI covers 0), or missing runs.

    With fewer than ``min_seeds`` paired seeds, every verdict reads "(preliminary: k seeds)": the CI then
    resamples too few training runs to cover run-to-run variance (the protocol asks for 3), so a level
    result is as unsettled as a signed one.
    """
    if pd.isna(row["diff"]):
        return "not run"
    if row["ci_low"] > 0:
        result = "held"
    elif row["ci_high"] < 0:
        result = "failed"
    else:
        result = "inconclusive"
    n = int(row.get("n_seeds", min_seeds))
    return result if n >= min_seeds else f"{result} (preliminary: {n} seed{'s' if n != 1 else ''})"


def arm_table(metrics: pd.DataFrame, scores: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """One row per (encoder, strategy, skill): mean over seeds, seed SD, two-level bootstrap CI (of the
    task means' mean for the GenEval-style tier's overall, as its runs' metrics.json compute it)."""
    table = arm_means(metrics)
    cis = []
    for row in table.itertuples():
        arm = scores[(scores["encoder"] == row.encoder) & (scores["strategy"] == row.strategy)]
        matrix = _matrix(arm, row.skill) if len(arm) else pd.DataFrame()
        cis.append(_mean_ci(_split(matrix, arm, row.skill), opts)[1:] if matrix.size else (np.nan, np.nan))
    table[["ci_low", "ci_high"]] = pd.DataFrame(cis, index=table.index)
    return table


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(mean: float, low: float, high: float) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.3f}" if pd.isna(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def skill_order(skills) -> list[str]:
    """Groups first, then the skills in name order (the GenEval-style tier's tasks in GenEval's order)."""
    rest = sorted(
        (s for s in set(skills) if s not in GROUPS),
        key=lambda s: (TASKS.index(s) if s in TASKS else len(TASKS), s),
    )
    return [g for g in GROUPS if g in set(skills)] + rest


def _skills(scores: pd.DataFrame) -> list[str]:
    """The skill tags present in per-prompt scores (the tasks, on the GenEval-style tier)."""
    return skill_order({t for tags in scores["skills"].dropna() for t in str(tags).split("|") if t})


def table1(arms: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """Table 1: last-layer embeddings across encoders, overall and per skill; the paper's rows labelled."""
    last = arms[arms["strategy"] == opts.baseline_strategy]
    cols = skill_order(last["skill"])
    wide = last.pivot_table(index="encoder", columns="skill", values="mean", sort=False)[cols].round(3)
    wide.insert(0, "source", OURS)
    wide.insert(1, "n_seeds", last[last.skill == "overall"].set_index("encoder")["n_seeds"].astype("Int64"))
    paper = paper_results()
    paper = paper[paper["strategy"] == "last"]
    extra = pd.DataFrame(
        {"source": PAPER, "n_seeds": np.nan, "overall": paper["vqascore_overall"].to_numpy()},
        index=pd.Index(paper["encoder"], name="encoder"),
    )
    return pd.concat([wide, extra]).reset_index()


def table2(arms: pd.DataFrame, skill: str = "overall") -> pd.DataFrame:
    """Table 2: the strategy ablation per encoder (mean [CI] over seeds and prompts); the paper's beside."""
    sub = arms[arms["skill"] == skill].copy()
    sub["cell"] = [
        _fmt(m, lo, hi) for m, lo, hi in zip(sub["mean"], sub["ci_low"], sub["ci_high"], strict=True)
    ]
    # "a middle layer" is a different k per encoder: one column when every encoder has one such arm
    layer_k = sub["strategy"].str.fullmatch(r"layer:\d+")
    if layer_k.any() and sub[layer_k].groupby("encoder").size().max() == 1:
        sub.loc[layer_k, "cell"] += " (" + sub.loc[layer_k, "strategy"] + ")"
        sub.loc[layer_k, "strategy"] = "layer:k"
    strategies = list(dict.fromkeys(sub["strategy"]))
    wide = sub.pivot_table(index="encoder", columns="strategy", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=strategies).fillna("")
    wide.insert(0, "source", OURS)
    paper = paper_results().pivot_table(
        index="encoder", columns="strategy", values="vqascore_overall", sort=False
    )
    paper = paper.reindex(columns=strategies).map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    paper.insert(0, "source", PAPER)
    return pd.concat([wide, paper]).reset_index()


def claims(scores: pd.DataFrame, info: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """The paper's claims as paired differences (a - b) with CIs and a verdict per encoder."""
    decoders = info.loc[info["kind"] != "bidirectional", "encoder"].tolist()
    bidirectional = info.loc[info["kind"] == "bidirectional", "encoder"].tolist()

    def arm(encoder: str, strategy: str) -> pd.DataFrame:
        return scores[(scores["encoder"] == encoder) & (scores["strategy"] == strategy)]

    rows = []
    for enc in decoders:
        rows.append(("1: last < norm_mean (every LLM)", enc, opts.best_strategy, enc, opts.baseline_strategy))
    for enc in decoders + bidirectional:
        rows.append(("2: mean < norm_mean", enc, opts.best_strategy, enc, opts.plain_mean))
    for enc in decoders:
        for bi in bidirectional:
            rows.append(
                (
                    "3: LLM norm_mean >= bidirectional",
                    enc,
                    opts.best_strategy,
                    bi,
                    opts.bidirectional_strategy,
                )
            )
    out = []
    for claim, enc_a, strat_a, enc_b, strat_b in rows:
        stats = arm_difference(arm(enc_a, strat_a), arm(enc_b, strat_b), opts=opts)
        out.append(
            {
                "claim": claim,
                "a": f"{enc_a} {strat_a}",
                "b": f"{enc_b} {strat_b}",
                **stats,
                "verdict": verdict(stats, opts.min_seeds),
            }
        )
    return pd.DataFrame(out)


def skill_gains(scores: pd.DataFrame, info: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """Claim 4, where the gains fall: per (LLM, skill) paired difference norm_mean - last."""
    skills = _skills(scores)
    out = []
    for enc in info.loc[info["kind"] != "bidirectional", "encoder"]:
        a = scores[(scores["encoder"] == enc) & (scores["strategy"] == opts.best_strategy)]
        b = scores[(scores["encoder"] == enc) & (scores["strategy"] == opts.baseline_strategy)]
        for skill in ["overall", *skills]:
            stats = arm_difference(a, b, skill, opts)
            out.append({"encoder": enc, "skill": skill, **stats, "verdict": verdict(stats, opts.min_seeds)})
    return pd.DataFrame(out)


def prompt_following(scores: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """Each arm's score next to its shuffled-prompt floor (the same prompt judged on an image drawn for
    another prompt of its skill), and the difference: the credit earned by following the prompt.

    Why: an image can satisfy part of a prompt it was not drawn for (no blue squares, two shapes, a gray
    background), so a partial-credit score has a floor well above 0; only what lies above it measures
    prompt following. Paired per prompt and seed, with the two-level bootstrap CI. Empty when the runs
    were scored without the control (``t2istudy grid rescore`` adds it from their samples).
    """
    if "shuffled" not in scores.columns:
        return pd.DataFrame()
    scores = scores.dropna(subset=["shuffled"])
    skills = _skills(scores)
    out = []
    for (enc, strategy), arm in scores.groupby(["encoder", "strategy"], sort=False):
        for skill in ["overall", *skills]:
            matched, floor = _matrix(arm, skill), _matrix(arm, skill, "shuffled")
            above = _mean_ci(_split(matched - floor, arm, skill), opts)
            out.append(
                {
                    "encoder": enc,
                    "strategy": strategy,
                    "skill": skill,
                    "n_seeds": len(matched),
                    "score": _point(_split(matched, arm, skill)),
                    "floor": _point(_split(floor, arm, skill)),
                    "above_floor": above[0],
                    "ci_low": above[1],
                    "ci_high": above[2],
                }
            )
    return pd.DataFrame(out)


def paired_effect(treated: pd.DataFrame, control: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """treated - control, overall and per skill (task), on the seeds and prompts both have: for two ways
    of sampling the same trained models (prompts upsampled or as written), paired by seed and prompt, with
    the claims' CI and verdict. ``treated`` / ``control``: one arm's per-prompt scores each."""
    out = []
    for skill in ["overall", *_skills(treated)]:
        ma, mb = _paired_matrices(treated, control, skill)
        stats = _difference(ma, mb, treated, skill, opts)
        out.append(
            {
                "skill": skill,
                "treated": _point(_split(ma, treated, skill)) if ma.size else np.nan,
                "control": _point(_split(mb, control, skill)) if mb.size else np.nan,
                **stats,
                "verdict": verdict(stats, opts.min_seeds),
            }
        )
    return pd.DataFrame(out)


def upsampling_effect(
    root: str | Path, grid: str, baseline_grid: str, metric: str = "score", opts: Options = Options()
) -> pd.DataFrame:
    """Inference prompt upsampling's effect on both tiers: each arm of ``grid`` (runs sampled with
    ``prompt_upsampling``, reusing the models of ``baseline_grid``'s runs) against the same arm of
    ``baseline_grid``, paired by seed and prompt (:func:`paired_effect`). Empty when ``grid`` has no runs."""
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
        for (enc, strategy, rewriter), arm in treated.groupby(
            ["encoder", "strategy", "prompt_upsampling"], sort=False
        ):
            base = control[(control["encoder"] == enc) & (control["strategy"] == strategy)]
            table = paired_effect(arm, base, opts) if len(base) else pd.DataFrame()
            if len(table):
                out.append(table.assign(tier=tier, encoder=enc, strategy=strategy, rewriter=rewriter))
    if not out:
        return pd.DataFrame()
    table = pd.concat(out, ignore_index=True)
    first = ["tier", "encoder", "strategy", "rewriter"]
    return table[first + [c for c in table.columns if c not in first]]


SWEPT = ("encoder", "strategy", "seed")  # what may differ between runs compared under one protocol


def _protocols(root: str | Path, grid: str) -> dict[str, str]:
    """{run_id: its settings other than encoder, strategy and seed} for a grid's complete runs."""
    out = {}
    for run in run_results.find_runs(root, grid):
        record = read_json(run / "params.json")
        rest = {k: v for k, v in record.get("params", {}).items() if k not in SWEPT}
        out[record["run_id"]] = json.dumps(rest, sort_keys=True)
    return out


def _recipe_runs(
    root: str | Path, grid: str, baseline: str, baseline_grid: str | None, metric: str, tier: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and scores of ``grid``'s runs on ``tier``, strategies named by their recipe, plus the
    ``baseline`` runs of ``baseline_grid`` for the (encoder, seed) pairs the grid has no baseline run of."""
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
        tables.append((source, metrics, scores))
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
            mine, theirs = set(_protocols(root, grid).values()), _protocols(root, baseline_grid)
            theirs = {theirs[r] for r in extra_m["run_id"].unique()}
            if theirs != mine or len(mine) != 1:
                settings = [json.loads(v) for v in sorted(mine | theirs)]
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
) -> pd.DataFrame:
    """Released recipes under one protocol (issue 18), on both tiers: per (tier, encoder, recipe) the
    overall score over seeds with its two-level CI, the conditioning projection's parameter count (concat
    recipes widen it) and the paired difference to ``baseline`` on the same encoder, with its verdict and
    the baseline's own score on the seeds and prompts the difference pairs (``<baseline>_same_seeds``).
    A strategy is named by its recipe when its expansion is one (``norm_mean`` reads ``recipe:paper``).
    ``baseline_grid``: a grid whose ``baseline`` runs stand in for the grid's own where it has none, when
    every setting but encoder, strategy and seed is the same (small2's ``norm_mean`` runs are recipe:paper's);
    ``grids`` says where each arm's runs come from. Rows best first within each tier and encoder; empty
    when the grid has no complete runs."""
    out = []
    for tier in run_results.TIERS:
        metrics, scores = _recipe_runs(root, grid, baseline, baseline_grid, metric, tier)
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
            at_enc = scores[scores["encoder"] == enc]
            base = at_enc[at_enc["strategy"] == baseline]
            for row in arms[arms["encoder"] == enc].itertuples():
                is_base = row.strategy == baseline
                arm = at_enc[at_enc["strategy"] == row.strategy]
                stats, same_seeds = {}, np.nan
                if len(base) and not is_base:
                    paired_arm, paired_base = _paired_matrices(arm, base, None)
                    stats = _difference(paired_arm, paired_base, arm, None, opts)
                    # the baseline on the seeds and prompts the difference pairs it on: with one recipe
                    # seed, paper's seed 0 alone, which can sit far from paper's mean over its seeds
                    same_seeds = _point(_split(paired_base, arm, None))
                name = str(row.strategy)
                recipe = RECIPES.get(name.removeprefix("recipe:")) if name.startswith("recipe:") else None
                out.append(
                    {
                        "tier": tier,
                        "encoder": enc,
                        "recipe": name,
                        "system": recipe.system if recipe else "",
                        "n_seeds": int(row.n_seeds),
                        "score": row.mean,
                        "ci_low": row.ci_low,
                        "ci_high": row.ci_high,
                        "projection_params": width.get((enc, row.strategy), np.nan),
                        f"{baseline.removeprefix('recipe:')}_same_seeds": same_seeds,
                        f"diff_vs_{baseline.removeprefix('recipe:')}": stats.get("diff", np.nan),
                        "diff_low": stats.get("ci_low", np.nan),
                        "diff_high": stats.get("ci_high", np.nan),
                        "verdict": "baseline"
                        if is_base
                        else (verdict(stats, opts.min_seeds) if stats else "no baseline run"),
                        "grids": sources.get((enc, row.strategy), grid),
                    }
                )
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame(out)
    table["projection_params"] = table["projection_params"].astype("Int64")
    order = list(run_results.TIERS)
    return table.sort_values(
        ["tier", "encoder", "score"],
        key=lambda c: c.map(order.index) if c.name == "tier" else c,
        ascending=[True, True, False],
    ).reset_index(drop=True)


def provenance_note(provenance: pd.DataFrame) -> str:
    """A sentence for a table's caption when the compared runs ran with different code, versions or
    devices (``run_results.load_provenance``); "" when they agree or none recorded it."""
    recorded = provenance.drop(columns="run_id").notna().any(axis=1)
    if not recorded.any():
        return ""
    parts = []
    for column in provenance.columns.drop("run_id"):
        values = sorted({str(v) for v in provenance.loc[recorded, column]})
        if len(values) > 1:
            parts.append(f"{column} ({', '.join(values)})")
    if not recorded.all():
        parts.append(f"{int((~recorded).sum())} of {len(provenance)} runs predate provenance records")
    return " Compared runs differ in: " + "; ".join(parts) + "." if parts else ""


def tier_dir(figures_dir: str | Path, tier: str) -> Path:
    """Where a tier's tables and figures go: ``figures_dir`` itself for the held-out tier (the names the
    study has always written), ``figures_dir/<tier>/`` for another, under the same file names, so that the
    tiers never overwrite each other."""
    return Path(figures_dir) if tier == "heldout" else Path(figures_dir) / tier


def write_table(table: pd.DataFrame, out_dir: str | Path, stem: str, caption: str = "") -> list[Path]:
    """The same table as CSV (numbers), Markdown (RESULTS.md, GitHub) and LaTeX (papers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.md", out_dir / f"{stem}.tex"]
    table.to_csv(paths[0], index=False)
    shown = table.copy()
    for col in shown.columns:  # counts stay counts (tabulate's floatfmt would print 3 as 3.000)
        values = pd.to_numeric(shown[col], errors="coerce").dropna()
        is_count = str(col) == "n" or str(col).startswith("n_")  # float once a paper row adds a NaN
        whole = pd.api.types.is_numeric_dtype(shown[col]) and bool((values == values.round()).all())
        if pd.api.types.is_integer_dtype(shown[col]) or (is_count and whole):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
    text = (
        shown.astype(object)
        .where(shown.notna(), None)
        .to_markdown(index=False, floatfmt=".3f", missingval="")
    )
    paths[1].write_text((f"{caption}\n\n" if caption else "") + text + "\n", encoding="utf-8")
    latex = table.to_latex(
        index=False, float_format="%.3f", na_rep="", caption=caption or None, label=f"tab:{stem}"
    )
    paths[2].write_text(latex, encoding="utf-8")
    return paths


# ---------------------------------------------------------------------------------------------
# Figures (each saved by figure_files.save_figure: PNG + PDF with its numbers as CSV beside it)


def skill_bars(metrics: pd.DataFrame) -> tuple[plt.Figure, pd.DataFrame]:
    """Per-skill bar chart: one panel per encoder, bars per strategy, error bars = SD over seeds.
    On the GenEval-style tier the bars are its tasks and overall is each run's mean of task means."""
    unit = "task" if tier_of(metrics) == "geneval" else "skill"
    data = metrics[~metrics["skill"].isin(GROUPS[1:])][["encoder", "strategy", "seed", "skill", "mean"]]
    order = skill_order(data["skill"])
    grid = sns.catplot(
        data=data,
        x="skill",
        y="mean",
        hue="strategy",
        col="encoder",
        kind="bar",
        order=order,
        errorbar="sd",
        col_wrap=min(2, data["encoder"].nunique()),
        height=3.2,
        aspect=1.8,
    )
    grid.set_axis_labels("", f"score ({OURS})")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=45)
        ax.set_ylim(0, 1)
    grid.figure.suptitle(
        f"Per-{unit} scores, {tier_of(metrics)} tier (bars: mean over seeds; whiskers: SD over seeds)", y=1.02
    )
    return grid.figure, data


def failure_plot(shares: pd.DataFrame) -> tuple[plt.Figure, pd.DataFrame]:
    """GenEval-style images by how they failed (``scoring.failure_modes``): one panel per task, one stacked
    bar per arm, pooled over seeds. The ``pass`` segment is the task's verdict; the rest says which lever
    the failures call for (nothing drawn, the wrong number of objects, the wrong shapes, colour leakage)."""
    data = shares.assign(arm=shares["encoder"] + " " + shares["strategy"])
    tasks = [task for task in TASKS if task in set(data["task"])]
    fig, axes = plt.subplots(
        len(tasks), 1, figsize=(9, 1.2 + max(1.0, 0.32 * data["arm"].nunique()) * len(tasks)), sharex=True
    )
    axes = np.atleast_1d(axes)
    colours = dict(zip(FAILURES, sns.color_palette("tab10", len(FAILURES)), strict=True))
    for ax, task in zip(axes, tasks, strict=True):
        wide = data[data["task"] == task].pivot(index="arm", columns="failure", values="share")
        wide = wide[[f for f in FAILURES if f in wide.columns]].sort_index(ascending=False)
        left = np.zeros(len(wide))
        for reason in wide.columns:
            ax.barh(wide.index, wide[reason], left=left, color=colours[reason], label=reason)
            left += wide[reason].to_numpy()
        ax.set_title(task, loc="left", fontsize=10)
        ax.set_xlim(0, 1)
    axes[-1].set_xlabel("share of images (pooled over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=5, bbox_to_anchor=(0.5, 1.0), fontsize=8)
    fig.suptitle("How GenEval-style prompts fail, by task and arm (first reason per image)", y=1.03)
    fig.tight_layout()
    return fig, data


def scaling_plot(
    arms: pd.DataFrame, info: pd.DataFrame, tier: str = "heldout"
) -> tuple[plt.Figure, pd.DataFrame]:
    """Overall score vs encoder parameters (log x), CI error bars; ``tier`` names the benchmark tier in the
    title (``arms`` keeps no tier column). The paper's question 4 is about decoder sizes, so decoders of one
    strategy are joined by a line and a bidirectional encoder is an open marker beside them; the strategies
    are nudged apart on x so that their error bars do not hide one another."""
    data = arms[arms["skill"] == "overall"].merge(info, on="encoder").sort_values("params")
    layer_k = data["strategy"].str.fullmatch(r"layer:\d+")
    if layer_k.any() and data[layer_k].groupby("encoder").size().max() == 1:  # one middle layer per encoder
        data.loc[layer_k, "strategy"] = "layer:k"
    strategies = list(dict.fromkeys(data["strategy"]))
    nudge = {s: 10 ** (0.025 * (i - (len(strategies) - 1) / 2)) for i, s in enumerate(strategies)}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, strategy in enumerate(strategies):
        group = data[data["strategy"] == strategy]
        x = group["params"] * nudge[strategy]
        err = np.nan_to_num(
            np.vstack([group["mean"] - group["ci_low"], group["ci_high"] - group["mean"]]).clip(min=0)
        )
        decoder = (group["kind"] != "bidirectional").to_numpy()
        color = f"C{i}"
        ax.errorbar(
            x[decoder], group["mean"][decoder], yerr=err[:, decoder], marker="o", capsize=3, color=color,
            label=strategy,
        )  # fmt: skip
        if (~decoder).any():
            ax.errorbar(
                x[~decoder], group["mean"][~decoder], yerr=err[:, ~decoder], marker="o", mfc="white",
                capsize=3, color=color, ls="none", label=None if decoder.any() else strategy,
            )  # fmt: skip
    sizes = data.drop_duplicates("encoder")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xticks(
        sizes["params"],
        [f"{r.encoder}\n{r.params / 1e6:.0f}M" + ("\n(bidirectional)" if r.kind == "bidirectional" else "")
         for r in sizes.itertuples()],
        fontsize=7,
    )  # fmt: skip
    ax.set_xlim(sizes["params"].min() / 1.6, sizes["params"].max() * 1.6)
    ax.set_xlabel("encoder parameters (log scale)")
    ax.set_ylabel(f"overall score\n{OURS}")
    top = float(np.nanmax(data[["ci_high", "mean"]].to_numpy())) if len(data) else 1.0
    ax.set_ylim(0, min(1.0, max(0.25, 1.25 * top)))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="strategy", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Scaling: score vs encoder size, {tier} tier\n(CI over prompts and seeds)", fontsize=10)
    if data["encoder"].nunique() > 1:  # the paper's question 4 asks about size; these sizes are families
        ax.text(
            0.0,
            -0.3,
            "Confounded: each size is another model family (tokenizer, data, training recipe), "
            "so size and family cannot be told apart here. Open markers: a bidirectional encoder, not a "
            "decoder LLM.",
            transform=ax.transAxes,
            fontsize=7,
            va="top",
            wrap=True,
        )
    return fig, data


def claims_plot(
    table: pd.DataFrame, metric: str = "score", tier: str = "heldout"
) -> tuple[plt.Figure, pd.DataFrame]:
    """Forest plot of the paired differences behind each claim; ``tier`` names the tier in the axis label."""
    data = table.dropna(subset=["diff"]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(data), 2) + 1))
    y = np.arange(len(data))[::-1]
    outcome = data["verdict"].str.split(" ").str[0]  # "held (preliminary: 1 seed)" stays green, open marker
    colors = outcome.map({"held": "tab:green", "failed": "tab:red"}).fillna("tab:gray")
    preliminary = data["verdict"].str.contains("preliminary").to_numpy()
    ax.hlines(y, data["ci_low"], data["ci_high"], color=colors)
    ax.scatter(data["diff"][~preliminary], y[~preliminary], color=colors[~preliminary], zorder=3)
    ax.scatter(
        data["diff"][preliminary],
        y[preliminary],
        facecolors="white",
        edgecolors=colors[preliminary],
        zorder=3,
        label="preliminary (< 3 seeds)",
    )
    if preliminary.any():
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{a} - {b}" for a, b in zip(data["a"], data["b"], strict=True)], fontsize=8)
    ax.set_xlabel(f"paired difference in {metric}, {tier} tier (95% CI over prompts and seeds)")
    ax.set_title("The paper's claims at this scale (green: held, red: failed, grey: inconclusive)")
    return fig, data


def recipe_plot(table: pd.DataFrame, metric: str = "score") -> tuple[plt.Figure, pd.DataFrame]:
    """The recipe comparison (:func:`recipe_comparison`): one panel per tier, one row per recipe (best on
    average first), a point with its CI per encoder; the projection's parameter count beside each point,
    and an open diamond at the baseline's score on the seeds the recipe's difference pairs it on."""
    tiers = [t for t in run_results.TIERS if t in set(table["tier"])]
    order = table.groupby("recipe")["score"].mean().sort_values(ascending=False).index.tolist()
    encoders = list(dict.fromkeys(table["encoder"]))
    same_seeds = [c for c in table.columns if str(c).endswith("_same_seeds")]
    fig, axes = plt.subplots(
        1, len(tiers), figsize=(5.5 * len(tiers), 0.45 * len(order) + 1.6), sharey=True, squeeze=False
    )
    for ax, tier in zip(axes[0], tiers, strict=True):
        at_tier = table[table["tier"] == tier]
        for k, enc in enumerate(encoders):
            rows = at_tier[at_tier["encoder"] == enc].set_index("recipe").reindex(order)
            y = np.arange(len(order))[::-1] + (k - (len(encoders) - 1) / 2) * 0.22
            err = np.vstack([rows["score"] - rows["ci_low"], rows["ci_high"] - rows["score"]]).clip(min=0)
            bars = ax.errorbar(rows["score"], y, xerr=np.nan_to_num(err), fmt="o", capsize=2, label=enc)
            for column in same_seeds:  # where the paired difference is taken from, when it is not the mean
                ax.scatter(
                    rows[column],
                    y,
                    marker="D",
                    s=22,
                    facecolors="none",
                    edgecolors=bars[0].get_color(),
                    zorder=3,
                )
            right = rows[["ci_high", *same_seeds]].max(axis=1)  # the label clears the CI and the diamond
            for yy, x, width in zip(y, right, rows["projection_params"], strict=True):
                if pd.notna(width) and pd.notna(x):
                    ax.annotate(
                        f"{int(width) / 1e6:.2g}M",
                        (x, yy),
                        xytext=(3, 0),
                        textcoords="offset points",
                        fontsize=6,
                        va="center",
                        color="gray",
                    )
        ax.set_title(f"{tier} tier", fontsize=9)
        ax.set_xlabel(f"overall {metric} (95% CI over prompts and seeds)")
        ax.set_xlim(0, 1)
    systems = table.drop_duplicates("recipe").set_index("recipe")["system"]
    axes[0][0].set_yticks(
        np.arange(len(order))[::-1], [f"{r} ({systems[r]})" if systems[r] else r for r in order], fontsize=8
    )
    axes[0][-1].legend(title="encoder", fontsize=8, loc="lower right")
    marks = (
        f"; open diamond: {same_seeds[0].removesuffix('_same_seeds')} on the recipe's seeds"
        if same_seeds
        else ""
    )
    fig.suptitle(f"Released recipes under one protocol (grey: projection parameters{marks})", fontsize=10)
    fig.tight_layout()
    return fig, table


def upsampling_effect_plot(effect: pd.DataFrame, metric: str = "score") -> tuple[plt.Figure, pd.DataFrame]:
    """Forest plot of :func:`upsampling_effect`: upsampled - as written, per tier and skill (task)."""
    rows = effect.assign(a=effect["tier"] + " " + effect["skill"] + ": upsampled", b="as written")
    fig, data = claims_plot(rows, metric)
    ax = fig.axes[0]
    ax.set_xlabel(f"paired difference in {metric} (95% CI over prompts and seeds)")
    rewriters = ", ".join(sorted(effect["rewriter"].astype(str).unique()))
    ax.set_title(f"Inference prompt upsampling ({rewriters}), same trained models", fontsize=9)
    return fig, data


def layer_norm_plot(stats: pd.DataFrame) -> tuple[plt.Figure, pd.DataFrame]:
    """The layer-norm figure of notebooks/layer_norms.ipynb, redrawn from its CSV (its plot function)."""
    needed = {"encoder", "layer", "depth", "norm", "tokens", "mean", "max"}
    if not needed <= set(stats.columns):
        raise ValueError(
            f"The layer-norm table lacks columns {sorted(needed - set(stats.columns))}: pass the "
            f"layer_norms.csv written by notebooks/layer_norms.ipynb (t2istudy layer-norms)."
        )
    return plot_layer_norms(stats), stats
