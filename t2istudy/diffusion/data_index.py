"""The index of an image-text dataset on disk, built once in a folder beside the data and memory-mapped by every
process on every start.

Why: listing the pairs (and opening each image to check it) at start-up cost ~0.1 ms a pair in every process
on every resume, ~1.3 h per process for 46M pairs, and held 46M-entry Python lists in each process's memory.
The index holds the same facts as flat arrays: where each image is (a path, or a shard and the byte range of
its tar member, so no process scans the tar headers again) and its caption, as UTF-8 bytes with int64 offsets.
Processes share the pages through the OS cache; a caption is decoded only when it is read.

Layout of ``<data>/.t2istudy-index/`` (written in a staging folder, renamed when complete):
    index.json      version, kind (folder | shards), pair count, skipped pairs by reason, whether images were
                    verified, and each shard's (name, size, mtime) so a changed shard rebuilds the index
    captions.bin / captions.offsets.npy     caption i = bytes [offsets[i], offsets[i+1])
    paths.bin / paths.offsets.npy           folder: image i's path relative to the data folder
    members.npy     shards: int64 [N, 3] = (shard number, byte offset of the member's data, its size)

A folder of files is not re-listed on start (that is the cost being removed): after adding or removing pairs,
delete the index folder; `build_index` is also what ``python -m t2istudy.diffusion.data_index <data>`` runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from t2istudy.staging import staging_folder
from t2istudy.text.cache import load_npy

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
INDEX_DIR = ".t2istudy-index"
INDEX_VERSION = 1


class TextColumn(Sequence):
    """N strings stored as one UTF-8 buffer and N + 1 offsets, both memory-mapped: a list's interface
    (len, index, slice, iteration) without a Python object per entry."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} entries")
        return bytes(self.data[self.offsets[i] : self.offsets[i + 1]]).decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None  # mutable-looking like a list: not hashable


def _write_column(folder: Path, name: str, texts: list[str]) -> None:
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    (folder / f"{name}.bin").write_bytes(b"".join(encoded))
    np.save(folder / f"{name}.offsets.npy", offsets)


def _read_column(folder: Path, name: str) -> TextColumn:
    fix = f"delete {folder} and rerun; the index is rebuilt from the data."
    offsets = load_npy(folder / f"{name}.offsets.npy", mmap=True, fix=fix)
    size = (folder / f"{name}.bin").stat().st_size
    data = np.memmap(folder / f"{name}.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    if int(offsets[-1]) != size:
        raise ValueError(f"{folder / name}.bin has {size} bytes, its offsets say {int(offsets[-1])}: {fix}")
    return TextColumn(data, offsets)


def shard_stats(root: Path) -> list[list]:
    """(name, size, mtime_ns) of every .tar shard: what an index of shards must still match."""
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(root.glob("*.tar"))]


class _Listing:
    """The pairs found while building: captions, where each image is, and what was skipped."""

    def __init__(self, on_bad: str, verify: bool):
        self.on_bad, self.verify = on_bad, verify
        self.captions: list[str] = []
        self.paths: list[str] = []
        self.members: list[tuple[int, int, int]] = []
        self.skipped: Counter[str] = Counter()

    def keep(self, caption: str | None, where: str, read) -> bool:
        if caption is None or not caption.strip():
            return self._bad("missing or empty caption", where)
        if self.verify:
            try:
                with Image.open(read()) as im:
                    im.verify()
            except Exception:  # PIL raises many types for broken files
                return self._bad("unreadable image", where)
        self.captions.append(caption.strip())
        return True

    def _bad(self, reason: str, where: str) -> bool:
        if self.on_bad == "stop":
            raise ValueError(
                f"{where}: {reason}. Fix or remove it, or pass --on_bad skip to skip such pairs."
            )
        self.skipped[reason] += 1
        return False


def _list_folder(root: Path, listing: _Listing) -> None:
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        if INDEX_DIR in path.relative_to(root).parts:
            continue
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8") if txt.is_file() else None
        if listing.keep(caption, str(path), lambda p=path: p):
            listing.paths.append(str(path.relative_to(root)))


def _list_shard(number: int, shard: Path, listing: _Listing) -> None:
    with tarfile.open(shard) as tar:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in tar.getmembers():
            folder, _, base = member.name.rpartition("/")
            if member.isfile() and "." in base:  # webdataset: key = path up to the first dot of the file name
                stem, ext = base.split(".", 1)
                groups.setdefault(f"{folder}/{stem}", {})["." + ext.lower()] = member
        for parts in groups.values():
            image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
            if image is None:
                continue
            caption = tar.extractfile(parts[".txt"]).read().decode("utf-8") if ".txt" in parts else None
            where = f"{shard}:{image.name}"
            if listing.keep(caption, where, lambda m=image: tar.extractfile(m)):
                listing.members.append((number, image.offset_data, image.size))


def build_index(root: str | Path, *, on_bad: str = "skip", verify_images: bool = True) -> Path:
    """List the pairs under ``root`` once and write the index beside them; returns its folder. With
    ``verify_images`` every image is opened once here (never again at start-up); without, an unreadable
    image fails when it is first read, naming the file."""
    root = Path(root)
    final = root / INDEX_DIR
    shards = sorted(root.glob("*.tar"))
    listing = _Listing(on_bad, verify_images)
    if shards:
        for number, shard in enumerate(shards):
            _list_shard(number, shard, listing)
    else:
        _list_folder(root, listing)
    try:
        tmp = staging_folder(final)
    except OSError as err:
        raise ValueError(
            f"Cannot write the dataset index beside the data in {final} ({err.strerror or err}): build it once "
            f"as a user who can write there (python -m t2istudy.diffusion.data_index {root}), or copy the data "
            "to a writable folder."
        ) from err
    _write_column(tmp, "captions", listing.captions)
    if shards:
        np.save(tmp / "members.npy", np.asarray(listing.members, dtype=np.int64).reshape(-1, 3))
    else:
        _write_column(tmp, "paths", listing.paths)
    meta = {
        "version": INDEX_VERSION,
        "kind": "shards" if shards else "folder",
        "n": len(listing.captions),
        "skipped": dict(listing.skipped),
        "verified": verify_images,
        "shards": shard_stats(root),
    }
    (tmp / "index.json").write_text(json.dumps(meta, indent=1))  # last: its presence marks a complete index
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


class DatasetIndex:
    """An opened index: ``captions`` (a TextColumn), ``locate(i)`` -> (shard path or None, path or byte range)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.folder = self.root / INDEX_DIR
        self.meta = json.loads((self.folder / "index.json").read_text())
        self.captions = _read_column(self.folder, "captions")
        self.shards = [self.root / name for name, _, _ in self.meta["shards"]]
        if self.meta["kind"] == "shards":
            fix = f"delete {self.folder} and rerun; the index is rebuilt from the data."
            self.members = load_npy(self.folder / "members.npy", mmap=True, fix=fix)
            self.paths = None
        else:
            self.members, self.paths = None, _read_column(self.folder, "paths")

    def __len__(self) -> int:
        return len(self.captions)

    def __getstate__(self) -> dict:  # a worker process maps the files again instead of copying the arrays
        return {"root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.meta["skipped"])

    def locate(self, i: int) -> tuple[Path, int, int] | Path:
        """Where image ``i`` is: (shard, byte offset, size) for shards, its file path for a folder."""
        if self.members is not None:
            shard, offset, size = (int(v) for v in self.members[i])
            return self.shards[shard], offset, size
        return self.root / self.paths[i]

    @classmethod
    def open_or_build(
        cls, root: str | Path, *, on_bad: str = "skip", verify_images: bool = True
    ) -> DatasetIndex:
        """The index beside ``root``, built first when it is missing, of an older version, made for other
        shards, unverified where verification is asked for, or made under ``skip`` where ``stop`` is asked."""
        root = Path(root)
        meta_file = root / INDEX_DIR / "index.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            current = (
                meta.get("version") == INDEX_VERSION
                and meta.get("shards") == shard_stats(root)
                and (meta.get("verified") or not verify_images)
                and not (
                    meta.get("skipped") and on_bad == "stop"
                )  # listed again: stops at the first bad pair
            )
            if current:
                return cls(root)
        build_index(root, on_bad=on_bad, verify_images=verify_images)
        return cls(root)


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        made = build_index(folder)
        print(f"{made}: {DatasetIndex(folder).meta['n']} pairs")
