"""Time and peak memory of norm_mean, stacked vs streaming, as ratios to `last` (one run, side by side).

    .venv/bin/python benchmarks/streaming_aggregation.py [--encoder gemma3-270m --n-prompts 64 --repeats 3]

- last                 encode_aggregated(prompts, "last"): the cost of the usual conditioning
- norm_mean stacked    encode() -> [L, N, T, D] for every layer, then aggregate()
- norm_mean streaming  encode_aggregated(prompts, "norm_mean"): forward hooks fold each layer into
                       the output as it is produced

Time: median and minimum over ``--repeats`` rounds (the minimum is the least disturbed on a shared machine), the variants interleaved within each round so that outside
load hits them alike (the machine load is printed before and after). Peak memory: the largest total
of tensor bytes allocated during one call, from torch.profiler's memory events (works on CPU;
model weights loaded earlier are not counted). Target: streaming within 1.05x of `last` in both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from t2istudy.aggregation import aggregate
from t2istudy.encoders import load_encoder
from t2istudy.stats import load_prompts


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of torch's allocated bytes while ``fn`` runs (allocations made before it are excluded)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="gemma3-270m")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is steadier on a busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    encoder = load_encoder(args.encoder)
    prompts = load_prompts("genai-bench", args.n_prompts)
    bs = args.batch_size

    def stacked():
        states = encoder.encode(prompts, batch_size=bs)
        return aggregate(states.hidden, states.mask, "norm_mean")

    variants = {
        "last": lambda: encoder.encode_aggregated(prompts, "last", batch_size=bs)[0],
        "norm_mean stacked": stacked,
        "norm_mean streaming": lambda: encoder.encode_aggregated(prompts, "norm_mean", batch_size=bs)[0],
    }
    diff = (variants["norm_mean streaming"]() - stacked()).abs().max().item()  # also warms up every path

    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    peaks = {name: peak_bytes(fn) for name, fn in variants.items()}
    load_after = os.getloadavg()

    print(
        f"{args.encoder}: {encoder.num_states} states x {encoder.width}, {len(prompts)} GenAI-Bench prompts, "
        f"batch {bs}, {torch.get_num_threads()} threads, {args.repeats} rounds"
    )
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}")
    print(f"max |streaming - stacked| for norm_mean: {diff:.2e}")
    base_t, base_m = statistics.median(times["last"]), peaks["last"]
    base_min = min(times["last"])
    print(f"{'variant':<22}{'median s':>9}{'x last':>8}{'min s':>9}{'x last':>8}{'peak MB':>9}{'x last':>8}")
    for name in variants:
        t, t_min, m = statistics.median(times[name]), min(times[name]), peaks[name]
        print(
            f"{name:<22}{t:>9.3f}{t / base_t:>8.3f}{t_min:>9.3f}{t_min / base_min:>8.3f}"
            f"{m / 2**20:>9.1f}{m / base_m:>8.3f}"
        )
    print("per-round times:", {name: [round(x, 3) for x in ts] for name, ts in times.items()})


if __name__ == "__main__":
    main()
