"""A template's shared prefix run once vs with every prompt, side by side in one run (ratios only).

Templated recipes (qwen-image, hunyuan, sana, ...) wrap every prompt in the same instruction, 48-170 tokens
around a ~12-token caption. A causal model's states of that prefix do not depend on what follows, so the
encoder runs it once per call and each batch continues from its attention cache (``FrozenEncoder.prefix_cache``,
``t2istudy/text/encoders.py``). Both ways are timed in interleaved rounds (best of N), on shapes-world
training captions, through ``encode_aggregated`` (the streaming fold the embedding cache and the probe use),
and the largest difference between their features is printed beside the ratio.

    .venv/bin/python benchmarks/prefix_cache.py
    .venv/bin/python benchmarks/prefix_cache.py --encoders qwen2.5-0.5b --templates sana --prompts 128

The load average is printed beside the timings: compare only the ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.text.encoders import load_encoder
from t2istudy.world.shapes import ShapesWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--encoders", nargs="+", default=["smollm2-135m", "gemma3-270m"], help="text encoders to time"
    )
    parser.add_argument(
        "--templates",
        nargs="+",
        default=["qwen-image", "sana", "chat"],
        help="prompt templates whose shared prefix is cached",
    )
    parser.add_argument("--prompts", type=int, default=64, help="training captions encoded per timing")
    parser.add_argument("--batch", type=int, default=32, help="encoding batch size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best of N each)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, captions, _ = ShapesWorld(seed=0).batch(args.prompts, np.random.default_rng(0), 32)
    captions = list(captions)
    print(
        f"{args.prompts} training captions, batch {args.batch}, {args.threads} thread(s), best of {args.rounds}"
    )
    print(
        f"{'encoder':14} {'template':11} {'prefix':>6} {'whole s':>8} {'cached s':>8} {'speed-up':>8} {'max rel diff':>12}"
    )
    for name in args.encoders:
        encoder = load_encoder(name)
        for template in args.templates:
            strategy = f"norm_mean[template={template}]"
            shared = encoder.tokenize_templated(captions[:1], template).shared
            best = {True: float("inf"), False: float("inf")}
            features = {}
            for _ in range(args.rounds):
                for cached in (True, False):  # interleaved: a neighbour's burst slows both alike
                    encoder.prefix_cache = cached
                    start = time.perf_counter()
                    features[cached], _ = encoder.encode_aggregated(captions, strategy, batch_size=args.batch)
                    best[cached] = min(best[cached], time.perf_counter() - start)
            scale = float(features[False].abs().max())
            diff = float((features[True] - features[False]).abs().max()) / scale
            print(
                f"{name:14} {template:11} {shared:6d} {best[False]:8.2f} {best[True]:8.2f} "
                f"{best[False] / best[True]:7.2f}x {diff:12.1e}"
            )
        encoder.prefix_cache = True
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
