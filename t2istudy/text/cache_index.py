"""What the embedding cache holds on disk, and removing the entries nobody needs.

A wide recipe's entry (a concatenation of 19-31 states) is 15-18 GB, and the cache grows by one entry per
(encoder, strategy, caption set) forever. This module lists the entries of a cache root
(``<root>/<encoder>/<entry>/``, see :mod:`t2istudy.text.cache`) with their size and last use, and deletes the
ones it is told nobody needs. Which runs need an entry is the study's knowledge (its grids and run
folders): ``t2istudy.study.cache_needs`` works that out and passes the needed paths in.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class CacheEntry:
    """One folder under ``<root>/<encoder>/``; ``complete`` once its meta.json is written (it is written last)."""

    path: Path
    encoder: str
    strategy: str
    size_bytes: int
    last_used: datetime  # the newest access or modification time of its files (see `last_use`)
    complete: bool

    @property
    def size_gb(self) -> float:
        return self.size_bytes / 1e9


def last_use(files: list[Path]) -> datetime:
    """The newest atime or mtime among ``files`` (an entry's files and its folder): training memory-maps features.npy, which sets its atime
    (under Linux's default relatime, at most once a day: a day's precision)."""
    stamps = [max(s.st_atime, s.st_mtime) for s in (f.stat() for f in files)]
    return datetime.fromtimestamp(max(stamps), tz=UTC)


def list_entries(root: str | Path) -> list[CacheEntry]:
    """Every entry folder under the cache root, complete or not (a build in progress, or one that crashed),
    sorted by encoder then path. A root that does not exist holds no entries."""
    entries = []
    root = Path(root)
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []:
        files = [f for f in folder.rglob("*") if f.is_file()]
        meta_file = folder / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        entries.append(
            CacheEntry(
                path=folder,
                encoder=str(meta.get("encoder", folder.parent.name)),
                strategy=str(meta.get("strategy", "?")),
                size_bytes=sum(f.stat().st_size for f in files),
                last_used=last_use([folder, *files]),
                complete=meta_file.is_file() and ".tmp-" not in folder.name,
            )
        )
    return entries


def prunable(entries: list[CacheEntry], needed: set[Path]) -> list[CacheEntry]:
    """The complete entries outside ``needed`` (resolved paths). Incomplete ones are never offered: one may
    be a build in progress in another process."""
    return [e for e in entries if e.complete and e.path.resolve() not in needed]


def delete_entries(entries: list[CacheEntry]) -> int:
    """Remove these entry folders; returns the bytes freed."""
    freed = 0
    for entry in entries:
        shutil.rmtree(entry.path)
        freed += entry.size_bytes
    return freed
