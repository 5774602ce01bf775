"""Sampling levers on a trained model: the CFG scale and guidance rescale (Lin et al. 2024, sec. 3.4),
chosen on the validation split, then judged on both tiers (figures/sampler_levers.{csv,md,png}).

Choosing never looks at a benchmark tier: every (scale, rescale) pair is judged on the 200 validation
captions of fresh training-world scenes (`tiers.tune_guidance`), and only the settings named by
--evaluate are sampled on the tiers. Tier draws are the per-prompt draws of benchmarks/sample_noise.py, so
a setting's means compare draw for draw with that file's rows for the same run (the preset's own setting).

    .venv/bin/python benchmarks/sampler_levers.py --runs runs/ladder/<name>/train \\
        --scales 3,5,7.5 --rescales 0,0.7                    # runs/sampler_levers/validation.csv
    .venv/bin/python benchmarks/sampler_levers.py --runs runs/ladder/<name>/train --evaluate 5:0.7 \\
        --seeds 0,1,2                                        # runs/sampler_levers/results.csv

Resumes: finished (run, scale, rescale) validation rows and (run, scale, rescale, seed, tier) tier rows are
skipped. --plot-only redraws the figure from both files.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.figure_files import save_figure
from t2istudy.study.ladder import register_saved
from t2istudy.study.tiers import evaluate_tiers, tune_guidance

SETTING = ["run", "guidance_scale", "guidance_rescale"]


def run_label(train_dir: Path) -> str:
    """A ladder's folder name (runs/ladder/<name>/train) or the run folder's name."""
    return train_dir.parent.name if train_dir.name == "train" else train_dir.name


def _append(path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    new = pd.concat([old, rows], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(path, index=False)
    return new


def _done(path: Path, key: list[str]) -> set[tuple[str, ...]]:
    if not path.is_file():
        return set()
    return set(map(tuple, pd.read_csv(path)[key].astype(str).values.tolist()))


def validate(train_dir: Path, scales: list[float], rescales: list[float], n: int, out: Path) -> None:
    """The validation verdict of every (scale, rescale) pair not measured yet."""
    done = _done(out, SETTING)
    for rescale in rescales:
        todo = [s for s in scales if (run_label(train_dir), str(s), str(rescale)) not in done]
        if not todo:
            continue
        t0 = time.time()
        table = tune_guidance(train_dir, todo, n=n, guidance_rescale=rescale)
        table.insert(0, "run", run_label(train_dir))
        table.insert(2, "guidance_rescale", rescale)
        table["seconds"] = round((time.time() - t0) / len(todo), 1)
        table["load_average"] = round(os.getloadavg()[0], 2)
        _append(out, table)
        print(table.round(3).to_string(index=False), flush=True)


def evaluate(
    train_dir: Path, settings: list[tuple[float, float]], seeds: dict[str, list[int]], sizes: dict, out: Path
) -> None:
    """Both tiers under each chosen setting, per-prompt draws."""
    done = _done(out, [*SETTING, "sample_seed", "tier"])
    for scale, rescale in settings:
        for tier, n in sizes.items():
            for seed in seeds[tier]:
                if (run_label(train_dir), str(scale), str(rescale), str(seed), tier) in done:
                    continue
                t0 = time.time()
                options = dict(
                    sample_seed=seed, noise="per_prompt", guidance_scale=scale, guidance_rescale=rescale
                )
                scores, summary = evaluate_tiers(train_dir, {tier: n}, **options)[tier]
                rows = pd.DataFrame(
                    {
                        "run": run_label(train_dir),
                        "guidance_scale": scale,
                        "guidance_rescale": rescale,
                        "sample_seed": seed,
                        "tier": tier,
                        "group": summary.index,
                        "mean": summary["mean"].round(4).values,
                        "prompts": len(scores),
                        "seconds": round(time.time() - t0, 1),
                        "load_average": round(os.getloadavg()[0], 2),
                    }
                )
                _append(out, rows)
                overall = rows.set_index("group")["mean"]["overall"]
                print(
                    f"{rows['run'][0]} cfg {scale} rescale {rescale} seed {seed} {tier}: {overall:.3f}",
                    flush=True,
                )


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per (run, scale, rescale, tier, group): mean over draws, range and the draws' count."""
    return (
        results.groupby([*SETTING, "tier", "group"])["mean"]
        .agg(draws="size", mean="mean", low="min", high="max")
        .round(3)
        .reset_index()
    )


def plot(validation: pd.DataFrame, results: pd.DataFrame, figures: Path) -> list[Path]:
    """Left: the validation verdict against the scale, a line per (run, rescale). Right: each evaluated
    setting's overall verdict per tier, one dot per draw."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for (run, rescale), part in validation.groupby(["run", "guidance_rescale"]):
        part = part.sort_values("guidance_scale")
        left.plot(
            part["guidance_scale"], part["verdict"], marker="o", label=f"{run[:28]}, rescale {rescale:g}"
        )
    left.set_xlabel("CFG scale")
    left.set_ylabel("validation verdict (200 training-world captions)")
    left.legend(fontsize=6)
    left.grid(alpha=0.3)
    overall = results[results["group"] == "overall"]
    labels = []
    for k, (key, part) in enumerate(overall.groupby([*SETTING])):
        labels.append(f"{key[0][:24]}\ncfg {key[1]:g}, rescale {key[2]:g}")
        for tier, marker in (("geneval", "o"), ("heldout", "s")):
            vals = part[part["tier"] == tier]["mean"]
            right.scatter(vals, [k] * len(vals), marker=marker, s=24, label=tier if k == 0 else None)
    right.set_yticks(range(len(labels)), labels, fontsize=6)
    right.set_xlabel("verdict (all-or-nothing); one dot per per-prompt draw")
    if len(overall):
        right.legend(fontsize=7, title="tier", title_fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    table = summary_table(results)
    written = save_figure(fig, figures, "sampler_levers", table)
    md = figures / "sampler_levers.md"
    groups = ["overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"]
    lines = ["| run | CFG | rescale | tier | group | draws | mean | low | high |", "|---" * 9 + "|"]
    shown = table[table["group"].isin(groups)]
    for r in shown.itertuples():
        lines.append(
            f"| {r.run} | {r.guidance_scale:g} | {r.guidance_rescale:g} | {r.tier} | {r.group} | {r.draws} "
            f"| {r.mean:.3f} | {r.low:.3f} | {r.high:.3f} |"
        )
    lines += ["", "Validation split (choosing the setting):", ""]
    lines += ["| run | CFG | rescale | verdict | partial credit | captions |", "|---" * 6 + "|"]
    for r in validation.sort_values(SETTING).itertuples():
        lines.append(
            f"| {r.run} | {r.guidance_scale:g} | {r.guidance_rescale:g} | {r.verdict:.3f} | {r.fraction:.3f} | {r.n} |"
        )
    md.write_text("\n".join(lines) + "\n")
    return [*written, md]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="finished training folders (with final/)")
    parser.add_argument("--scales", default="", help="CFG scales to validate, e.g. 3,5,7.5")
    parser.add_argument("--rescales", default="0", help="guidance rescale shares to validate, e.g. 0,0.7")
    parser.add_argument("--validation_n", type=int, default=200)
    parser.add_argument("--evaluate", default="", help="settings to judge on the tiers: scale:rescale,...")
    parser.add_argument("--seeds", default="0,1,2", help="sample seeds for the GenEval-style tier")
    parser.add_argument("--heldout_seeds", default="0", help="sample seeds for the held-out tier")
    parser.add_argument("--geneval_per_task", type=int, default=50)
    parser.add_argument("--heldout_per_skill", type=int, default=50)
    parser.add_argument("--out", default="runs/sampler_levers")
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    floats = lambda text: [float(v) for v in text.split(",") if v]  # noqa: E731
    if not args.plot_only:
        missing = [r for r in args.runs if not (Path(r) / "final").is_dir()]
        if missing:
            parser.error(f"not finished training runs (no final/): {', '.join(missing)}")
        try:
            settings = [tuple(map(float, s.split(":"))) for s in args.evaluate.split(",") if s]
        except ValueError:
            parser.error(f"--evaluate {args.evaluate!r}: give scale:rescale pairs, e.g. 5:0.7,3:0")
        seeds = {"geneval": [int(s) for s in args.seeds.split(",") if s]}
        seeds["heldout"] = [int(s) for s in args.heldout_seeds.split(",") if s]
        sizes = {"geneval": args.geneval_per_task, "heldout": args.heldout_per_skill}
        for run in map(Path, args.runs):
            register_saved(run.parent)  # a ladder's lever preset (preset.json), as its ladder registered it
            if args.scales:
                validate(
                    run, floats(args.scales), floats(args.rescales), args.validation_n, out / "validation.csv"
                )
            evaluate(run, settings, seeds, sizes, out / "results.csv")
    if not (out / "validation.csv").is_file():
        parser.error(f"{out / 'validation.csv'} does not exist: validate some --runs first (--scales).")
    results = out / "results.csv"
    frame = (
        pd.read_csv(results)
        if results.is_file()
        else pd.DataFrame(columns=[*SETTING, "tier", "group", "mean"])
    )
    print("wrote", *plot(pd.read_csv(out / "validation.csv"), frame, Path(args.figures)))


if __name__ == "__main__":
    main()
