"""Which side loses binding? The text representation probed on SEEN compositions (issue 36).

Writes figures/probe_binding/probe_binding.{csv,png,pdf} (accuracy per encoder, representation, reader,
task and object) and timings.csv (encode and probe seconds with the load). Per-item tables are kept in
cache/probe_binding/<label>.csv (with <label>.timing.csv), and an arm found there is read back instead
of recomputed (delete the file to recompute). ``t2istudy.probe.binding`` says what is probed and why.

    .venv/bin/python benchmarks/probe_binding.py                       # gemma3-270m, smollm2-135m
    .venv/bin/python benchmarks/probe_binding.py --scale rms           # as the projection receives it
    .venv/bin/python benchmarks/probe_binding.py --plot-only
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.figure_files import save_figure
from t2istudy.probe import binding
from t2istudy.probe.layerwise import ProbeOptions
from t2istudy.text.encoders import load_encoder

GROUPS = [  # (task, reader, order) in the figure's order, with their labels
    ("colour", "sequence", "first", "colour of 1st object\n(attention over tokens)"),
    ("colour", "sequence", "second", "colour of 2nd object\n(attention over tokens)"),
    ("colour", "mean", "first", "colour of 1st object\n(mean of tokens)"),
    ("colour", "mean", "second", "colour of 2nd object\n(mean of tokens)"),
    ("colour", "token", "first", "1st noun's own state\n-> its colour"),
    ("colour", "token", "second", "2nd noun's own state\n-> its colour"),
    ("position", "sequence", "all", "shape on the left\n(attention over tokens)"),
    ("position", "mean", "all", "shape on the left\n(mean of tokens)"),
]


def plot(summary: pd.DataFrame, out: Path) -> None:
    encoders = list(dict.fromkeys(summary.encoder))
    reps = list(dict.fromkeys(summary.representation))
    fig, axes = plt.subplots(len(encoders), 1, figsize=(13, 3.6 * len(encoders)), squeeze=False)
    width = 0.8 / len(reps)
    for ax, enc in zip(axes[:, 0], encoders, strict=True):
        part = summary[summary.encoder == enc].set_index(["task", "reader", "order", "representation"])
        for g, (task, reader, order, _) in enumerate(GROUPS):
            for r, rep in enumerate(reps):
                key = (task, reader, order, rep)
                if key not in part.index:
                    continue
                row = part.loc[key]
                x = g - 0.4 + (r + 0.5) * width
                ax.bar(x, row.accuracy, width, color=f"C{r}", label=rep if g == 0 else None)
                ax.errorbar(
                    x,
                    row.accuracy,
                    [[row.accuracy - row.ci_low], [row.ci_high - row.accuracy]],
                    color="k",
                    lw=0.8,
                    capsize=1.5,
                )
                ax.plot([x - width / 2, x + width / 2], [row.chance] * 2, color="k", ls=":", lw=1)
        ax.set_xticks(range(len(GROUPS)), [g[3] for g in GROUPS], fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.axhline(1.0, color="0.8", lw=0.5)
        ax.set_ylabel("accuracy (held-out prompts)")
        ax.set_title(f"{enc}: binding on seen compositions (dotted: the majority answer)", fontsize=9)
        ax.legend(fontsize=7, ncol=len(reps), loc="lower right")
    fig.tight_layout()
    save_figure(fig, out, "probe_binding", summary)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--encoders", nargs="+", default=["gemma3-270m", "smollm2-135m"], help="text encoders to probe"
    )
    ap.add_argument(
        "--representations",
        nargs="+",
        default=list(binding.DEFAULT_REPRESENTATIONS),
        help="hidden states or strategies probed (layer:0, mid, last, norm_mean, ...)",
    )
    ap.add_argument("--seeds", default="0,1,2", help="probe seeds, comma-separated")
    ap.add_argument("--steps", type=int, default=600, help="training steps of each probe")
    ap.add_argument("--n_colour", type=int, default=1600, help="prompts of the colour task")
    ap.add_argument("--n_position", type=int, default=800, help="prompts of the position task")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("figures/probe_binding"),
        help="folder the figure and tables are written to",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("cache/probe_binding"),
        help="folder of the per-item tables (an arm found there is reused)",
    )
    ap.add_argument(
        "--scale",
        choices=binding.SCALES,
        default="layernorm",
        help="per-token LayerNorm (as the layer-wise probe) or the study's one dataset-wide 1/RMS factor",
    )
    ap.add_argument(
        "--plot-only", action="store_true", help="no probing: redraw the figure from the tables in --work"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        data = binding.binding_prompts(args.n_colour, args.n_position, seed=0)
        data.to_csv(args.work / "prompts.csv", index=False)
        opts = ProbeOptions(steps=args.steps)
        seeds = [int(s) for s in args.seeds.split(",")]
        for name in args.encoders:
            label = name + ("" if args.scale == "layernorm" else f"[{args.scale}]")
            path = args.work / f"{label}.csv"
            if path.is_file():
                continue
            table, timing = binding.run_encoder(
                load_encoder(name), data, args.representations, seeds=seeds, options=opts, scale=args.scale
            )
            row = pd.DataFrame([dataclasses.asdict(timing) | {"seeds": len(seeds), "steps": args.steps}])
            row.to_csv(args.work / f"{label}.timing.csv", index=False)
            table.to_csv(path, index=False)
            print(
                f"{label}: encode {timing.encode_s:.0f} s, probe {timing.probe_s:.0f} s, "
                f"load {timing.load_1min:.1f}",
                flush=True,
            )
    items = [p for p in sorted(args.work.glob("*.csv")) if not p.name.endswith(".timing.csv")]
    tables = [pd.read_csv(p) for p in items if p.name != "prompts.csv"]
    timings = [pd.read_csv(p) for p in sorted(args.work.glob("*.timing.csv"))]
    if timings:
        pd.concat(timings, ignore_index=True).round(1).to_csv(args.out / "timings.csv", index=False)
    summary = binding.summarize(pd.concat(tables, ignore_index=True))
    plot(summary, args.out)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(summary.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
