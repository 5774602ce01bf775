"""How long the layer-norm explorer takes to redraw after a control change, for a 20-token prompt.

    .venv/bin/python benchmarks/explore_redraw.py [--encoders smollm2-135m,qwen2.5-0.5b] [--repeats 2]

Per encoder: the first draw (encoder call included), then every control change (normalization, first
token, scale, layer, top-k), each timed from setting ``.value`` to the new PNG in the Image widget, as
a click in JupyterLab would trigger it (the browser's own PNG decode is not included). Prints wall
and CPU seconds, their ratio to the 1 s target and to the first draw, and the load average beside
each measurement (the machine may be shared: wall time under load overstates the cost, CPU time
does not).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from t2istudy.text.encoders import BUILTIN_ENCODERS
from t2istudy.text.explore import EncodingCache, LayerExplorer

PROMPT = "a photo of two red circles to the left of a large blue square on a white wooden table in the sun"
TARGET_S = 1.0


def _changes(explorer: LayerExplorer) -> list[tuple[str, object, object]]:
    """(label, widget, new value) for one change of every control, then back again."""
    last = explorer.layer.max
    steps = [("norm=" + n, explorer.norm, n) for n in ("layernorm", "standardize", "rms", "l2", "none")]
    steps += [
        ("first token out", explorer.first_token, False),
        ("first token in", explorer.first_token, True),
    ]
    steps += [("scale=linear", explorer.scale, "linear"), ("scale=log", explorer.scale, "log")]
    steps += [("layer k", explorer.layer, last // 2), ("layer k back", explorer.layer, last)]
    steps += [("top-k=8", explorer.top_k, 8), ("top-k=4", explorer.top_k, 4)]
    return steps


def timed(action) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, repeats: int) -> None:
    cache = EncodingCache()
    cache.encoder(name)  # loading weights is not a redraw
    tokens = len(cache.encoder(name).tokenizer(PROMPT)["input_ids"])
    holder = {}
    first_wall, first_cpu = timed(lambda: holder.setdefault("x", LayerExplorer([PROMPT], name, cache=cache)))
    explorer = holder["x"]
    print(
        f"\n{name}: {tokens} tokens; first draw (encoder call included) {first_wall:.2f} s wall, "
        f"{first_cpu:.2f} s CPU; load {os.getloadavg()[0]:.2f}"
    )
    walls, cpus = [], []
    for _ in range(repeats):
        for label, control, value in _changes(explorer):
            load = os.getloadavg()[0]

            def change(control=control, value=value):
                control.value = value

            wall, cpu = timed(change)
            walls.append(wall)
            cpus.append(cpu)
            print(f"  {label:16s} {wall:6.3f} s wall {cpu:6.3f} s CPU  load {load:.2f}")
    assert cache.encoder_calls == 1, "a control change ran the encoder: the cache is broken"
    for what, values in (("wall", walls), ("CPU", cpus)):
        median = statistics.median(values)
        print(
            f"  median {what} {median:.3f} s (max {max(values):.3f}); x{median / TARGET_S:.2f} of the "
            f"{TARGET_S:.0f} s target; x{median / first_wall:.2f} of the first draw"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--encoders", default=",".join(BUILTIN_ENCODERS), help="encoders to time, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=2, help="passes over every control change per encoder")
    args = parser.parse_args()
    print(f"load average at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    for name in args.encoders.split(","):
        bench(name.strip(), args.repeats)
    print(f"\nload average at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
