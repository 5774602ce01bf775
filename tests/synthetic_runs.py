"""Synthetic run folders, written as notebooks/run.ipynb and the runner leave them, for the analysis tests.

Design (hand-computed numbers): per arm, both seeds score alike. GenEval-style tier: 8 prompts, 3 for
single_object and 1 for each other task; an arm passes every prompt of the tasks PASSED names and none other.
Held-out tier: 4 prompts (2 attribute, 2 counting), the first k pass.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from t2istudy import run_store
from t2istudy.scoring.summaries import summarize, summarize_geneval
from t2istudy.study import run_folder, runner
from t2istudy.study.grids import SCHEMA_VERSION, make_run_id
from t2istudy.world.shapes_geneval import TASKS, make_geneval_tier

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
FIXTURES = Path(__file__).parent / "fixtures"
# the figures notebook's side inputs: the fixture's layer norms and probe
FIGURE_INPUTS = {
    "layer_norms_csv": str(FIXTURES / "runs" / "layer_norms" / "default" / "layer_norms.csv"),
    "probe_dir": str(FIXTURES / "probe"),
}
GENEVAL_COUNTS = {"single_object": 3, **{t: 1 for t in TASKS[1:]}}
PASSED = {  # (encoder, strategy) -> the GenEval-style tasks it passes; k of 4 held-out prompts it passes
    ("gemma3-270m", "last"): ({"single_object"}, 1),
    ("gemma3-270m", "norm_mean"): ({"single_object", "two_object", "counting"}, 3),
    ("minilm-l6", "last"): ({"two_object"}, 0),
    ("minilm-l6", "norm_mean"): ({"two_object", "colors"}, 2),
}


def _geneval_table(passed: set[str]) -> pd.DataFrame:
    """The tier's real first prompts, so the failure reasons can read them: a passed prompt's image holds its
    ground-truth objects, a failed one's nothing (reason: empty)."""
    tier = make_geneval_tier(n_per_task=max(GENEVAL_COUNTS.values()))
    table = pd.concat([tier[tier["task"] == task].head(n) for task, n in GENEVAL_COUNTS.items()])
    table = table[["id", "prompt", "task", "scene"]].reset_index(drop=True)
    table["score"] = table["task"].isin(passed).astype(float)
    table["detected"] = [
        ", ".join(f"{o.color} {o.shape}" for o in scene.objects) if score else ""
        for scene, score in zip(table["scene"], table["score"], strict=True)
    ]
    table = table.drop(columns="scene")
    return table.assign(fraction=0.5 + 0.5 * table["score"], score_shuffled=0.0, fraction_shuffled=0.5)


def _heldout_table(k: int) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "id": ["attribute-0001", "attribute-0002", "counting-0001", "counting-0002"],
            "prompt": ["a", "b", "c", "d"],
            "skills": [("attribute",), ("attribute",), ("counting",), ("counting",)],
        }
    )
    table["score"] = (np.arange(4) < k).astype(float)
    return table.assign(fraction=0.5 + 0.5 * table["score"], score_shuffled=0.0, fraction_shuffled=0.5)


def write_runs(
    root: Path,
    grid: str = "tiers",
    geneval: bool = True,
    passed: dict | None = None,
    extras: dict | None = None,
    common: dict | None = None,
) -> Path:
    """One run folder per (encoder, strategy, seed), as notebooks/run.ipynb and the runner leave it;
    ``passed`` as PASSED (its default), ``extras``: (encoder, strategy) -> more metrics.json entries,
    ``common``: more parameters of every run (not in its id)."""
    for (encoder, strategy), (tasks, k) in (passed or PASSED).items():
        for seed in (0, 1):
            params = {"encoder": encoder, "strategy": strategy, "seed": seed}
            run_id = make_run_id(params)
            params = {**(common or {}), **params}
            out = root / grid / run_id
            record = {"schema_version": SCHEMA_VERSION, "grid": grid, "run_id": run_id, "params": params}
            out.mkdir(parents=True)
            run_store.write_json(out / "params.json", {**record, "notebook": "notebooks/run.ipynb"})
            held = _heldout_table(k)
            extra = (extras or {}).get((encoder, strategy), {})
            results = {"heldout": (held, summarize(held, n_boot=50))}
            if geneval:
                table = _geneval_table(tasks)
                results["geneval"] = (table, summarize_geneval(table, n_boot=50))
            run_folder.write_record(out, results, {"train_seconds": 1.0, **extra})
            run_store.write_json(out / "DONE", {"finished": "2026-01-01T00:00:00+00:00", "seconds": 1.0})
    return root


def execute_analysis(
    runs: Path, grid: str, figures_dir: Path, work: Path, tiers=("heldout", "geneval")
) -> None:
    """Both analysis notebooks on each tier, as the study runs them (the fixture's layer norms and probe),
    each into its own folder under ``work``; fails naming the notebook that did not finish."""
    common = {"runs_dir": str(runs), "grid": grid, "figures_dir": str(figures_dir)}
    extra = FIGURE_INPUTS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tier in tiers:
            for name, params in (("tables", {}), ("figures", extra)):
                out = work / "analysis" / grid / f"{name}-{tier}"
                params = {**common, **params, "tier": tier}
                result = runner.execute_notebook(NOTEBOOKS / f"analysis_{name}.ipynb", out, params)
                assert result.state == "done", (tier, name, result.error)
