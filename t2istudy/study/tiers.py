"""The shapes benchmark's two tiers, sampled and judged for one trained model.

Why: a run is read on both tiers. The GenEval-style tier (seen compositions, GenEval's six tasks) says
whether the model draws what it was taught; the held-out tier (compositions no caption contains) tests
compositional generalization. Both are all-or-nothing per prompt; the summaries differ as their sources
do (GenEval: overall = mean of six task means; GenAI-Bench: per skill, basic, advanced, overall).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from t2istudy.diffusion import sample
from t2istudy.scoring.scorers import get_scorer
from t2istudy.scoring.summaries import summarize, summarize_geneval
from t2istudy.world.shapes_benchmark import make_benchmark
from t2istudy.world.shapes_geneval import make_geneval_tier

TIERS = ("geneval", "heldout")


def make_tier(tier: str, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` prompts per task (geneval) or per skill (heldout)."""
    if tier == "geneval":
        return make_geneval_tier(n_per_task=n, seed=seed)
    if tier == "heldout":
        return make_benchmark(n_per_skill=n, seed=seed)
    raise ValueError(f"Unknown tier {tier!r}: choose one of {', '.join(TIERS)}.")


def summarize_tier(tier: str, table: pd.DataFrame, column: str = "score") -> pd.DataFrame:
    if tier == "geneval":
        return summarize_geneval(table, column=column)
    return summarize(table, column=column)


def evaluate_tiers(
    train_dir: str | Path,
    sizes: dict[str, int],
    *,
    out_dir: str | Path | None = None,
    sample_seed: int = 0,
    benchmark_seed: int = 0,
    **sample_options,
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{tier: (per-prompt judge table, summary)} for a finished training run.

    ``sizes`` maps each tier to its prompts per task / skill, e.g. ``{"geneval": 50, "heldout": 125}``.
    Samples go to ``<out_dir>/samples/<tier>/`` when ``out_dir`` is given; ``sample_options`` pass to
    :func:`t2istudy.sample.sample_run` (guidance_scale, sampler, steps, ...).
    """
    results = {}
    for tier, n in sizes.items():
        bench = make_tier(tier, n, benchmark_seed)
        images = sample.sample_run(
            train_dir,
            bench["prompt"].tolist(),
            seeds=[sample_seed],
            out_dir=None if out_dir is None else Path(out_dir) / "samples" / tier,
            **sample_options,
        )
        table = get_scorer("judge").score(images, bench)
        results[tier] = (table, summarize_tier(tier, table))
    return results
