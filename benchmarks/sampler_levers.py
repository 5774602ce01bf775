"""Sampling levers on a trained model: sampler, steps, CFG scale and guidance rescale (Lin et al. 2024,
sec. 3.4), chosen on the validation split, then judged on both tiers (figures/sampler_levers.{csv,md,png}).

Choosing never looks at a benchmark tier: every setting is judged on 200 validation captions of fresh
training-world scenes (`run.tune_guidance`; --validation_colourless p words that share of them without
colours, as GenEval's colourless tasks are worded), and only the settings named by --evaluate are sampled
on the tiers. Tier draws are the per-prompt draws of benchmarks/sample_noise.py, so a setting's means
compare draw for draw with that file's rows for the same run (the preset's own setting).

    .venv/bin/python benchmarks/sampler_levers.py --runs runs/ladder/<name>/train \\
        --scales 3,5,7.5 --rescales 0,0.7                    # runs/sampler_levers/validation.csv
    .venv/bin/python benchmarks/sampler_levers.py --runs runs/ladder/<name>/train --samplers ddim,dpm++ \\
        --steps 25,50 --scales 3 --validation_colourless 1
    .venv/bin/python benchmarks/sampler_levers.py --runs runs/ladder/<name>/train \\
        --evaluate "cfg=5 rescale=0.7" "cfg=3 steps=50" --seeds 0,1,2   # runs/sampler_levers/results.csv

A setting leaves out what stays the preset's (DDIM, its steps, CFG and rescale 0). Resumes: finished
validation rows and (setting, seed, tier) rows are skipped. --plot-only redraws the figure from both files.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from sample_noise import run_label  # benchmarks/ is the script folder: first on sys.path

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.diffusion.model import get_preset
from t2istudy.diffusion.train_folder import read_options
from t2istudy.figure_files import save_figure
from t2istudy.reports.ladder import register_saved
from t2istudy.study.run import evaluate_tiers, tune_guidance

SETTING = ["run", "sampler", "sample_steps", "guidance_scale", "guidance_rescale"]
KEYS = {"sampler": "sampler", "steps": "sample_steps", "cfg": "guidance_scale", "rescale": "guidance_rescale"}


def preset_setting(train_dir: Path) -> dict:
    """The sampling the run's preset does by default (what the tiers were judged with)."""
    preset = get_preset(read_options(train_dir)["preset"])
    return {
        "sampler": "ddim",
        "sample_steps": preset.sample_steps,
        "guidance_scale": preset.guidance_scale,
        "guidance_rescale": preset.guidance_rescale,
    }


def parse_setting(text: str, default: dict) -> dict:
    """'cfg=5 rescale=0.7 steps=50 sampler=dpm++' over the preset's ``default``."""
    setting = dict(default)
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in KEYS or not value:
            raise ValueError(f"setting item {item!r}: use {', '.join(k + '=...' for k in KEYS)}")
        column = KEYS[key]
        setting[column] = value if column == "sampler" else type(default[column])(float(value))
    return setting


def sample_options(setting: dict) -> dict:
    return {
        "sampler": setting["sampler"],
        "steps": int(setting["sample_steps"]),
        "guidance_scale": float(setting["guidance_scale"]),
        "guidance_rescale": float(setting["guidance_rescale"]),
    }


def _append(path: Path, rows: pd.DataFrame) -> None:
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([old, rows], ignore_index=True).to_csv(path, index=False)


def _done(path: Path, key: list[str]) -> set[tuple[str, ...]]:
    if not path.is_file():
        return set()
    return {tuple(str(v) for v in row) for row in pd.read_csv(path)[key].itertuples(index=False)}


def _key(setting: dict, run: str, *rest) -> tuple[str, ...]:
    return (
        run,
        str(setting["sampler"]),
        str(int(setting["sample_steps"])),
        str(float(setting["guidance_scale"])),
        str(float(setting["guidance_rescale"])),
        *map(str, rest),
    )


def validate(train_dir: Path, settings: list[dict], p_colourless: float, n: int, out: Path) -> None:
    """The validation verdict of every setting not measured yet."""
    run = run_label(train_dir)
    done = _done(out, [*SETTING, "p_colourless"])
    for setting in settings:
        if _key(setting, run, float(p_colourless)) in done:
            continue
        t0 = time.time()
        options = sample_options(setting)
        scale = options.pop("guidance_scale")
        (row,) = tune_guidance(train_dir, [scale], n=n, p_colourless=p_colourless, **options).to_dict(
            "records"
        )
        row = {"run": run, **setting, "p_colourless": p_colourless, **row}
        row.update(seconds=round(time.time() - t0, 1), load_average=round(os.getloadavg()[0], 2))
        _append(out, pd.DataFrame([row]))
        print(f"{run} {setting} colourless {p_colourless}: validation {row['verdict']:.3f}", flush=True)


def evaluate(
    train_dir: Path, settings: list[dict], seeds: dict[str, list[int]], sizes: dict, out: Path
) -> None:
    """Both tiers under each chosen setting, per-prompt draws."""
    run = run_label(train_dir)
    done = _done(out, [*SETTING, "sample_seed", "tier"])
    for setting in settings:
        for tier, n in sizes.items():
            for seed in seeds[tier]:
                if _key(setting, run, seed, tier) in done:
                    continue
                t0 = time.time()
                options = dict(sample_seed=seed, noise="per_prompt", **sample_options(setting))
                scores, summary = evaluate_tiers(train_dir, {tier: n}, **options)[tier]
                rows = pd.DataFrame(
                    {
                        "run": run,
                        **setting,
                        "sample_seed": seed,
                        "tier": tier,
                        "group": summary.index,
                        "mean": summary["mean"].round(4).values,
                    }
                )
                rows["prompts"] = len(scores)
                rows["seconds"] = round(time.time() - t0, 1)
                rows["load_average"] = round(os.getloadavg()[0], 2)
                _append(out, rows)
                overall = rows.set_index("group")["mean"]["overall"]
                print(f"{run} {setting} seed {seed} {tier}: {overall:.3f}", flush=True)


def label(row) -> str:
    return (
        f"{row['sampler']} {int(row['sample_steps'])}, cfg {row['guidance_scale']:g}, "
        f"rescale {row['guidance_rescale']:g}"
    )


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, tier, group): mean over draws, range and the draws' count."""
    return (
        results.groupby([*SETTING, "tier", "group"])["mean"]
        .agg(draws="size", mean="mean", low="min", high="max")
        .round(3)
        .reset_index()
    )


def plot(validation: pd.DataFrame, results: pd.DataFrame, figures: Path) -> list[Path]:
    """Left: each setting's validation verdict (one marker per colourless share). Right: each evaluated
    setting's overall verdict per tier, one dot per draw."""
    validation = validation.sort_values([*SETTING, "p_colourless"])
    names = list(dict.fromkeys(f"{r['run'][:24]}\n{label(r)}" for _, r in validation.iterrows()))
    height = 1.5 + 0.32 * max(len(names), 3)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, height))
    for p, part in validation.groupby("p_colourless"):
        ys = [names.index(f"{r['run'][:24]}\n{label(r)}") for _, r in part.iterrows()]
        left.scatter(part["verdict"], ys, s=24, label=f"{p:.0%} colourless captions")
    left.set_yticks(range(len(names)), names, fontsize=6)
    left.set_xlabel("validation verdict (200 training-world captions)")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    overall = results[results["group"] == "overall"]
    rows = list(overall.groupby(SETTING))
    for k, (_, part) in enumerate(rows):
        for tier, marker in (("geneval", "o"), ("heldout", "s")):
            vals = part[part["tier"] == tier]["mean"]
            right.scatter(vals, [k] * len(vals), marker=marker, s=24, label=tier if k == 0 else None)
    right.set_yticks(
        range(len(rows)),
        [f"{key[0][:24]}\n{label(dict(zip(SETTING, key, strict=True)))}" for key, _ in rows],
        fontsize=6,
    )
    right.set_xlabel("verdict (all-or-nothing); one dot per per-prompt draw")
    if rows:
        right.legend(fontsize=7, title="tier", title_fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    table = summary_table(results)
    written = save_figure(fig, figures, "sampler_levers", table)
    md = figures / "sampler_levers.md"
    groups = ["overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"]
    lines = [
        "| run | sampler | steps | CFG | rescale | tier | group | draws | mean | low | high |",
        "|---" * 11 + "|",
    ]
    for r in table[table["group"].isin(groups)].itertuples():
        lines.append(
            f"| {r.run} | {r.sampler} | {r.sample_steps} | {r.guidance_scale:g} | {r.guidance_rescale:g} | {r.tier} "
            f"| {r.group} | {r.draws} | {r.mean:.3f} | {r.low:.3f} | {r.high:.3f} |"
        )
    lines += ["", "Validation split (choosing the setting):", ""]
    lines += [
        "| run | sampler | steps | CFG | rescale | colourless captions | verdict | partial credit | captions |"
    ]
    lines += ["|---" * 9 + "|"]
    for r in validation.itertuples():
        lines.append(
            f"| {r.run} | {r.sampler} | {r.sample_steps} | {r.guidance_scale:g} | {r.guidance_rescale:g} "
            f"| {r.p_colourless:.0%} | {r.verdict:.3f} | {r.fraction:.3f} | {r.n} |"
        )
    md.write_text("\n".join(lines) + "\n")
    return [*written, md]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="*", default=[], help="finished training folders (with final/)")
    parser.add_argument(
        "--samplers", default="", help="samplers to validate (ddim, dpm++); default the preset's"
    )
    parser.add_argument("--steps", default="", help="sampling steps to validate; default the preset's")
    parser.add_argument(
        "--scales", default="", help="CFG scales to validate, e.g. 3,5,7.5 (nothing: no validation)"
    )
    parser.add_argument("--rescales", default="0", help="guidance rescale shares to validate, e.g. 0,0.7")
    parser.add_argument(
        "--validation_colourless", type=float, default=0.0, help="share of colourless captions"
    )
    parser.add_argument("--validation_n", type=int, default=200, help="validation captions per setting")
    parser.add_argument(
        "--evaluate", nargs="*", default=[], help='settings to judge on the tiers: "cfg=5 rescale=0.7"'
    )
    parser.add_argument("--seeds", default="0,1,2", help="sample seeds for the GenEval-style tier")
    parser.add_argument("--heldout_seeds", default="0", help="sample seeds for the held-out tier")
    parser.add_argument("--geneval_per_task", type=int, default=50, help="GenEval-style prompts per task")
    parser.add_argument("--heldout_per_skill", type=int, default=50, help="held-out tier prompts per skill")
    parser.add_argument(
        "--out", default="runs/sampler_levers", help="folder of validation.csv and results.csv, appended to"
    )
    parser.add_argument("--figures", default="figures", help="folder the figure and table are written to")
    parser.add_argument(
        "--plot-only", action="store_true", help="no sampling: redraw the figure from the files in --out"
    )
    args = parser.parse_args()
    out = Path(args.out)
    if not args.plot_only:
        missing = [r for r in args.runs if not (Path(r) / "final").is_dir()]
        if missing:
            parser.error(f"not finished training runs (no final/): {', '.join(missing)}")
        seeds = {"geneval": [int(s) for s in args.seeds.split(",") if s]}
        seeds["heldout"] = [int(s) for s in args.heldout_seeds.split(",") if s]
        sizes = {"geneval": args.geneval_per_task, "heldout": args.heldout_per_skill}
        for run in map(Path, args.runs):
            register_saved(run.parent)  # a ladder's lever preset (preset.json), as its ladder registered it
            default = preset_setting(run)
            try:
                chosen = [parse_setting(text, default) for text in args.evaluate]
            except ValueError as err:
                parser.error(f"--evaluate: {err}")
            grid = [
                {
                    "sampler": sampler,
                    "sample_steps": int(steps),
                    "guidance_scale": float(scale),
                    "guidance_rescale": float(rescale),
                }
                for sampler in (args.samplers.split(",") if args.samplers else [default["sampler"]])
                for steps in (args.steps.split(",") if args.steps else [default["sample_steps"]])
                for scale in [v for v in args.scales.split(",") if v]
                for rescale in args.rescales.split(",")
            ]
            validate(run, grid, args.validation_colourless, args.validation_n, out / "validation.csv")
            evaluate(run, chosen, seeds, sizes, out / "results.csv")
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
