"""Training-step time of the small presets, side by side in one run (ratios only).

`cpu-small` trains a pixel U-Net on 32x32x3 images, `cpu-latent` a U-Net with cross-attention at every
level on the shapes autoencoder's 16x16x4 latents. Each preset's production step (fwd + bwd + AdamW, the
same Denoiser and loss as training) is timed in interleaved rounds, best of N, at one batch size, so a
neighbour's burst slows both alike.

    .venv/bin/python benchmarks/preset_steps.py                    # batch 64, 1 thread
    .venv/bin/python benchmarks/preset_steps.py --batch 32 --rounds 6

The load average is printed beside the timings: compare only the ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from train_step import make_step

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="cpu-small,cpu-latent", help="presets to time, comma-separated")
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds (best of N each)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, tokens = 640, 16
    feats, mask = torch.randn(args.batch, tokens, width), torch.ones(args.batch, tokens, dtype=torch.bool)
    steps = {name: make_step(name, width, args.batch, None) for name in args.presets.split(",")}
    for step in steps.values():  # warm-up
        step(feats, mask, 0)
    load = os.getloadavg()[0]
    best = dict.fromkeys(steps, float("inf"))
    for r in range(args.rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            step(feats, mask, r + 1)
            best[name] = min(best[name], time.perf_counter() - t)
    first = next(iter(best))
    print(
        f"batch {args.batch}, {args.threads} thread(s), load {load:.1f} -> {os.getloadavg()[0]:.1f}, best of {args.rounds}:"
    )
    for name, sec in best.items():
        print(f"  {name:12s} {sec:.3f} s/step  x{best[first] / sec:.2f} vs {first}")


if __name__ == "__main__":
    main()
