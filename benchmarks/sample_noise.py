"""How much one sampling-noise draw decides a tier's verdict (figures/sample_noise.{csv,md,png}).

Under the "shared" rule every prompt of a tier starts from the sample seed's one noise tensor, so the
tier's mean is the model's verdict *for that draw*: prompts are not independent samples, and the CI over
prompts leaves the draw out. Under "per_prompt" each prompt draws its own noise (keyed by its text), so
the mean also averages over noise. For each finished training run given, both tiers are judged under
several sample seeds of each rule; the spread of a rule's means over seeds is what the draw decides.

    .venv/bin/python benchmarks/sample_noise.py \\
        --runs runs/ladder/cpu-latent-v-4000steps-gemma3-270m-norm_mean-s0/train --seeds 0,1,2

Resumes: results append to runs/sample_noise/results.csv, one row per (run, rule, seed, tier, group),
and finished (run, rule, seed, tier) are skipped; each draw's per-prompt verdicts go to
runs/sample_noise/scores/. --plot-only redraws the figure from that file.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.diffusion.sample import NOISE_RULES
from t2istudy.figure_files import save_figure
from t2istudy.reports.ladder import register_saved
from t2istudy.reports.targets import shared_suffix, short_label
from t2istudy.study.run import evaluate_tiers

KEY = ["run", "rule", "sample_seed", "tier"]


def run_label(train_dir: Path) -> str:
    """A ladder's folder name (runs/ladder/<name>/train) or the run folder's name."""
    return train_dir.parent.name if train_dir.name == "train" else train_dir.name


def measure(
    train_dirs: list[Path], rules: list[str], seeds: dict[str, list[int]], sizes: dict[str, int], out: Path
):
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame(columns=[*KEY, "group", "mean"])
    finished = set(map(tuple, done[KEY].astype(str).values.tolist()))
    for train_dir in train_dirs:
        register_saved(train_dir.parent)  # a ladder's lever preset (preset.json), as its ladder registered it
        for rule in rules:
            for tier, n in sizes.items():
                for seed in seeds[tier]:
                    key = (run_label(train_dir), rule, str(seed), tier)
                    if key in finished:
                        continue
                    t0 = time.time()
                    scores, summary = evaluate_tiers(train_dir, {tier: n}, sample_seed=seed, noise=rule)[tier]
                    per_prompt = out.parent / "scores" / f"{key[0]}__{rule}__s{seed}__{tier}.csv"
                    per_prompt.parent.mkdir(parents=True, exist_ok=True)  # for breakdowns by object or task
                    scores.drop(columns=["skills", "spec", "scene"], errors="ignore").to_csv(
                        per_prompt, index=False
                    )
                    rows = pd.DataFrame(
                        {
                            "run": key[0],
                            "rule": rule,
                            "sample_seed": seed,
                            "tier": tier,
                            "group": summary.index,
                            "mean": summary["mean"].round(4).values,
                            "prompts": len(scores),
                            "seconds": round(time.time() - t0, 1),
                            "load_average": round(os.getloadavg()[0], 2),
                        }
                    )
                    done = pd.concat([done, rows], ignore_index=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    done.to_csv(out, index=False)
                    overall = rows.set_index("group")["mean"]["overall"]
                    print(f"{key[0]} {rule} seed {seed} {tier}: overall {overall:.3f}", flush=True)
    return done


def spread(results: pd.DataFrame) -> pd.DataFrame:
    """Per (run, rule, tier, group): the mean over sample seeds, its range and SD, and the seeds' count."""
    return (
        results.groupby(["run", "rule", "tier", "group"])["mean"]
        .agg(draws="size", mean="mean", low="min", high="max", sd="std")
        .round(3)
        .reset_index()
    )


def plot(results: pd.DataFrame, figures: Path) -> list[Path]:
    overall = results[results["group"] == "overall"]
    tiers = [t for t in ("geneval", "heldout") if t in set(overall["tier"])]
    runs = sorted(overall["run"].unique())
    suffix = shared_suffix(runs)
    labels = [short_label(r, suffix) for r in runs]
    fig, axes = plt.subplots(
        1, len(tiers), figsize=(4.6 * len(tiers) + 2.4, 1.6 + 0.7 * len(runs)), squeeze=False, sharey=True
    )
    for ax, tier in zip(axes[0], tiers, strict=True):
        part = overall[overall["tier"] == tier]
        for k, run in enumerate(runs):
            for j, (rule, color) in enumerate(zip(NOISE_RULES, ("tab:blue", "tab:orange"), strict=True)):
                y = k + 0.18 - 0.36 * j
                vals = part[(part["run"] == run) & (part["rule"] == rule)]
                ax.scatter(vals["mean"], [y] * len(vals), color=color, s=22, label=rule if k == 0 else None)
                for _, r in vals.iterrows():
                    ax.annotate(
                        str(r["sample_seed"]),
                        (r["mean"], y),
                        fontsize=6,
                        xytext=(0, 4),
                        textcoords="offset points",
                        ha="center",
                    )
        ax.set_yticks(range(len(runs)), labels, fontsize=7)
        ax.set_ylim(-0.6, len(runs) - 0.4)
        ax.set_xlabel("verdict (all-or-nothing); one dot per sample seed", fontsize=8)
        ax.set_title({"geneval": "GenEval-style tier", "heldout": "held-out tier"}[tier], fontsize=10)
        ax.set_xlim(0, max(0.7, float(part["mean"].max()) + 0.05))
        ax.grid(alpha=0.3)
    if suffix:
        fig.suptitle(f"runs: <name>{suffix}", fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        title="sample noise",
        loc="lower center",
        ncol=2,
        fontsize=7,
        title_fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    table = spread(results)
    written = save_figure(fig, figures, "sample_noise", table)
    md = figures / "sample_noise.md"
    lines = ["| run | rule | tier | group | draws | mean | low | high | SD |", "|---" * 9 + "|"]
    for r in table[table["group"].isin(["overall", "single_object", "two_object"])].itertuples():
        sd = "-" if pd.isna(r.sd) else f"{r.sd:.3f}"
        lines.append(
            f"| {r.run} | {r.rule} | {r.tier} | {r.group} | {r.draws} | {r.mean:.3f} | {r.low:.3f} | {r.high:.3f} | {sd} |"
        )
    md.write_text("\n".join(lines) + "\n")
    return [*written, md]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="finished training folders (with final/)")
    parser.add_argument(
        "--rules", default=",".join(NOISE_RULES), help="sample noise rules to compare, comma-separated"
    )
    parser.add_argument("--seeds", default="0,1,2", help="sample seeds for the GenEval-style tier")
    parser.add_argument(
        "--heldout_seeds", default="0", help="sample seeds for the held-out tier ('' skips it)"
    )
    parser.add_argument("--geneval_per_task", type=int, default=50, help="GenEval-style prompts per task")
    parser.add_argument("--heldout_per_skill", type=int, default=50, help="held-out tier prompts per skill")
    parser.add_argument(
        "--out",
        default="runs/sample_noise/results.csv",
        help="results CSV, appended to (per-prompt scores beside it)",
    )
    parser.add_argument("--figures", default="figures", help="folder the figure and table are written to")
    parser.add_argument("--plot-only", action="store_true", help="no sampling: redraw the figure from --out")
    args = parser.parse_args()
    out = Path(args.out)
    seeds = {
        "geneval": [int(s) for s in args.seeds.split(",") if s],
        "heldout": [int(s) for s in args.heldout_seeds.split(",") if s],
    }
    sizes = {"geneval": args.geneval_per_task, "heldout": args.heldout_per_skill}
    if not args.plot_only:
        missing = [r for r in args.runs if not (Path(r) / "final").is_dir()]
        if missing:
            parser.error(f"not finished training runs (no final/): {', '.join(missing)}")
        measure([Path(r) for r in args.runs], args.rules.split(","), seeds, sizes, out)
    if not out.is_file():
        parser.error(f"{out} does not exist: measure some --runs first.")
    print("wrote", *plot(pd.read_csv(out), Path(args.figures)))


if __name__ == "__main__":
    main()
