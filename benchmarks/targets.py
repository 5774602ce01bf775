"""The small latent preset against issue 16's targets, from committed CSVs only (figures/targets.*).

Reads the per-prompt draws of runs/sample_noise/results.csv (benchmarks/sample_noise.py), their
per-prompt verdicts in runs/sample_noise/scores/, and each run's steps and minutes from
figures/ladder.csv (benchmarks/ladder.py); trains and samples nothing, so it redraws in seconds:

    .venv/bin/python benchmarks/targets.py
    # figures/targets.{png,pdf,csv,md}: each target against training steps
    # figures/targets_failures.{csv,md}: what the single- and two-object misses are made of
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from t2istudy.reports.targets import (
    failure_breakdown,
    failure_markdown,
    markdown_table,
    plot_targets,
    shared_suffix,
    target_table,
)

# cpu-latent-v (Gemma-3 norm_mean, seed 0) trained for more steps and nothing else; the 3,000-step run is
# the lever ladder that became the preset (its preset.json: v-prediction, zero-terminal SNR, cosine)
SERIES = (
    "cpu-latent-v-2000steps-gemma3-270m-norm_mean-s0",
    "cpu-latent-vpred-zsnr-cosine-gemma3-270m-norm_mean-s0",
    "cpu-latent-v-4000steps-gemma3-270m-norm_mean-s0",
    "cpu-latent-v-6000steps-gemma3-270m-norm_mean-s0",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results",
        default="runs/sample_noise/results.csv",
        help="per-prompt draws (benchmarks/sample_noise.py)",
    )
    parser.add_argument(
        "--scores", default="runs/sample_noise/scores", help="folder of the draws' per-prompt verdicts"
    )
    parser.add_argument(
        "--ladder",
        default="figures/ladder.csv",
        help="ladder table: each run's steps and minutes (benchmarks/ladder.py)",
    )
    parser.add_argument("--series", default=",".join(SERIES), help="runs of one arm at more steps (joined)")
    parser.add_argument("--figures", default="figures", help="folder the figures and tables are written to")
    args = parser.parse_args()
    for path in (args.results, args.ladder):
        if not Path(path).is_file():
            parser.error(
                f"{path} does not exist: run benchmarks/sample_noise.py and benchmarks/ladder.py first."
            )
    table = target_table(pd.read_csv(args.results), pd.read_csv(args.ladder))
    runs = table["run"].tolist()
    suffix = shared_suffix(runs, boundary="-")
    figures = Path(args.figures)
    written = plot_targets(table, args.series.split(","), figures, suffix)
    md = figures / "targets.md"
    md.write_text(markdown_table(table, suffix))
    failures = failure_breakdown(args.scores)
    failures.round(3).to_csv(figures / "targets_failures.csv", index=False)
    (figures / "targets_failures.md").write_text(failure_markdown(failures, suffix))
    print("wrote", *written, md, figures / "targets_failures.csv", figures / "targets_failures.md")


if __name__ == "__main__":
    main()
