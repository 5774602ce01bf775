"""Training-step throughput on this machine, as ratios measured in one run (no absolute claims).

1. Dense fp32 matmul FLOP/s of this CPU (the ceiling), then a `cpu-small` training step (fwd + bwd + AdamW,
   the same Denoiser and loss as t2istudy.diffusion.train): seconds per step, images/s, FLOPs per step counted by
   torch.utils.flop_counter.FlopCounterMode, and achieved FLOP/s as a fraction of the matmul ceiling.
2. Cached vs on-the-fly text: the same step with embeddings read from an EmbeddingCache vs encoded by a
   small and a large built-in encoder inside the step.
3. --rows: presets and step variants side by side (issue 36's capacity levers, the DiT, channels_last,
   torch.compile), timed in interleaved rounds, with steps per machine-minute; --out writes the table.

    .venv/bin/python benchmarks/train_step.py                 # full (~3-6 min on 2 quiet cores)
    .venv/bin/python benchmarks/train_step.py --quick         # fewer repeats, small encoder only
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_step.py --preset cpu-latent-v --batch 32 --encoders "" \
        --rows cpu-latent-v,cpu-latent-v:channels_last,cpu-latent-v:compile,cpu-latent-v-dit --rounds 10 \
        --out figures/binding/throughput.md

The machine's load average is printed before and after: timings on a shared machine are only comparable
within one run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.diffusion.checkpoint import Denoiser
from t2istudy.diffusion.data import shapes_pool
from t2istudy.diffusion.model import TextConditioner, build_unet, count_parameters, get_preset
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
    compile: bool = False,
):
    """One training step of the preset: its backbone, objective and Min-SNR weighting, AdamW."""
    preset = get_preset(preset_name)
    torch.manual_seed(0)
    model = Denoiser(build_unet(preset), TextConditioner(width, preset.cross_attention_dim))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.unet.to(memory_format=memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
    forward = torch.compile(model) if compile else model
    sched = preset.noise_scheduler()
    shape = (preset.latent_channels, preset.latent_size, preset.latent_size)
    x0 = torch.randn(batch, *shape).contiguous(memory_format=memory_format)
    snr_gamma = preset.train_defaults.get("snr_gamma")

    def step(features: torch.Tensor, mask: torch.Tensor, i: int = 0) -> float:
        noise, t, _ = step_randomness(0, i, batch, shape, sched.config.num_train_timesteps, 0.0)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            pred = forward(sched.add_noise(x0, noise, t), t, features, mask)
        loss = diffusion_loss(pred, x0, noise, t, sched, preset.prediction_type, snr_gamma)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step.parameters = count_parameters(model.unet)
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


ROW_OPTIONS = {"channels_last", "fused", "compile"}  # "preset:option:option" in --rows


def parse_row(spec: str) -> tuple[str, dict]:
    """'cpu-latent-v:channels_last:compile' -> (preset name, make_step keyword arguments)."""
    name, *options = spec.split(":")
    unknown = set(options) - ROW_OPTIONS
    if unknown:
        raise SystemExit(
            f"Row {spec!r} names {sorted(unknown)}: a row is a preset, then any of {sorted(ROW_OPTIONS)}."
        )
    get_preset(name)  # an unknown preset fails here, naming the choices
    return name, dict.fromkeys(options, True)


class CompileTooSlow(Exception):
    pass


def first_step(step, feats, mask, limit_s: float) -> float:
    """Seconds of the first step (compilation included); CompileTooSlow past ``limit_s`` (inductor wraps the
    alarm's exception in its own, so the alarm is remembered apart)."""
    fired = []

    def give_up(*_):
        fired.append(True)
        raise CompileTooSlow

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(int(limit_s))
    t = time.perf_counter()
    try:
        step(feats, mask, 0)
    except Exception:
        if fired:
            raise CompileTooSlow from None
        raise
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return time.perf_counter() - t


def compare_rows(specs: list[str], batch: int, rounds: int, compile_limit_s: float, out: str | None) -> None:
    """Presets and step variants timed in interleaved rounds, so that a neighbour's burst slows all alike.

    The median step counts (what a run of many steps sees under this machine's load); the best is beside it.
    Wall seconds grow with the neighbours' load; the process's CPU seconds much less, so steps per
    machine-minute are given from both (machine-minutes are seconds x threads / 60, as
    benchmarks/ladder.py counts them): from wall time at this load, and from CPU time (a machine-minute of
    CPU). Ratios are of wall medians.
    """
    width, tokens = 640, 16
    feats, mask = torch.randn(batch, tokens, width), torch.ones(batch, tokens, dtype=torch.bool)
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    steps, flops, notes = {}, {}, {}
    for spec in specs:
        name, kw = parse_row(spec)
        if name not in flops:
            with FlopCounterMode(display=False) as counter:
                make_step(name, width, batch, None)(feats, mask)
            flops[name] = counter.get_total_flops()
        step = make_step(name, width, batch, None, **kw)
        try:
            notes[spec] = (
                f"first step {first_step(step, feats, mask, compile_limit_s):.0f} s"
                if kw.get("compile")
                else ""
            )
        except CompileTooSlow:
            notes[spec] = f"skipped: compiling took over {compile_limit_s:.0f} s"
            print(f"  {spec}: {notes[spec]}", flush=True)
            continue
        step(feats, mask, 1)
        steps[spec] = (name, step)
    times: dict[str, list[float]] = {spec: [] for spec in steps}
    cpu: dict[str, list[float]] = {spec: [] for spec in steps}
    loads = []
    for r in range(rounds):
        for spec, (_, step) in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step(feats, mask, r + 2)
            times[spec].append(time.perf_counter() - t)
            cpu[spec].append(time.process_time() - c)
        loads.append(os.getloadavg()[0])
        print(f"  round {r + 1}/{rounds} done, load {loads[-1]:.2f}", flush=True)
    peak = matmul_flops()
    first = next(iter(steps), None)
    header = (
        "| row | backbone params | GFLOP/step | wall s/step median (best) | CPU s/step median | x vs first row | "
        "% of matmul peak | steps per machine-minute, wall (CPU) | note |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for spec in specs:
        if spec not in steps:
            lines.append(f"| {spec} | | | | | | | | {notes[spec]} |")
            continue
        name, step = steps[spec]
        med, best, cpu_med = statistics.median(times[spec]), min(times[spec]), statistics.median(cpu[spec])
        ratio = statistics.median(times[first]) / med
        lines.append(
            f"| {spec} | {step.parameters:,} | {flops[name] / 1e9:.1f} | {med:.3f} ({best:.3f}) | {cpu_med:.3f} | "
            f"x{ratio:.2f} | {flops[name] / med / peak:.0%} | {60 / med / threads:.0f} ({60 / cpu_med:.0f}) | "
            f"{notes[spec]} |"
        )
    footer = (
        f"batch {batch}, {threads} thread(s), {rounds} interleaved rounds; dense fp32 matmul {peak / 1e9:.0f} GFLOP/s "
        f"(best of 20, after the rounds); load average before {load_before[0]:.2f}, during the rounds "
        f"{min(loads, default=0):.2f}-{max(loads, default=0):.2f}, after {os.getloadavg()[0]:.2f}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    table = "\n".join(lines)
    print(table + "\n\n" + footer)
    if out:
        command = f"OMP_NUM_THREADS={threads} python benchmarks/train_step.py {shlex.join(sys.argv[1:])}"
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(f"<!-- written by: {command} -->\n{table}\n\n{footer}\n")


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
    ap.add_argument("--preset", default="cpu-small", help="preset of the single step and the text comparison")
    ap.add_argument("--batch", type=int, default=64, help="training batch size")
    ap.add_argument("--repeats", type=int, default=8, help="timed steps per measurement (best of N)")
    ap.add_argument(
        "--encoders",
        default="smollm2-135m,qwen2.5-0.5b",
        help="encoders for cached vs on-the-fly text, comma-separated ('' skips it)",
    )
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--quick", action="store_true", help="3 repeats, small encoder only")
    ap.add_argument("--variants", type=int, default=0, metavar="ROUNDS", help="also compare step variants")
    ap.add_argument(
        "--rows", default="", help="comma-separated presets[:channels_last][:fused][:compile] to compare"
    )
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds of --rows")
    ap.add_argument(
        "--compile-limit", type=float, default=180, help="seconds a compiling first step may take"
    )
    ap.add_argument(
        "--skip-single", action="store_true", help="only --rows (and --variants), not the first line"
    )
    ap.add_argument("--out", help="write the --rows table (markdown) here")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.encoders = 3, args.encoders.split(",")[0]
    print(f"threads {torch.get_num_threads()}  load average before {os.getloadavg()}")

    peak = matmul_flops()
    print(f"dense fp32 matmul (1024^3, best of 20): {peak / 1e9:.1f} GFLOP/s")

    width, tokens = 640, 16
    feats, mask = torch.randn(args.batch, tokens, width), torch.ones(args.batch, tokens, dtype=torch.bool)
    for dtype in [] if args.skip_single else [None, torch.bfloat16] if args.bf16 else [None]:
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

    if args.rows:
        print(f"rows, batch {args.batch}, interleaved, {args.rounds} rounds:", flush=True)
        compare_rows(args.rows.split(","), args.batch, args.rounds, args.compile_limit, args.out)

    # Cached vs on-the-fly text embeddings, same step.
    captions = shapes_pool(512, 0, 32).captions
    for name in filter(None, args.encoders.split(",")):  # --encoders "" skips this part
        compare_text(name, captions, args.preset, args.batch, args.repeats)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
