"""A study run's record in its folder (`t2istudy.run_store` owns the layout, the markers and the lock).

One writer (:func:`write_record`) puts every benchmark tier under ``metrics["tiers"][name]`` as
``{"overall": stats, "groups": {group: stats}}`` beside the tier's per-prompt ``scores_file``; one reader
(:func:`read_metrics`, :func:`tier_stats`) reads it back. Runs written before every tier lived there (the
held-out tier at metrics.json's top level, the GenEval-style tier's groups under ``tasks``) are read through
the same reader, unchanged on disk. Torch-free: `grid status` and the analysis read through it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pandas as pd

from t2istudy.run_store import METRICS, PARAMS, CorruptFile, now, read_json, write_json
from t2istudy.study.grids import SCHEMA_VERSION, RunSpec
from t2istudy.study.provenance import provenance
from t2istudy.study.tiers import get_tier

__all__ = [
    "CorruptFile",
    "check_schema",
    "params_record",
    "read_json",
    "read_metrics",
    "tier_stats",
    "write_record",
]
STATS = ("mean", "ci_low", "ci_high")


def check_schema(run_dir: Path) -> None:
    """A run written by another schema version cannot be mixed with new ones: say so and how to fix it."""
    params = Path(run_dir) / PARAMS
    if not params.exists():
        return
    version = read_json(params).get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{run_dir} was written with run schema version {version}, but this t2istudy uses "
            f"{SCHEMA_VERSION}. Move that runs/ directory aside (or delete it) and run the grid again."
        )


def params_record(spec: RunSpec) -> dict[str, Any]:
    """params.json of a run the runner starts: the grid's parameters (not the defaults) and provenance."""
    return {
        "schema_version": SCHEMA_VERSION,
        "grid": spec.grid,
        "run_id": spec.run_id,
        "notebook": relative(spec.notebook),
        "params": spec.params,
        "started": now(),
        "host": socket.gethostname(),
        "provenance": provenance(),
    }


def relative(path: str) -> str:
    """``path`` relative to the working directory (the repository root under the CLI): no machine's path."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path


def write_record(
    out_dir: str | Path,
    results: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
    extra: dict[str, Any] | None = None,
) -> Path:
    """metrics.json and every tier's per-prompt scores; ``results``: tier -> (per-prompt table, summary).

    The summary is the tier's own (`Tier.summarize`): rows of groups and ``overall`` with columns n, mean,
    ci_low, ci_high. ``extra`` (training time, input scale, sizes, ...) is stored as it is.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiers = {}
    for name, (scores, summary) in results.items():
        tier = get_tier(name)
        _scores_table(scores, tier.group_column).to_csv(out_dir / tier.scores_file, index=False)
        rows = summary.set_index("skill") if "skill" in summary.columns else summary
        stats = {
            str(group): {"n": int(row["n"]), **{k: float(row[k]) for k in STATS}}
            for group, row in rows.iterrows()
        }
        if "overall" not in stats:
            raise ValueError(
                f"The {name} summary has no 'overall' row: pass the tier's own summary (Tier.summarize)."
            )
        overall = stats.pop("overall")
        aggregates = sorted(stats, key=lambda g: g not in ("basic", "advanced"))  # as runs always listed them
        tiers[name] = {"overall": overall, "groups": {g: stats[g] for g in aggregates}}
    write_json(out_dir / METRICS, {"schema_version": SCHEMA_VERSION, "tiers": tiers, **(extra or {})})
    return out_dir / METRICS


def _scores_table(scores: pd.DataFrame, group_column: str) -> pd.DataFrame:
    """The per-prompt table as CSV holds it: skill tags joined by '|', the prompt's spec and scene left out,
    and the skill tags too where the tier groups by another column (the GenEval-style tier's task)."""
    drop = {"spec", "scene"} | ({"skills"} if group_column != "skills" else set())
    table = scores.drop(columns=[c for c in scores.columns if c in drop])
    for column in table.columns:
        if table[column].map(lambda v: isinstance(v, (tuple, list))).any():
            table[column] = table[column].map(
                lambda v: "|".join(map(str, v)) if isinstance(v, (tuple, list)) else v
            )
    return table[[c for c in table.columns if not table[c].map(lambda v: isinstance(v, (dict, set))).any()]]


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """metrics.json with ``tiers`` holding every tier as :func:`write_record` writes it, whatever layout the
    run was written in (older runs: the held-out tier at the top level, the GenEval-style groups as tasks)."""
    metrics = read_json(Path(run_dir) / METRICS)
    tiers = {
        name: entry if "groups" in entry else {"overall": entry["overall"], "groups": entry.get("tasks", {})}
        for name, entry in metrics.get("tiers", {}).items()
    }
    if "overall" in metrics and "heldout" not in tiers:  # written before the held-out tier lived in tiers
        groups = {k: metrics[k] for k in ("basic", "advanced") if k in metrics}
        tiers = {
            "heldout": {"overall": metrics["overall"], "groups": {**groups, **metrics.get("skills", {})}},
            **tiers,
        }
    return {**metrics, "tiers": tiers}


def tier_stats(metrics: dict[str, Any], tier: str) -> dict[str, dict[str, Any]]:
    """{"overall": stats, group: stats, ...} of one tier of :func:`read_metrics`' result; {} without it."""
    entry = metrics["tiers"].get(tier)
    return {"overall": entry["overall"], **entry["groups"]} if entry else {}
