"""Latents from the cache vs encoded by the VAE in every step, side by side in one run (ratios only).

For a latent preset the loop either runs the frozen VAE on each batch (`--latents online`) or reads the
batch's cached moments (`--latents cache`) and draws the latent from them. Both variants are timed in
interleaved rounds (best of N each), with the same U-Net step after them, so a neighbour's burst slows
both alike. The VAE is the preset's own autoencoder (trained on first use) or `--vae_path`.

    .venv/bin/python benchmarks/latent_cache.py                      # cpu-latent, its shapes autoencoder
    .venv/bin/python benchmarks/latent_cache.py --vae_path /models/sd2-vae --preset sd2-256 --batch 8

The load average is printed beside the timings: compare only the ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from train_step import make_step

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.diffusion.autoencoder import get_or_train
from t2istudy.diffusion.data import shapes_pool
from t2istudy.diffusion.latents import LatentCache, sample_latents
from t2istudy.diffusion.model import get_preset, load_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu-latent", help="latent preset whose training step is timed")
    parser.add_argument("--vae_path", default=None, help="VAE folder (default: the preset's own autoencoder)")
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (best of N each)")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    vae = load_vae(args.vae_path or get_or_train(preset.autoencoder)).eval()
    sf = float(vae.config.scaling_factor)
    data = shapes_pool(4 * args.batch, 0, preset.image_size)
    width, tokens = 640, 16
    feats, mask = torch.randn(args.batch, tokens, width), torch.ones(args.batch, tokens, dtype=torch.bool)
    step = make_step(args.preset, width, args.batch, None)
    with tempfile.TemporaryDirectory() as root:
        cache = LatentCache.get_or_build(root, vae, data, "bench", batch_size=args.batch, progress=False)

        def online(i: int) -> None:
            rows = range((i % 4) * args.batch, (i % 4 + 1) * args.batch)
            images = torch.stack([data[j][0] for j in rows])
            with torch.no_grad():
                vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(i)) * sf
            step(feats, mask, i)

        def cached(i: int) -> None:
            rows = np.arange((i % 4) * args.batch, (i % 4 + 1) * args.batch)
            sample_latents(
                torch.from_numpy(np.array(cache.moments[rows])), torch.Generator().manual_seed(i), sf
            )
            step(feats, mask, i)

        best = {"online": float("inf"), "cached": float("inf")}
        online(0), cached(0)
        load = os.getloadavg()[0]
        for r in range(args.rounds):
            for name, fn in (("online", online), ("cached", cached)):
                t = time.perf_counter()
                fn(r)
                best[name] = min(best[name], time.perf_counter() - t)
    print(
        f"{args.preset}, batch {args.batch}, {torch.get_num_threads()} threads, load {load:.1f} -> "
        f"{os.getloadavg()[0]:.1f}: step with online VAE encoding {best['online']:.3f} s, with cached latents "
        f"{best['cached']:.3f} s (x{best['online'] / best['cached']:.2f})"
    )


if __name__ == "__main__":
    main()
