"""The dataset index: what each training process pays at start-up, before (it listed the data itself and held
Python lists) and now (it maps the index built once beside the data), side by side in one run.

Two datasets, generated here:
- real webdataset shards of --pairs tiny pairs (a 1x1 PNG and a caption per key, ~1 KiB per tar member), on
  which the listing itself is timed: ``build`` (the index built once, ``build_index``; ``build_verified`` also
  opens every image) and ``list`` (what every process did before: scan every tar header into Python lists);
- an index of --index_pairs entries (default 1M) written directly (captions and tar byte ranges over 100
  shard names; no image data), on which the per-process cost is measured at full size: ``open`` (map the
  index), ``read`` (10,000 random items located and their captions decoded), and ``lists`` (the Python lists
  the old FolderPairs held for that many pairs: (shard, member) tuples and captions, built from the index).
Each step runs in a fresh Python process; memory is its resident set after minus before (VmRSS, /proc), MiB;
``cpu_seconds`` is the process's own CPU time (a shared, loaded machine inflates the wall ``seconds``).

    .venv/bin/python benchmarks/dataset_index.py --pairs 120000 --shards 12 --index_pairs 1000000
    .venv/bin/python benchmarks/dataset_index.py --pairs 20000 --shards 4 --index_pairs 100000   # a quick look

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


def write_index(root: Path, n: int, shards: int = 100) -> None:
    """An index of n pairs as build_index writes it, without the data: captions and tar byte ranges."""
    import numpy as np

    from t2istudy.diffusion import data_index

    folder = root / data_index.INDEX_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    data_index._write_column(folder, "captions", [f"a red square {k}" for k in range(n)])
    k = np.arange(n, dtype=np.int64)
    np.save(folder / "members.npy", np.stack([k * shards // n, 1536 + 2048 * k, np.full(n, 70)], axis=1))
    names = [[f"shard-{s:05d}.tar", 0, 0] for s in range(shards)]
    meta = {"version": data_index.INDEX_VERSION, "kind": "shards", "n": n, "skipped": {}, "verified": False}
    (folder / "index.json").write_text(json.dumps({**meta, "shards": names}))


def measure(step: str, root: str) -> dict:
    """One step in this (fresh) process: seconds and resident memory added."""
    import numpy as np

    from t2istudy.diffusion import data_index

    if step == "lists":  # what the old FolderPairs held: read the captions first, count only the lists
        index = data_index.DatasetIndex(root)
        raw = [
            bytes(index.captions.data[a:b])
            for a, b in zip(index.captions.offsets[:-1], index.captions.offsets[1:], strict=True)
        ]
    before, start, cpu = rss_mib(), time.perf_counter(), time.process_time()
    if step in ("build", "build_verified"):
        shutil.rmtree(Path(root) / data_index.INDEX_DIR, ignore_errors=True)
        data_index.build_index(root, verify_images=step == "build_verified")
        n = data_index.DatasetIndex(root).meta["n"]
    elif step == "list":
        listing = data_index._Listing("skip", verify=False)
        for number, shard in enumerate(sorted(Path(root).glob("*.tar"))):
            data_index._list_shard(number, shard, listing)
        n = len(listing.captions)
    elif step == "lists":
        captions = [r.decode("utf-8") for r in raw]
        items = [(str(Path(root) / f"shard-{i % 100:05d}.tar"), f"{i:08d}.png") for i in range(len(captions))]
        n = len(items)
    elif step in ("open", "read"):
        index = data_index.DatasetIndex(root)
        n = len(index)
        if step == "read":
            for i in np.random.default_rng(0).integers(0, n, 10_000):
                index.locate(int(i))
                _ = index.captions[int(i)]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "step": step,
        "pairs": n,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(
            cpu, 3
        ),  # the process's own CPU time: what a busy shared machine does not inflate
        "rss_added_mib": round(rss_mib() - before, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=120_000, help="pairs in the real shards (listing)")
    parser.add_argument("--shards", type=int, default=12, help="tar shards the real pairs are spread over")
    parser.add_argument("--index_pairs", type=int, default=1_000_000, help="entries of the per-process index")
    parser.add_argument(
        "--root",
        default="/tmp/t2istudy-index-bench",
        help="scratch folder for the generated shards and index",
    )
    parser.add_argument("--verify", action="store_true", help="also time a build that opens every image")
    parser.add_argument("--keep", action="store_true", help="keep the generated shards (reused when present)")
    parser.add_argument(
        "--out",
        default=str(REPO / "figures" / "dataset_index.csv"),
        help="CSV the measurements are written to",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    args = parser.parse_args()
    if args.step:
        print(json.dumps(measure(args.step, args.root)))
        return
    shards_root, index_root = Path(args.root) / "shards", Path(args.root) / "index"
    if len(list(shards_root.glob("*.tar"))) != args.shards:
        t0 = time.perf_counter()
        shutil.rmtree(shards_root, ignore_errors=True)
        generate(shards_root, args.pairs, args.shards)
        print(f"generated {args.pairs} pairs in {args.shards} shards in {time.perf_counter() - t0:.0f} s")
    write_index(index_root, args.index_pairs)
    plan = [(step, shards_root) for step in ["build", *(["build_verified"] if args.verify else []), "list"]]
    plan += [(step, index_root) for step in ("open", "read", "lists")]
    rows = []
    for step, root in plan:
        cmd = [sys.executable, __file__, "--step", step, "--root", str(root)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        rows.append(row)
        print(row)
    table = pd.DataFrame(rows)
    table["cpu_us_per_pair"] = (table["cpu_seconds"] / table["pairs"] * 1e6).round(2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))
    shutil.rmtree(index_root, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
