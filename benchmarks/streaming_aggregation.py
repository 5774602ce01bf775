"""Time and peak memory of norm_mean, stacked vs streaming, as ratios to `last` (one run, side by side).

    .venv/bin/python benchmarks/streaming_aggregation.py [--encoder gemma3-270m --n-prompts 64 --repeats 3]

- last                 encode_aggregated(prompts, "last"): the cost of the usual conditioning
- norm_mean stacked    encode() -> [L, N, T, D] for every layer, then aggregate()
- norm_mean streaming  encode_aggregated(prompts, "norm_mean"): forward hooks fold each layer into
                       the output as it is produced

Time: median over ``--repeats`` rounds of wall time and of this process's CPU time (the CPU time is
far less disturbed by other processes on a shared machine), the variants interleaved within each
round so that outside load hits them alike (the machine load is printed before and after).
Peak memory: the largest total of tensor bytes allocated during one call, from torch.profiler's
memory events (works on CPU; model weights loaded earlier are not counted). Target: streaming within 1.05x of `last` in both.
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

from t2istudy.text.aggregation import Aggregator, aggregate
from t2istudy.text.encoders import load_encoder
from t2istudy.text.stats import load_prompts


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


def aggregation_share(fn: Callable[[], object]) -> float:
    """Fraction of one call's CPU time spent inside ``Aggregator.add`` (the streaming hooks' work).

    Both parts are measured in the same call, so outside load scales them alike.
    """
    original = Aggregator.add
    spent = [0.0]

    def timed(self, index, hidden):
        start = time.process_time()
        original(self, index, hidden)
        spent[0] += time.process_time() - start

    Aggregator.add = timed
    try:
        start = time.process_time()
        fn()
        total = time.process_time() - start
    finally:
        Aggregator.add = original
    return spent[0] / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="gemma3-270m", help="text encoder to time")
    parser.add_argument("--n-prompts", type=int, default=64, help="GenAI-Bench prompts encoded per call")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (median taken)")
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
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % 3 :] + names[: r % 3]:  # rotate the order: no variant always runs first
            fn = variants[name]
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    peaks = {name: peak_bytes(fn) for name, fn in variants.items()}
    hook_share = {name: aggregation_share(variants[name]) for name in ("last", "norm_mean streaming")}
    load_after = os.getloadavg()

    print(
        f"{args.encoder}: {encoder.num_states} states x {encoder.width}, {len(prompts)} GenAI-Bench prompts, "
        f"batch {bs}, {torch.get_num_threads()} threads, {args.repeats} rounds"
    )
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}")
    print(f"max |streaming - stacked| for norm_mean: {diff:.2e}")
    base_w, base_c, base_m = statistics.median(wall["last"]), statistics.median(cpu["last"]), peaks["last"]
    print(f"{'variant':<22}{'wall s':>8}{'x last':>8}{'cpu s':>8}{'x last':>8}{'peak MB':>9}{'x last':>8}")
    for name in variants:
        w, c, m = statistics.median(wall[name]), statistics.median(cpu[name]), peaks[name]
        print(
            f"{name:<22}{w:>8.3f}{w / base_w:>8.3f}{c:>8.3f}{c / base_c:>8.3f}{m / 2**20:>9.1f}{m / base_m:>8.3f}"
        )
    extra = hook_share["norm_mean streaming"] - hook_share["last"]
    print(
        f"time inside the aggregation hooks (load-independent, same call): last {hook_share['last']:.2%}, "
        f"norm_mean streaming {hook_share['norm_mean streaming']:.2%} of the call -> intrinsic ratio "
        f"~{1 + extra:.3f}x"
    )
    print("wall s per round:", {name: [round(x, 2) for x in ts] for name, ts in wall.items()})
    print("cpu s per round: ", {name: [round(x, 2) for x in ts] for name, ts in cpu.items()})


if __name__ == "__main__":
    main()
