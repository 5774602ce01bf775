"""Where the small latent preset stands against its targets (issue 16): the verdicts against training steps.

Why: the issue asks for each target met, or the best reached together with the measured curve that limits
it. The curve is the per-prompt draws of `benchmarks/sample_noise.py` (runs/sample_noise/results.csv:
several draws of the GenEval-style tier, one of the held-out tier, for each finished training run), placed
at each run's training steps and machine-minutes from the ladder (figures/ladder.csv). The series of one
arm trained for more steps shows whether steps are what is missing; the levers beside it show whether a
change of recipe moves a target at equal steps.

The failure breakdown says what a target's misses are made of (an empty canvas, extra objects, wrong
shapes, one colour for two objects), from the per-prompt verdicts each draw saved
(runs/sample_noise/scores/<run>__per_prompt__s<seed>__geneval.csv), pooled over draws.

    targets   GenEval-style overall >= 0.50, single object >= 0.95, held-out overall >= 0.20, and
              train + sample + score <= 30 machine-minutes (1 thread, quiet machine)
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from t2istudy.figure_files import save_figure
from t2istudy.scoring.failure_modes import FAILURES, classify, failure_shares

# label -> (tier, group, target); the verdict targets for the preset's best arm, one seed
TARGETS: dict[str, tuple[str, str, float]] = {
    "GenEval-style": ("geneval", "overall", 0.50),
    "single object": ("geneval", "single_object", 0.95),
    "held-out": ("heldout", "overall", 0.20),
}
COST_TARGET_MINUTES = 30.0  # train + sample + score, one run, 1 thread on a quiet machine


def column(label: str) -> str:
    """A target's column name in the table: "held-out" -> "held_out"."""
    return label.replace(" ", "_").replace("-", "_").lower()


def target_table(results: pd.DataFrame, ladder: pd.DataFrame) -> pd.DataFrame:
    """One row per run judged under per-prompt draws: its final rung's steps, training and ladder-sampling
    machine-minutes and load, and for each target the mean, lowest and highest draw and whether the mean
    meets it. A run missing from the ladder (no steps known) is an error that names it."""
    draws = results[results["rule"] == "per_prompt"]
    last = ladder.sort_values("steps").groupby("ladder").tail(1).set_index("ladder")
    missing = sorted(set(draws["run"]) - set(last.index))
    if missing:
        raise ValueError(
            f"runs judged per prompt but not in the ladder table: {', '.join(missing)}. Copy their ladder "
            "folders into runs/ladder/ and redraw it (benchmarks/ladder.py --plot-only)."
        )
    rows = []
    for run, part in draws.groupby("run", sort=True):
        rung = last.loc[run]
        row = {
            "run": run,
            "steps": int(rung["steps"]),
            "train_minutes": float(rung["machine_minutes"]),
            "sample_minutes": float(rung["sample_seconds"]) / 60 * float(rung["threads"]),
            "load": float(rung["load_average"]),
        }
        for label, (tier, group, target) in TARGETS.items():
            means = part[(part["tier"] == tier) & (part["group"] == group)]["mean"]
            key = column(label)
            # rounded as figures/sample_noise.csv rounds (numpy, half to even), so both files quote one number
            mean = float(np.round(means.mean(), 3)) if len(means) else float("nan")
            row |= {
                f"{key}_draws": len(means),
                f"{key}": mean,
                f"{key}_low": float(np.round(means.min(), 3)) if len(means) else float("nan"),
                f"{key}_high": float(np.round(means.max(), 3)) if len(means) else float("nan"),
                f"{key}_met": bool(len(means) and mean >= target),  # 0.9499999 (a sum of 0.95s) meets 0.95
            }
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["steps", "run"]).reset_index(drop=True)


def shared_suffix(runs: list[str], boundary: str = "") -> str:
    """The longest end every run name shares (its encoder, strategy and seed), so labels can drop it.

    With ``boundary``, the suffix starts at its first ``boundary`` character, so no label ends mid-word.
    """
    if len(runs) < 2:
        return ""
    suffix = os.path.commonprefix([r[::-1] for r in runs])[::-1]
    if boundary:
        suffix = suffix[suffix.find(boundary) :] if boundary in suffix else ""
    return suffix


def short_label(run: str, suffix: str) -> str:
    """The run's name without the suffix every run shares (its encoder, strategy and seed)."""
    return run[: len(run) - len(suffix)] if suffix and run.endswith(suffix) else run


def plot_targets(table: pd.DataFrame, series: list[str], out_dir: str | Path, suffix: str = "") -> list[Path]:
    """Four panels against training steps: the three verdict targets (mean of the draws, bar = lowest to
    highest draw) and the training minutes, each with its target line. ``series`` (one arm trained for
    more steps) is joined by a line; every other run is a lever, labelled beside its point."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.4))
    keys = [(label, column(label), target) for label, (_, _, target) in TARGETS.items()]
    in_series = table["run"].isin(series)
    for ax, (label, key, target) in zip(axes[:3], keys, strict=True):
        for part, style in ((table[in_series], "o-"), (table[~in_series], "s")):
            part = part.dropna(subset=[key])
            err = [part[key] - part[f"{key}_low"], part[f"{key}_high"] - part[key]]
            ax.errorbar(part["steps"], part[key], yerr=err, fmt=style, capsize=3, ms=5)
        for r in table[~in_series].dropna(subset=[key]).itertuples():
            ax.annotate(
                short_label(r.run, suffix).removeprefix("cpu-latent-v-"),
                (r.steps, getattr(r, key)),
                fontsize=6,
                xytext=(4, 2),
                textcoords="offset points",
            )
        ax.axhline(target, color="tab:red", ls="--", lw=1)
        ax.set_ylim(0, min(1.0, 1.3 * max(target, float(table[f"{key}_high"].max()))))
        ax.set_title(f"{label} (target >= {target:.2f})", fontsize=10)
        ax.set_xlabel("training steps", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("verdict, per-prompt draws (bar: lowest to highest)", fontsize=8)
    ax = axes[3]
    for part, style in ((table[in_series], "o-"), (table[~in_series], "s")):
        ax.plot(part["steps"], part["train_minutes"] + part["sample_minutes"], style, ms=5)
    for r in table.itertuples():  # machines differ between sessions: the step time says which one it was
        step = r.train_minutes * 60 / r.steps
        ax.annotate(
            f"{step:.2f} s/step, load {r.load:.1f}",
            (r.steps, r.train_minutes + r.sample_minutes),
            fontsize=6,
            xytext=(4, -8),
            textcoords="offset points",
        )
    ax.axhline(COST_TARGET_MINUTES, color="tab:red", ls="--", lw=1)
    ax.set_title(f"train + ladder sampling (target <= {COST_TARGET_MINUTES:.0f})", fontsize=10)
    ax.set_xlabel("training steps", fontsize=8)
    ax.set_ylabel("machine-minutes (1 thread, load shown)", fontsize=8)
    ax.grid(alpha=0.3)
    if suffix:
        fig.suptitle(
            f"runs: <name>{suffix}; line: one arm trained for more steps, squares: levers", fontsize=9
        )
    fig.tight_layout()
    return save_figure(fig, out_dir, "targets", table)


def markdown_table(table: pd.DataFrame, suffix: str = "") -> str:
    """The table docs/training.md copies: each target's mean over draws with its range, and which are met."""
    head = (
        "| run | steps | train min (s/step, load) | GenEval-style | single object | held-out | targets met |"
    )
    lines = [head, "|---" * 7 + "|"]
    keys = [column(label) for label in TARGETS]
    for r in table.itertuples():
        cells = []
        for key in keys:
            n, mean, low, high = (getattr(r, f"{key}{s}") for s in ("_draws", "", "_low", "_high"))
            cells.append("-" if not n else f"{mean:.3f}" if n == 1 else f"{mean:.3f} ({low:.3f}-{high:.3f})")
        met = [label for label, key in zip(TARGETS, keys, strict=True) if getattr(r, f"{key}_met")]
        lines.append(
            f"| {short_label(r.run, suffix)} | {r.steps} | "
            f"{r.train_minutes:.1f} ({r.train_minutes * 60 / r.steps:.2f}, {r.load:.1f}) | "
            + " | ".join(cells)
            + f" | {', '.join(met) or 'none'} |"
        )
    return "\n".join(lines) + "\n"


def failure_breakdown(
    scores_dir: str | Path, tasks: tuple[str, ...] = ("single_object", "two_object")
) -> pd.DataFrame:
    """Per (run, task): images, draws and the share of each failure reason (`scoring.failure_modes`),
    pooled over the run's per-prompt draws of the GenEval-style tier in ``scores_dir``. Wide: one column
    per reason, in the judge's order, so a row reads as what the task's images came out as."""
    frames = []
    for path in sorted(Path(scores_dir).glob("*__per_prompt__s*__geneval.csv")):
        run, _, seed, _ = path.stem.split("__")
        frames.append(pd.read_csv(path).assign(run=run, draw=int(seed.removeprefix("s"))))
    if not frames:
        raise FileNotFoundError(
            f"No per-prompt GenEval-style scores in {scores_dir}: benchmarks/sample_noise.py --rules per_prompt "
            "writes them there."
        )
    scores = pd.concat(frames, ignore_index=True)
    shares = failure_shares(classify(scores), by=("run",))
    shares = shares[shares["task"].isin(tasks)]
    wide = shares.pivot_table(index=["run", "task"], columns="failure", values="share").reindex(
        columns=FAILURES
    )
    counts = (
        scores[scores["task"].isin(tasks)]
        .groupby(["run", "task"])
        .agg(images=("id", "size"), draws=("draw", "nunique"))
    )
    return counts.join(wide).reset_index()


def failure_markdown(table: pd.DataFrame, suffix: str = "", min_share: float = 0.005) -> str:
    """The breakdown as a markdown table, reasons that no row reaches ``min_share`` of left out."""
    reasons = [r for r in FAILURES if r in table and (table[r] >= min_share).any()]
    lines = [
        "| run | task | images (draws) | " + " | ".join(reasons) + " |",
        "|---" * (3 + len(reasons)) + "|",
    ]
    for row in table.to_dict("records"):
        cells = " | ".join(f"{row[reason]:.2f}" for reason in reasons)
        label = short_label(row["run"], suffix)
        lines.append(f"| {label} | {row['task']} | {row['images']} ({row['draws']}) | {cells} |")
    return "\n".join(lines) + "\n"
