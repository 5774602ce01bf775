"""sd2-256 training-step throughput on one GPU in bf16: t2istudy's step next to diffusers' plain loop.

Prepared for a GPU session (not run on the CPU machine). Both loops train the same SD2 U-Net (865.9M
parameters) on 32x32x4 latents with random latents and random 1024-wide text states, AdamW, bf16 autocast:
- "t2istudy": the Denoiser (TextConditioner projection + U-Net with encoder_attention_mask) and
  diffusion_loss exactly as t2istudy.diffusion.train runs them, through accelerate (mixed_precision="bf16");
- "diffusers": the inner loop of diffusers' examples/text_to_image/train_text_to_image.py (unet(...).sample,
  F.mse_loss, backward, clip, step) under torch.autocast;
- "diffusers+mask": the same plain loop passing encoder_attention_mask, to show what masking the padded
  text tokens costs by itself (SDPA cannot take its flash kernel with a mask).
Every (loop, batch) is measured --repeats times in alternating order, so clock drift does not favour one.
Prints images/s per (loop, batch), FLOP/s against the card's dense bf16 matmul FLOP/s measured in the same
run, and writes figures/gpu/gpu_sd2_throughput.{csv,png,pdf}.

    python benchmarks/gpu_sd2_throughput.py --batch 32 64 --steps 20      # ~3-5 min on one H100
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import t2istudy  # noqa: F401
from t2istudy.diffusion.checkpoint import Denoiser
from t2istudy.diffusion.model import TextConditioner, build_unet, count_parameters, get_preset
from t2istudy.diffusion.train import diffusion_loss


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def run_loop(
    kind: str, batch: int, steps: int, warmup: int, device: str, preset_name: str = "sd2-256"
) -> dict:
    preset = get_preset(preset_name)
    torch.manual_seed(0)
    unet = build_unet(preset).to(device)
    sched = preset.noise_scheduler()
    width = preset.cross_attention_dim
    latents = torch.randn(
        batch, preset.latent_channels, preset.latent_size, preset.latent_size, device=device
    )
    text = torch.randn(batch, 77, width, device=device)
    mask = torch.ones(batch, 77, dtype=torch.bool, device=device)
    if kind == "t2istudy":
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision="bf16", cpu=device == "cpu")
        model = Denoiser(unet, TextConditioner(width, preset.cross_attention_dim).to(device))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model, opt = accelerator.prepare(model, opt)

        def step():
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (batch,), device=device)
            pred = model(sched.add_noise(latents, noise, t), t, text, mask)
            loss = diffusion_loss(pred, latents, noise, t, sched, "epsilon", 5.0)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        attn_mask = mask if kind == "diffusers+mask" else None
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        unet.train()

        def step():
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (batch,), device=device)
            with torch.autocast(device, dtype=torch.bfloat16):
                pred = unet(
                    sched.add_noise(latents, noise, t), t, text, encoder_attention_mask=attn_mask
                ).sample
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    sec = (time.perf_counter() - t0) / steps
    out = {
        "loop": kind,
        "batch": batch,
        "s_per_step": sec,
        "img_per_s": batch / sec,
        "flop_per_step": counter.get_total_flops(),
        "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"),
        "unet_parameters": count_parameters(unet),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64], help="batch sizes to measure")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    ap.add_argument(
        "--repeats", type=int, default=2, help="measurements per (loop, batch), in alternating order"
    )
    ap.add_argument(
        "--out", default="figures/gpu/gpu_sd2_throughput", help="path stem of the .csv, .png and .pdf written"
    )
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke test of this script")
    ap.add_argument("--preset", default="sd2-256", help="another preset only for a smoke test")
    args = ap.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("This benchmark needs a CUDA GPU; on CPU run benchmarks/train_step.py instead.")
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak(device, n=8192 if device == "cuda" else 512)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{name}: dense bf16 matmul {peak / 1e12:.3f} TFLOP/s")
    rows = []
    loops = ["diffusers", "diffusers+mask", "t2istudy"]
    plan = [
        (repeat, batch, kind)
        for repeat in range(args.repeats)
        for batch in args.batch
        for kind in (loops if repeat % 2 == 0 else loops[::-1])
    ]
    for repeat, batch, kind in plan:
        r = run_loop(kind, batch, args.steps, args.warmup, device, args.preset)
        r["repeat"] = repeat
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        r["tflops"] = r["flop_per_step"] / r["s_per_step"] / 1e12
        r["fraction_of_peak"] = r["tflops"] * 1e12 / peak
        rows.append(r)
        print(
            f"{kind:14s} batch {batch:3d}: {r['img_per_s']:7.1f} img/s  {r['s_per_step'] * 1e3:6.1f} ms/step  "
            f"{r['tflops']:.0f} TFLOP/s ({r['fraction_of_peak']:.0%} of matmul)  {r['max_mem_gib']:.1f} GiB"
        )
    table = pd.DataFrame(rows)
    table["device"] = name
    table["matmul_peak_tflops"] = peak / 1e12
    mean = table.groupby(["batch", "loop"])["img_per_s"].mean()
    for batch in args.batch:
        for kind in loops[1:]:
            print(
                f"batch {batch}: {kind} / diffusers throughput = {mean[batch, kind] / mean[batch, 'diffusers']:.3f}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    (out.parent / (out.name + "_env.json")).write_text(
        json.dumps({"torch": torch.__version__, "pid": os.getpid()})
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(5, 3.2))
    sns.barplot(data=table, x="batch", y="img_per_s", hue="loop", ax=ax)
    ax.set(ylabel="training images / s (bf16)", title=f"{args.preset} U-Net, {name}")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(out.with_suffix(f".{ext}"), dpi=150)
    print(f"wrote {out}.csv/.png/.pdf")


if __name__ == "__main__":
    main()
