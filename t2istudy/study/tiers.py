"""The benchmark tiers as data: each says how it makes its prompts, how it summarizes, how it labels groups.

Why: a run is read on every tier by one loop (`t2istudy.study.run.evaluate`), written by one writer
(`run_folder.write_record`: ``metrics["tiers"][name]`` and its ``scores_file``) and read back by one reader
(`run_folder.tier_stats`). The shapes benchmark has two tiers: the GenEval-style tier (seen compositions,
GenEval's six tasks) says whether the model draws what it was taught; the held-out tier (compositions no
caption contains) tests compositional generalization. GenAI-Bench is a tier of its own (VQAScore). A new
tier is one `Tier` in `TIERS` and its benchmark's entry in `BENCHMARKS`. Torch-free: the reader uses it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from t2istudy.scoring.summaries import summarize, summarize_geneval
from t2istudy.world.genai_bench import load_genai_bench
from t2istudy.world.shapes import PALETTE, ShapesWorld
from t2istudy.world.shapes_benchmark import make_benchmark
from t2istudy.world.shapes_geneval import make_geneval_tier


@dataclass(frozen=True)
class Tier:
    """One benchmark tier of a run."""

    name: str
    description: str  # for tables and errors: what it tests and how its overall is made
    make_prompts: Callable[[int | None, int], pd.DataFrame]  # (size, benchmark seed) -> id, prompt, spec...
    summarize: Callable[..., pd.DataFrame]  # (per-prompt table, column=) -> rows: groups and overall
    group_label: str  # what its groups are called ("skill", "task")
    group_column: str  # the per-prompt column naming each prompt's groups ("skills": tags joined by |)
    scores_file: str  # its per-prompt scores in the run folder
    size: str | None  # the RunConfig field with its prompts per group; None: the whole set
    samples: str  # its images under <run>/samples/ ("": the folder itself)
    scorer: str | None = None  # None: the run's scorer


TIERS = {
    "heldout": Tier(
        "heldout",
        "held-out compositions (GenAI-Bench's skills; overall = mean over prompts)",
        lambda n, seed: make_benchmark(n_per_skill=n, seed=seed),
        summarize,
        "skill",
        "skills",
        "scores.csv",
        "n_per_skill",
        "",
    ),
    "geneval": Tier(
        "geneval",
        "GenEval-style tier (six tasks; overall = mean of the six task means)",
        lambda n, seed: make_geneval_tier(n_per_task=n, seed=seed),
        summarize_geneval,
        "task",
        "task",
        "scores_geneval.csv",
        "geneval_per_task",
        "geneval",
        scorer="judge",
    ),
    "genai-bench": Tier(
        "genai-bench",
        "GenAI-Bench prompts scored by VQAScore (per skill, basic, advanced; overall = mean over prompts)",
        lambda n, seed: load_genai_bench(),
        summarize,
        "skill",
        "skills",
        "scores.csv",
        None,
        "",
    ),
}
BENCHMARKS = {"shapes": ("heldout", "geneval"), "genai-bench": ("genai-bench",)}  # benchmark -> its tiers
SHAPES_TIERS = BENCHMARKS["shapes"]  # the tiers the study's analysis compares, in its order


def get_tier(name: str) -> Tier:
    if name not in TIERS:
        raise ValueError(f"Unknown tier {name!r}: choose one of {', '.join(TIERS)}.")
    return TIERS[name]


def make_tier(tier: str, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` prompts per task (geneval) or per skill (heldout)."""
    return get_tier(tier).make_prompts(n, seed)


def summarize_tier(tier: str, table: pd.DataFrame, column: str = "score") -> pd.DataFrame:
    return get_tier(tier).summarize(table, column=column)


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
