"""What the notebook runner costs per run: papermill (kernel start, parameter injection, saving the
executed notebook, markers) vs the same cell code executed in this process.

    .venv/bin/python benchmarks/runner_overhead.py [--repeats 3]

Prints both times and their ratio measured side by side in one run, with the load average (the machine
may be shared). The overhead is a fixed cost per run: compare it with a real run (~25 min on cpu-small).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat

from t2istudy.study import runner

BODY = "import pandas as pd\nfrom t2istudy.study import run_folder\nx = sum(range(n))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best of N each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell('n = 1000\nout_dir = ""')
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell(BODY)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = Path(tmp) / "nb.ipynb"
        nbformat.write(nb, path)
        direct, papermill = [], []
        for i in range(args.repeats):  # interleaved, so outside load hits both alike
            start = time.perf_counter()
            exec(compile("n = 1000\n" + BODY, "cell", "exec"), {})
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = runner.execute_notebook(path, Path(tmp) / "runs" / "bench" / f"r{i}", {"n": 1000})
            papermill.append(time.perf_counter() - start)
            assert result.state == "done", result.error
    load = os.getloadavg()
    best_direct, best_pm = min(direct), min(papermill)
    print(
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs; best of {args.repeats}"
    )
    print(
        f"in-process: {best_direct * 1e3:.1f} ms   papermill runner: {best_pm:.2f} s   ratio {best_pm / best_direct:.0f}x"
    )
    print(
        f"runner overhead per run: {best_pm - best_direct:.2f} s = {100 * (best_pm - best_direct) / 1500:.2f}% of a 25-min run"
    )


if __name__ == "__main__":
    main()
