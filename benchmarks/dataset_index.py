"""The dataset index on a generated N-pair dataset (default 1M): what each training process pays at start-up,
before (it listed the data itself) and now (it maps the index built once beside the data), side by side.

Generates N tiny pairs in webdataset shards (a 1x1 PNG and a caption per key; ~1 KiB per tar member), then
times, each in a fresh Python process so that its memory is its own:
- ``build``:   the index built once (``build_index``), without and with opening every image (--verify);
- ``list``:    what every process did before the index: scan every tar header and hold the pairs in Python
               lists (``_Listing``: the old FolderPairs' lists, without the image checks);
- ``open``:    what every process does now: ``DatasetIndex`` maps the index; then 10,000 random items
               located and their captions read (``read``).
Memory is the process's resident set after minus before (VmRSS, /proc), in MiB.

    .venv/bin/python benchmarks/dataset_index.py --pairs 1000000 --shards 100 --root /tmp/index-bench
    .venv/bin/python benchmarks/dataset_index.py --pairs 20000 --shards 4   # a quick look

Writes figures/dataset_index.csv and prints it with the load average; compare rows within one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def generate(root: Path, pairs: int, shards: int) -> None:
    """N pairs over `shards` tar files: <key>.png (1x1) and <key>.txt ("a <colour> square <key>")."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(buf, format="PNG")
    png = buf.getvalue()
    root.mkdir(parents=True, exist_ok=True)
    per = -(-pairs // shards)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:05d}.tar", "w") as tar:
            for k in range(s * per, min(pairs, (s + 1) * per)):
                for name, data in ((f"{k:08d}.png", png), (f"{k:08d}.txt", f"a red square {k}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def measure(step: str, root: str) -> dict:
    """One step in this (fresh) process: seconds and resident memory added."""
    import numpy as np

    from t2istudy.diffusion import data_index

    before, start = rss_mib(), time.perf_counter()
    if step in ("build", "build_verified"):
        shutil.rmtree(Path(root) / data_index.INDEX_DIR, ignore_errors=True)
        data_index.build_index(root, verify_images=step == "build_verified")
        n = data_index.DatasetIndex(root).meta["n"]
    elif step == "list":
        listing = data_index._Listing("skip", verify=False)
        for number, shard in enumerate(sorted(Path(root).glob("*.tar"))):
            data_index._list_shard(number, shard, listing)
        n = len(listing.captions)
    elif step in ("open", "read"):
        index = data_index.DatasetIndex(root)
        n = len(index)
        if step == "read":
            for i in np.random.default_rng(0).integers(0, n, 10_000):
                index.locate(int(i))
                _ = index.captions[int(i)]
    seconds = time.perf_counter() - start
    return {"step": step, "pairs": n, "seconds": round(seconds, 3), "rss_added_mib": round(rss_mib() - before, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--root", default="/tmp/t2istudy-index-bench")
    parser.add_argument("--verify", action="store_true", help="also time a build that opens every image")
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset")
    parser.add_argument("--out", default=str(REPO / "figures" / "dataset_index.csv"))
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    args = parser.parse_args()
    if args.step:
        print(json.dumps(measure(args.step, args.root)))
        return
    root = Path(args.root)
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    generate(root, args.pairs, args.shards)
    print(f"generated {args.pairs} pairs in {args.shards} shards in {time.perf_counter() - t0:.0f} s")
    steps = ["build", *(["build_verified"] if args.verify else []), "list", "open", "read"]
    rows = []
    for step in steps:
        cmd = [sys.executable, __file__, "--step", step, "--root", str(root)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        rows.append(row)
        print(row)
    table = pd.DataFrame(rows)
    table.insert(0, "shards", args.shards)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
