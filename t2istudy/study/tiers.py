"""The shapes benchmark's two tiers, sampled and judged for one trained model.

Why: a run is read on both tiers. The GenEval-style tier (seen compositions, GenEval's six tasks) says
whether the model draws what it was taught; the held-out tier (compositions no caption contains) tests
compositional generalization. Both are all-or-nothing per prompt; the summaries differ as their sources
do (GenEval: overall = mean of six task means; GenAI-Bench: per skill, basic, advanced, overall).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from t2istudy.diffusion import sample
from t2istudy.scoring.scorers import get_scorer
from t2istudy.scoring.summaries import summarize, summarize_geneval
from t2istudy.world.shapes import PALETTE, ShapesWorld
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


def make_validation_split(n: int = 200, seed: int = 10_000, p_colourless: float = 0.0) -> pd.DataFrame:
    """Training-distribution prompts for tuning the guidance scale: captions of fresh training-world scenes
    (never a held-out composition, never a benchmark prompt), judged on the counts they state.

    Spec: the exact count of every (colour, shape) kind and the total, plus the background when the
    caption names it. With ``p_colourless`` that share of captions names the shapes without their colours
    (the world's colourless wording, `ShapesWorld.p_colourless`), judged on the count of every shape
    instead. Tuning on this split keeps both benchmark tiers untouched.
    """
    world = ShapesWorld(seed=seed, p_colourless=p_colourless)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        scene, text = world.sample(rng)
        words = text.replace(",", " ").split()
        named = any(colour in words for colour in PALETTE)
        kinds = Counter((o.color if named else None, o.shape) for o in scene.objects)
        cons = [{"type": "count", "color": c, "shape": s, "op": "==", "n": k} for (c, s), k in kinds.items()]
        cons.append({"type": "count", "color": None, "shape": None, "op": "==", "n": len(scene.objects)})
        if scene.background in words:
            cons.append({"type": "background", "color": scene.background})
        rows.append(
            {
                "id": f"val-{i:04d}",
                "prompt": text,
                "skills": ("attribute",),
                "spec": {"constraints": cons},
                "scene": scene,
            }
        )
    return pd.DataFrame(rows)


def tune_guidance(
    train_dir: str | Path, scales: list[float], n: int = 200, p_colourless: float = 0.0, **sample_options
) -> pd.DataFrame:
    """The validation verdict at each guidance scale (rows: scale, mean, n); pick the best, then fix it."""
    bench = make_validation_split(n, p_colourless=p_colourless)
    rows = []
    for scale in scales:
        images = sample.sample_run(
            train_dir, bench["prompt"].tolist(), guidance_scale=scale, **sample_options
        )
        table = get_scorer("judge", shuffled_control=False).score(images, bench)
        rows.append(
            {
                "guidance_scale": scale,
                "verdict": float(table["score"].mean()),
                "fraction": float(table["fraction"].mean()),
                "n": len(table),
            }
        )
    return pd.DataFrame(rows)
