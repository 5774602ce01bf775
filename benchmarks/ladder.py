"""The ladder: verdict on both benchmark tiers against training machine-minutes (figures/ladder.*).

One training run per (preset, arm) climbs its rungs; each rung is judged on the GenEval-style tier and on
the held-out tier; the figure draws every ladder found under runs/ladder/. Rerunning resumes: finished
rungs are skipped, and training resumes from the last rung's checkpoint.

    .venv/bin/python benchmarks/ladder.py --preset cpu-latent --rungs 250,500,1000,2000
    .venv/bin/python benchmarks/ladder.py --preset cpu-small --rungs 400,800,1600
    .venv/bin/python benchmarks/ladder.py --plot-only          # redraw figures/ladder.* from runs/ladder/

Beside the figure, figures/ladder_objects.{csv,md}: the single-object and colours tasks' verdict by the
object the prompt names, and the share of images with nothing drawn (what limits single objects).

Machine-minutes = wall seconds x threads / 60 with the load average beside them (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.diffusion.model import get_preset
from t2istudy.reports.ladder import (
    climb,
    collect,
    object_breakdown,
    plot,
    register_lever,
    write_object_breakdown,
)
from t2istudy.study.run import tune_guidance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu-latent", help="model preset the ladder trains")
    parser.add_argument("--encoder", default="gemma3-270m", help="text encoder the ladder trains with")
    parser.add_argument("--strategy", default="norm_mean", help="layer-aggregation strategy of the encoder")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--rungs", default="250,500,1000,2000", help="step counts, comma-separated")
    parser.add_argument("--geneval_per_task", type=int, default=50, help="GenEval-style prompts per task")
    parser.add_argument("--heldout_per_skill", type=int, default=50, help="held-out tier prompts per skill")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads for training (machine-minutes count them)"
    )
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: the preset's")
    parser.add_argument("--train_options", default="{}", help="JSON: other TrainOptions fields")
    parser.add_argument(
        "--preset_changes",
        default="{}",
        help='JSON: a lever measured as a variant of --preset, e.g. {"unet": {...}} or {"zero_terminal_snr": true}; '
        "registered as <preset>+<name> for this process and recorded in the ladder's preset.json",
    )
    parser.add_argument(
        "--name", default=None, help="ladder folder name (default: preset-encoder-strategy-sSEED)"
    )
    parser.add_argument(
        "--tune_guidance",
        default="",
        help="comma-separated scales: after the last rung, the validation verdict at each (cfg_tune.csv)",
    )
    parser.add_argument("--root", default="runs/ladder", help="folder the ladders live under, one per --name")
    parser.add_argument(
        "--figures", default="figures", help="folder the figures and object tables are written to"
    )
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="no training: redraw the figures from the ladders under --root",
    )
    args = parser.parse_args()
    if not args.plot_only:
        name = args.name or f"{args.preset}-{args.encoder}-{args.strategy}-s{args.seed}"
        changes = json.loads(args.preset_changes)
        if changes and not args.name:
            parser.error(
                "--preset_changes needs --name: the lever's ladder gets its own folder and preset name"
            )
        if changes:  # a lever: the preset with some fields changed, under its own name
            base = get_preset(args.preset).name
            args.preset = register_lever(base, args.name, changes)
            out = Path(args.root) / name
            out.mkdir(parents=True, exist_ok=True)
            (out / "preset.json").write_text(json.dumps({"base": base, "changes": changes}, indent=1))
        table = climb(
            f"{args.root}/{name}",
            [int(r) for r in args.rungs.split(",")],
            preset=args.preset,
            encoder=args.encoder,
            strategy=args.strategy,
            seed=args.seed,
            threads=args.threads,
            sizes={"geneval": args.geneval_per_task, "heldout": args.heldout_per_skill},
            guidance_scale=args.guidance_scale,
            train_options=json.loads(args.train_options),
        )
        print(table.to_string(index=False))
        if args.tune_guidance:  # tuned on training-distribution captions, never on a benchmark tier
            scales = [float(x) for x in args.tune_guidance.split(",")]
            tuned = tune_guidance(Path(args.root) / name / "train", scales).assign(
                load_average=os.getloadavg()[0]
            )
            tuned.to_csv(Path(args.root) / name / "cfg_tune.csv", index=False)
            print(tuned.to_string(index=False))
    table = collect([args.root])
    print("wrote", *plot(table, args.figures))
    print("wrote", *write_object_breakdown(object_breakdown(table, args.root), args.figures))


if __name__ == "__main__":
    main()
