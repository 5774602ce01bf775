"""The statistics of the analysis: arms over seeds, paired differences, verdicts; computed from ``runs/`` alone.

Numbers are per arm = (encoder, strategy) over its seeds. CIs resample prompts *and* seeds (a
two-level bootstrap, ``scoring.bootstrap``): with a handful of seeds, prompt-only CIs would hide
run-to-run variance, which the pilot found could be as large as the effect under study. Differences
between two arms are paired by prompt and by seed: seed s of every arm saw the same training batches,
noise and sampling noise.

Two benchmark tiers (``run_results.TIERS``), each loaded with its ``tier`` column: the held-out tier's
overall is the mean over prompts, the GenEval-style tier's the mean of its six task means (GenEval's rule,
so a task's weight does not depend on its prompt count); its CIs resample prompts within each task, and
seeds. The tier's tasks stand where the held-out tier's skills do, so every function reads either tier.

Every difference carries the bootstrap's p-value beside its CI, and tables with verdicts call them on
Holm's correction over their family; runs beyond a grid's seed budget are exploratory
(:mod:`t2istudy.analysis.calls`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from t2istudy.analysis.calls import (
    DECLARED,
    EXPLORATORY,
    adjust,
    declared,
    has_exploratory,
    seeds_declared,
    verdict,
)
from t2istudy.scoring.bootstrap import mean_of_group_means_test_over_seeds_and_prompts
from t2istudy.scoring.paired_binding import BINDING
from t2istudy.text.registry import encoder_facts, encoder_family
from t2istudy.world.genai_bench import SKILL_GROUPS
from t2istudy.world.shapes_geneval import EXTRA_TASKS, TASKS

GROUPS = ("overall", "basic", "advanced")
# GenEval-style task groups read like the held-out tier's skill groups: "binding", the mean of the three
# binding tasks' means (issue 36's measure of whether a model binds; `scoring.paired_binding.BINDING`)
GENEVAL_GROUPS = {"binding": BINDING}


@dataclass(frozen=True)
class Options:
    """Defaults of the analysis in one place."""

    n_boot: int = 2000  # resamples for an arm's CI
    # resamples for a difference's CI and p-value: at p ~ 0.005 (a Holm threshold of 14 calls is
    # 0.05 / 14 = 0.0036) one Monte-Carlo standard error is ~0.0007, so a verdict does not turn on the draw
    n_boot_test: int = 20000
    seed: int = 0
    level: float = 0.95
    baseline_strategy: str = "last"  # the paper's baseline: last-layer embeddings
    best_strategy: str = "norm_mean"  # the paper's proposal: layer-normalized mean
    plain_mean: str = "mean"
    # Below min_seeds a verdict is marked preliminary: seed variance is under-sampled.
    min_seeds: int = 3
    bidirectional_strategy: str = "last"  # the paper's T5-XXL baseline uses its last layer


def encoder_info(metrics: pd.DataFrame, arms: Collection[tuple[str, str]] = ()) -> pd.DataFrame:
    """Encoder -> parameters and kind, from what runs recorded, else the encoder registry's facts; the
    encoders of ``arms`` (a grid's declared (encoder, strategy) arms, ``calls.declared_arms``) with no run
    yet follow, so that a partial grid's families count their calls as pending."""
    rows = []
    landed = set(metrics["encoder"])
    pending = sorted({str(encoder) for encoder, _ in arms} - landed)
    groups = [*metrics.groupby("encoder"), *((encoder, metrics.iloc[:0]) for encoder in pending)]
    for encoder, group in groups:
        params = group["encoder_params"].dropna() if "encoder_params" in group else pd.Series(dtype=float)
        kind = group["encoder_kind"].dropna() if "encoder_kind" in group else pd.Series(dtype=str)
        known_params, known_kind = encoder_facts(str(encoder))
        rows.append(
            {
                "encoder": encoder,
                "params": float(params.iloc[0]) if len(params) else known_params,
                "kind": str(kind.iloc[0]) if len(kind) else known_kind,
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
        wanted = set({**SKILL_GROUPS, **GENEVAL_GROUPS}.get(skill, (skill,)))
        scores = scores[
            scores["skills"].fillna("").astype(str).str.split("|").map(lambda tags: bool(wanted & set(tags)))
        ]
    if scores.empty:  # an arm not landed: boolean indexing an empty frame would select columns instead
        return pd.DataFrame()
    return scores.pivot_table(index="seed", columns="id", values=column, aggfunc="mean")


def tier_of(table: pd.DataFrame) -> str:
    """The tier of a table from ``run_results.load_metrics`` / ``load_scores`` (their ``tier`` column);
    "heldout" for a table without one (built by hand, or loaded before tiers existed)."""
    tiers = table["tier"].dropna().unique() if "tier" in table.columns else []
    if len(tiers) > 1:
        raise ValueError(f"The table mixes tiers {sorted(tiers)}: analyse one tier at a time.")
    return str(tiers[0]) if len(tiers) else "heldout"


def split(matrix: pd.DataFrame, scores: pd.DataFrame, skill: str | None) -> list[pd.DataFrame]:
    """The groups whose mean of means is the score on ``skill``: the whole [seed x prompt] matrix, except
    for the GenEval-style tier's overall, which is the mean of GenEval's six task means (one matrix per
    task; a task reported beside them, ``EXTRA_TASKS``, stays out of it, as in the runs' own summaries) and
    a task group's (``GENEVAL_GROUPS``: the mean of its tasks' means)."""
    if skill not in (None, "overall", *GENEVAL_GROUPS) or tier_of(scores) != "geneval":
        return [matrix]
    task = scores.drop_duplicates("id").set_index("id")["skills"].reindex(matrix.columns)
    return [matrix.loc[:, (task == t).to_numpy()] for t in task.unique() if t not in EXTRA_TASKS]


def point(groups: list[pd.DataFrame]) -> float:
    """The mean of the groups' means (the plain mean for one group)."""
    return float(np.mean([np.nanmean(g.to_numpy()) for g in groups]))


def _mean_test(groups: list[pd.DataFrame], opts: Options, n_boot: int) -> tuple[float, float, float, float]:
    """(mean, low, high, p) of the mean of the groups' means (see `split`), resampling seeds and prompts
    within each group with the analysis' bootstrap settings; one group is the plain two-level bootstrap.
    p: the two-sided bootstrap p-value for "the mean is 0", from the same resamples as the CI."""
    arrays = [g.to_numpy() for g in groups]
    return mean_of_group_means_test_over_seeds_and_prompts(arrays, n_boot, opts.seed, opts.level)


def _mean_ci(groups: list[pd.DataFrame], opts: Options) -> tuple[float, float, float]:
    """(mean, low, high) of :func:`_mean_test` with the arms' resamples (``opts.n_boot``)."""
    return _mean_test(groups, opts, opts.n_boot)[:3]


def arm_difference(
    a: pd.DataFrame, b: pd.DataFrame, skill: str | None = None, opts: Options = Options()
) -> dict:
    """Mean of (arm a - arm b) over the seeds and prompts both have, paired by seed and prompt, with a CI
    resampling seeds and prompts (unlike `scoring.summaries.paired_difference`: one run each, prompts only).
    On the GenEval-style tier the overall difference is that of the task means' means (GenEval's rule)."""
    return difference(*paired_matrices(a, b, skill), a, skill, opts)


def paired_matrices(a: pd.DataFrame, b: pd.DataFrame, skill: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The [seed x prompt] matrices of arms a and b on the seeds and prompts both have."""
    ma, mb = _matrix(a, skill), _matrix(b, skill)
    seeds, prompts = ma.index.intersection(mb.index), ma.columns.intersection(mb.columns)
    return ma.loc[seeds, prompts], mb.loc[seeds, prompts]


def difference(ma: pd.DataFrame, mb: pd.DataFrame, a: pd.DataFrame, skill: str | None, opts: Options) -> dict:
    """Mean, CI and p-value of ma - mb (paired matrices; ``a``'s scores tell the tier's overall rule)."""
    n = {"n_seeds": ma.shape[0], "n_prompts": ma.shape[1]}
    if ma.size == 0:
        return {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, **n}
    mean, low, high, p = _mean_test(split(ma - mb, a, skill), opts, opts.n_boot_test)
    return {"diff": mean, "ci_low": low, "ci_high": high, "p": p, **n}


# A declared call whose runs have not landed: no difference, and p = 1 so that it still counts in Holm's m.
PENDING = {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": 1.0, "n_seeds": 0}


def pairs(a: pd.DataFrame, b: pd.DataFrame, seeds) -> str:
    """The run ids a difference pairs, "run_a+run_b" per seed joined by ";" (for provenance marks)."""
    ids_a = a.drop_duplicates("seed").set_index("seed")["run_id"] if "run_id" in a else pd.Series(dtype=str)
    ids_b = b.drop_duplicates("seed").set_index("seed")["run_id"] if "run_id" in b else pd.Series(dtype=str)
    return ";".join(f"{ids_a.get(s, '')}+{ids_b.get(s, '')}" for s in seeds)


def arm_table(metrics: pd.DataFrame, scores: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """One row per (encoder, strategy, skill): mean over seeds, seed SD, two-level bootstrap CI (of the
    task means' mean for the GenEval-style tier's overall, as its runs' metrics.json compute it), on the
    seeds declared in advance; ``n_exploratory``: the arm's seeds beyond its budget, left out here."""
    extra = metrics[metrics["exploratory"].astype(bool)] if has_exploratory(metrics) else metrics.iloc[:0]
    metrics, scores = declared(metrics), declared(scores)
    table = arm_means(metrics)
    beyond = extra.groupby(["encoder", "strategy"])["seed"].nunique()
    table["n_exploratory"] = [int(beyond.get((r.encoder, r.strategy), 0)) for r in table.itertuples()]
    cis = []
    for row in table.itertuples():
        arm = scores[(scores["encoder"] == row.encoder) & (scores["strategy"] == row.strategy)]
        matrix = _matrix(arm, row.skill) if len(arm) else pd.DataFrame()
        cis.append(_mean_ci(split(matrix, arm, row.skill), opts)[1:] if matrix.size else (np.nan, np.nan))
    table[["ci_low", "ci_high"]] = pd.DataFrame(cis, index=table.index)
    return table


def skill_order(skills) -> list[str]:
    """Groups first, then the skills in name order (the GenEval-style tier's tasks in GenEval's order)."""
    rest = sorted(
        (s for s in set(skills) if s not in GROUPS),
        key=lambda s: (TASKS.index(s) if s in TASKS else len(TASKS), s),
    )
    return [g for g in GROUPS if g in set(skills)] + rest


def skills_of(scores: pd.DataFrame) -> list[str]:
    """The skill tags present in per-prompt scores (the tasks, on the GenEval-style tier)."""
    return skill_order({t for tags in scores["skills"].dropna() for t in str(tags).split("|") if t})


def claims(
    scores: pd.DataFrame,
    info: pd.DataFrame,
    opts: Options = Options(),
    arms: Collection[tuple[str, str]] = (),
) -> pd.DataFrame:
    """The paper's claims as paired differences (a - b) with CIs, p-values and a raw verdict per encoder, on
    the declared seeds (``design`` = declared); a call whose arms ran seeds beyond their budget is repeated
    on every seed as an exploratory row. :func:`claims_family` calls them on Holm's correction.

    A call is in the family when the grid declares both its arms (``arms``; without them, when both
    strategies ran): one not landed yet reads "not run" and counts with p = 1, so a partial grid's verdicts
    are corrected for every call the complete grid will make (pass ``encoder_info(metrics, arms)``)."""
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
    every = scores
    scores = declared(scores)
    run_strategies = set(scores["strategy"])
    out = []
    for claim, enc_a, strat_a, enc_b, strat_b in rows:
        designs = [(DECLARED, arm)]
        if has_exploratory(every[every["encoder"].isin([enc_a, enc_b])]):
            designs.append(
                (EXPLORATORY, lambda e, s: every[(every["encoder"] == e) & (every["strategy"] == s)])
            )
        designed = _designed(arms, run_strategies, (enc_a, strat_a), (enc_b, strat_b))
        for design, pick in designs:
            a, b = pick(enc_a, strat_a), pick(enc_b, strat_b)
            row = {"claim": claim, "a": f"{enc_a} {strat_a}", "b": f"{enc_b} {strat_b}", "design": design}
            row.update(_call_or_pending(a, b, None, opts, designed and design == DECLARED))
            if design == DECLARED:
                row["seeds_declared"] = seeds_declared(arms, (enc_a, strat_a), (enc_b, strat_b))
            if design == DECLARED or row["n_seeds"] > out[-1]["n_seeds"]:  # only when it adds seeds
                out.append({**row, "verdict": verdict({**row, "p_holm": np.nan}, opts.min_seeds)})
    return pd.DataFrame(out)


def claims_family(
    scores_by_tier: dict[str, pd.DataFrame],
    info: pd.DataFrame,
    opts: Options = Options(),
    arms: Collection[tuple[str, str]] = (),
) -> pd.DataFrame:
    """:func:`claims` on every tier given, as one family (``calls.FAMILIES["claims"]``): a ``tier`` column,
    ``p_holm`` over every declared call of every tier, and the verdicts called on it."""
    return _called_over_tiers(scores_by_tier, lambda scores: claims(scores, info, opts, arms), opts)


def _designed(arms: Collection[tuple[str, str]], run_strategies: set[str], *sides: tuple[str, str]) -> bool:
    """Whether a call on these (encoder, strategy) sides belongs to its family: the grid declares every
    side (``arms``), or, with no declared arms (a fixture's runs), every side's strategy ran."""
    if arms:
        return set(sides) <= {(str(e), str(s)) for e, s in arms}
    return {strategy for _, strategy in sides} <= run_strategies


def _called_over_tiers(scores_by_tier: dict[str, pd.DataFrame], table_of, opts: Options) -> pd.DataFrame:
    """One family over every tier given: each tier's table (``table_of(scores)``) with a ``tier`` column,
    Holm's correction over all their rows. Empty when no tier has a row."""
    tables = [t.assign(tier=tier) for tier, scores in scores_by_tier.items() if len(t := table_of(scores))]
    return adjust(pd.concat(tables, ignore_index=True), opts.min_seeds) if tables else pd.DataFrame()


def family_pairs(info: pd.DataFrame) -> list[tuple[str, str]]:
    """(smaller, larger) decoder LLMs of one family (`text.registry.encoder_family`), each size against the
    next one up; encoders of unknown size are left out. Empty when no family has two sizes in the runs."""
    known = info[(info["kind"] != "bidirectional") & info["params"].notna()].sort_values("params")
    families = known.groupby(known["encoder"].map(encoder_family), sort=False)["encoder"]
    return [pair for _, sizes in families for pair in zip(sizes.iloc[:-1], sizes.iloc[1:], strict=True)]


def family_scaling(scores: pd.DataFrame, info: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """The paper's question 4 within one family, where the gains fall: per (pair of sizes, strategy, skill)
    the paired difference larger - smaller on the declared seeds, called on Holm's correction over the
    table (``calls.FAMILIES["family_scaling"]``). Empty when no family has two sizes in the runs."""
    table = _larger_minus_smaller(scores, info, opts, ["overall", *skills_of(scores)])
    return adjust(table, opts.min_seeds) if len(table) else table


def claim4_family(
    scores_by_tier: dict[str, pd.DataFrame], info: pd.DataFrame, opts: Options = Options()
) -> pd.DataFrame:
    """Claim 4, "the larger model of a family is better": larger - smaller overall, per pair and strategy,
    on every tier given as one family (``calls.FAMILIES["claim4"]``), with a ``tier`` column."""
    return _called_over_tiers(
        scores_by_tier, lambda scores: _larger_minus_smaller(scores, info, opts, ["overall"]), opts
    )


def _larger_minus_smaller(
    scores: pd.DataFrame, info: pd.DataFrame, opts: Options, skills: list[str]
) -> pd.DataFrame:
    """Rows of larger - smaller (paired by seed and prompt) per family pair, strategy and skill.

    A (pair, strategy) whose runs have not landed on one side is a pending call of the declared family: its
    rows read "not run" and count in Holm's correction with p = 1, so a partial grid's verdicts are never
    less corrected than the complete grid's will be."""
    scores = declared(scores)
    out = []
    for smaller, larger in family_pairs(info):
        for strategy in dict.fromkeys(scores["strategy"]):
            a = scores[(scores["encoder"] == larger) & (scores["strategy"] == strategy)]
            b = scores[(scores["encoder"] == smaller) & (scores["strategy"] == strategy)]
            pair = {"family": encoder_family(larger), "larger": larger, "smaller": smaller}
            for skill in skills:
                out.append(
                    {**pair, "strategy": strategy, "skill": skill, **_call_or_pending(a, b, skill, opts)}
                )
    return pd.DataFrame(out)


def _call_or_pending(
    a: pd.DataFrame, b: pd.DataFrame, skill: str | None, opts: Options, designed: bool = True
) -> dict:
    """The paired difference a - b with its run ids; when a side has no run, :data:`PENDING` for a call the
    grid designs, or no p-value (outside the family) for one it does not."""
    if a.empty or b.empty:
        return {**PENDING, "p": PENDING["p"] if designed else np.nan, "n_prompts": 0, "pairs": ""}
    ma, mb = paired_matrices(a, b, skill)
    return {**difference(ma, mb, a, skill, opts), "pairs": pairs(a, b, ma.index)}


def skill_gains(
    scores: pd.DataFrame,
    info: pd.DataFrame,
    opts: Options = Options(),
    arms: Collection[tuple[str, str]] = (),
) -> pd.DataFrame:
    """Claim 4, where the gains fall: per (LLM, skill) paired difference norm_mean - last, on the declared
    seeds, called on Holm's correction over the table (``calls.FAMILIES["skill_gains"]``); ``arms`` as in
    :func:`claims`."""
    scores = declared(scores)
    skills = skills_of(scores)
    run_strategies = set(scores["strategy"])
    out = []
    for enc in info.loc[info["kind"] != "bidirectional", "encoder"]:
        a = scores[(scores["encoder"] == enc) & (scores["strategy"] == opts.best_strategy)]
        b = scores[(scores["encoder"] == enc) & (scores["strategy"] == opts.baseline_strategy)]
        sides = (enc, opts.best_strategy), (enc, opts.baseline_strategy)
        designed, owed = _designed(arms, run_strategies, *sides), seeds_declared(arms, *sides)
        for skill in ["overall", *skills]:  # an LLM's arm not landed yet is a pending call of the family
            call = _call_or_pending(a, b, skill, opts, designed)
            out.append({"encoder": enc, "skill": skill, **call, "seeds_declared": owed})
    return adjust(pd.DataFrame(out), opts.min_seeds) if out else pd.DataFrame()


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
    scores = declared(scores).dropna(subset=["shuffled"])
    skills = skills_of(scores)
    out = []
    for (enc, strategy), arm in scores.groupby(["encoder", "strategy"], sort=False):
        for skill in ["overall", *skills]:
            matched, floor = _matrix(arm, skill), _matrix(arm, skill, "shuffled")
            above = _mean_ci(split(matched - floor, arm, skill), opts)
            out.append(
                {
                    "encoder": enc,
                    "strategy": strategy,
                    "skill": skill,
                    "n_seeds": len(matched),
                    "score": point(split(matched, arm, skill)),
                    "floor": point(split(floor, arm, skill)),
                    "above_floor": above[0],
                    "ci_low": above[1],
                    "ci_high": above[2],
                }
            )
    return pd.DataFrame(out)


def paired_effect(
    treated: pd.DataFrame,
    control: pd.DataFrame,
    opts: Options = Options(),
    skills: list[str] | None = None,
) -> pd.DataFrame:
    """treated - control, overall and per skill (task), on the seeds and prompts both have: for two ways
    of sampling the same trained models (prompts upsampled or as written), or one arm under two protocols,
    paired by seed and prompt, with the claims' CI, p-value and raw verdict (``comparisons`` calls a family
    of them on Holm's correction). ``treated`` / ``control``: one arm's per-prompt scores each, declared
    seeds used. ``skills``: the rows (a skill, task or group); overall and every skill when None."""
    treated, control = declared(treated), declared(control)
    out = []
    for skill in skills or ["overall", *skills_of(treated)]:
        ma, mb = paired_matrices(treated, control, skill)
        stats = difference(ma, mb, treated, skill, opts)
        out.append(
            {
                "skill": skill,
                "treated": point(split(ma, treated, skill)) if ma.size else np.nan,
                "control": point(split(mb, control, skill)) if mb.size else np.nan,
                **stats,
                "pairs": pairs(treated, control, ma.index),
                "verdict": verdict(stats, opts.min_seeds),
            }
        )
    return pd.DataFrame(out)
