"""Training-step throughput on this machine, as ratios measured in one run (no absolute claims).

1. Dense fp32 matmul FLOP/s of this CPU (the ceiling), then a `cpu-small` training step (fwd + bwd + AdamW,
   the same Denoiser and loss as t2istudy.diffusion.train): seconds per step, images/s, FLOPs per step counted by
   torch.utils.flop_counter.FlopCounterMode, and achieved FLOP/s as a fraction of the matmul ceiling.
2. Cached vs on-the-fly text: the same step with embeddings read from an EmbeddingCache vs encoded by a
   small and a large built-in encoder inside the step.

    .venv/bin/python benchmarks/train_step.py                 # full (~3-6 min on 2 quiet cores)
    .venv/bin/python benchmarks/train_step.py --quick         # fewer repeats, small encoder only

The machine's load average is printed before and after: timings on a shared machine are only comparable
within one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.diffusion.checkpoint import Denoiser
from t2istudy.diffusion.data import shapes_pool
from t2istudy.diffusion.model import TextConditioner, build_unet, get_preset
from t2istudy.diffusion.train import diffusion_loss, step_randomness
from t2istudy.text.cache import EmbeddingCache, OnlineText


def matmul_flops(n: int = 1024, repeats: int = 20) -> float:
    """The ceiling: the fastest of `repeats` dense products (outside load only ever slows one down)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


VARIANTS = {  # name -> make_step keyword arguments; compared side by side by --variants
    "baseline": {},
    "channels_last": {"channels_last": True},
    "fused_adamw": {"fused": True},
    "channels_last+fused": {"channels_last": True, "fused": True},
}


def make_step(
    preset_name: str,
    width: int,
    batch: int,
    dtype: torch.dtype | None,
    channels_last: bool = False,
    fused: bool = False,
):
    preset = get_preset(preset_name)
    torch.manual_seed(0)
    model = Denoiser(build_unet(preset), TextConditioner(width, preset.cross_attention_dim))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.unet.to(memory_format=memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
    sched = preset.noise_scheduler()
    shape = (preset.latent_channels, preset.latent_size, preset.latent_size)
    x0 = torch.randn(batch, *shape).contiguous(memory_format=memory_format)

    def step(features: torch.Tensor, mask: torch.Tensor, i: int = 0) -> float:
        noise, t, _ = step_randomness(0, i, batch, shape, sched.config.num_train_timesteps, 0.0)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            pred = model(sched.add_noise(x0, noise, t), t, features, mask)
        loss = diffusion_loss(pred, x0, noise, t, sched, "epsilon", None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def time_it(fn, repeats: int, warmup: int = 2) -> float:
    """Best of `repeats`, like the matmul ceiling: this host's neighbours slow single steps by up to 1.5x."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return min(times)


def compare_variants(preset: str, batch: int, rounds: int, peak: float) -> None:
    """Step variants timed in interleaved rounds (best of ``rounds`` each), so that a neighbour's burst
    slows all of them alike; ratios are to the baseline measured in the same rounds."""
    width, tokens = 640, 16
    feats, mask = torch.randn(batch, tokens, width), torch.ones(batch, tokens, dtype=torch.bool)
    steps = {name: make_step(preset, width, batch, None, **kw) for name, kw in VARIANTS.items()}
    with FlopCounterMode(display=False) as counter:
        steps["baseline"](feats, mask)
    flops = counter.get_total_flops()
    for step in steps.values():
        step(feats, mask, 1)
    best = dict.fromkeys(steps, float("inf"))
    for r in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            step(feats, mask, r)
            best[name] = min(best[name], time.perf_counter() - t)
    peak = max(peak, matmul_flops())
    for name, sec in best.items():
        print(
            f"  {name:22s} {sec:.3f} s/step  x{best['baseline'] / sec:.2f} vs baseline  "
            f"{flops / sec / 1e9:.1f} GFLOP/s = {flops / sec / peak:.0%} of matmul peak"
        )


def compare_text(name: str, captions: list[str], preset: str, batch: int, repeats: int) -> None:
    """Step time with embeddings from the cache vs from the frozen encoder inside the step."""
    from t2istudy.text.encoders import load_encoder

    enc = load_encoder(name)
    batches = [captions[i * batch : (i + 1) * batch] for i in range(len(captions) // batch)]
    with tempfile.TemporaryDirectory() as root:
        cache = EmbeddingCache.build(enc, "norm_mean", captions, root, progress=False)
        online = OnlineText(enc, "norm_mean", batch_size=batch)
        step = make_step(preset, enc.width, batch, None)
        cached = time_it(lambda i: step(*cache.embed(batches[i % len(batches)]), i), repeats)
        fly = time_it(lambda i: step(*online.embed(batches[i % len(batches)]), i), repeats)
        enc_only = time_it(lambda i: online.embed(batches[i % len(batches)]), repeats)
        look = time_it(lambda i: cache.embed(batches[i % len(batches)]), repeats)
    print(
        f"{name} ({enc.num_states - 1} layers x {enc.width}): step cached {cached:.3f} s, on the fly {fly:.3f} s "
        f"(x{fly / cached:.2f}); encode {enc_only * 1e3:.0f} ms vs cache lookup {look * 1e3:.1f} ms per batch"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--encoders", default="smollm2-135m,qwen2.5-0.5b")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--quick", action="store_true", help="3 repeats, small encoder only")
    ap.add_argument("--variants", type=int, default=0, metavar="ROUNDS", help="also compare step variants")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.encoders = 3, args.encoders.split(",")[0]
    print(f"threads {torch.get_num_threads()}  load average before {os.getloadavg()}")

    peak = matmul_flops()
    print(f"dense fp32 matmul (1024^3, best of 20): {peak / 1e9:.1f} GFLOP/s")

    width, tokens = 640, 16
    feats, mask = torch.randn(args.batch, tokens, width), torch.ones(args.batch, tokens, dtype=torch.bool)
    for dtype in [None, torch.bfloat16] if args.bf16 else [None]:
        step = make_step(args.preset, width, args.batch, dtype)
        with FlopCounterMode(display=False) as counter:
            step(feats, mask)
        flops = counter.get_total_flops()
        sec = time_it(lambda i, s=step: s(feats, mask, i), args.repeats)
        name = "bf16" if dtype else "fp32"
        peak = max(peak, matmul_flops())  # measured again next to the step: the higher ceiling counts
        print(
            f"{args.preset} step {name}, batch {args.batch}: {sec:.3f} s/step, {args.batch / sec:.1f} img/s, "
            f"{flops / 1e9:.2f} GFLOP/step, {flops / sec / 1e9:.1f} GFLOP/s = {flops / sec / peak:.0%} of matmul peak"
        )

    if args.variants:
        print(f"step variants, batch {args.batch}, interleaved, best of {args.variants} rounds:")
        compare_variants(args.preset, args.batch, args.variants, peak)

    # Cached vs on-the-fly text embeddings, same step.
    captions = shapes_pool(512, 0, 32).captions
    for name in filter(None, args.encoders.split(",")):  # --encoders "" skips this part
        compare_text(name, captions, args.preset, args.batch, args.repeats)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
