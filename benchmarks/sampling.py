"""Sampling throughput (images/s) for DDIM and DPM-Solver++ with classifier-free guidance, one run.

Speed does not depend on the weights, so a freshly initialised model of the preset is used; the text side
is a fixed random embedding (16 tokens). Prints images/s per (sampler, steps, batch) and the ratio of each
to the first row, plus milliseconds per image per denoising step (the CFG pair counts as one image).

    .venv/bin/python benchmarks/sampling.py            # cpu-small, DDIM 25 / DPM++ 20 / DDIM 25 without CFG
    .venv/bin/python benchmarks/sampling.py --quick
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.diffusion.checkpoint import Denoiser
from t2istudy.diffusion.model import TextConditioner, build_unet, get_preset
from t2istudy.diffusion.sample import sample


class FixedText:
    """Same random embedding for every prompt: the sampler's cost, not the encoder's, is measured."""

    def __init__(self, width: int, tokens: int = 16):
        self.f = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(0))
        self.m = torch.ones(1, tokens, dtype=torch.bool)

    def embed(self, captions):
        return self.f.expand(len(captions), -1, -1), self.m.expand(len(captions), -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small", help="preset of the freshly initialised model")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="batch sizes to time")
    ap.add_argument("--quick", action="store_true", help="batch 16 only, DDIM and DPM++ at 10 steps")
    args = ap.parse_args()
    configs = [("ddim", 25, None), ("dpm++", 20, None), ("ddim", 25, 1.0)]
    if args.quick:
        args.batch, configs = [16], [("ddim", 10, None), ("dpm++", 10, None)]
    preset = get_preset(args.preset)
    torch.manual_seed(0)
    width = 640
    model = Denoiser(build_unet(preset), TextConditioner(width, preset.cross_attention_dim)).eval()
    text = FixedText(width)
    null = (torch.zeros(1, 1, width), torch.zeros(1, 1, dtype=torch.bool))
    print(f"threads {torch.get_num_threads()}  load average before {os.getloadavg()}")
    first = None
    for batch in args.batch:
        for name, steps, cfg in configs:
            prompts = [f"p{i}" for i in range(batch)]
            kw = dict(text=text, null=null, preset=preset, sampler=name, steps=steps, batch_size=batch)
            sample(model, prompts[:2], [0], **{**kw, "steps": 2}, guidance_scale=cfg)  # warm-up
            t = time.perf_counter()
            sample(model, prompts, [0], **kw, guidance_scale=cfg)
            sec = time.perf_counter() - t
            rate = batch / sec
            first = first or rate
            scale = preset.guidance_scale if cfg is None else cfg
            print(
                f"{name:6s} {steps:3d} steps  CFG {scale:3.1f}  batch {batch:3d}: {rate:6.2f} img/s "
                f"(x{rate / first:.2f})  {sec / batch / steps * 1e3:.1f} ms per image-step"
            )
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
