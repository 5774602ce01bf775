"""Finished probe groups on disk, so an interrupted sweep resumes instead of starting over.

A sweep is a sequence of groups, one per (encoder, random init, prompt template): one encoder pass, then
the probes of that pass's representations. A recipe sweep of a 0.5B model is seven groups and ~3 hours on
one thread; a session that ends midway would otherwise lose them all. Each finished group's table and
timing are written here under a key of everything its numbers depend on (the settings and the source of
the code that computes them), so a rerun with the same arguments reads them back, and a rerun with other
settings or edited code computes afresh beside them: nothing is overwritten, and nothing stale is served.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from t2istudy.staging import temporary_name

# The modules whose code decides a group's numbers: an edit to any of them makes earlier groups stale.
_CODE = (
    "probe/layerwise.py",
    "probe/targets.py",
    "text/aggregation.py",
    "text/encoders.py",
    "text/templates.py",
)
_PACKAGE = Path(__file__).resolve().parents[1]


def code_digest() -> str:
    """Digest of the source files that compute a probe group's numbers, as they were when imported (the
    code that runs, even if the files are edited while a long sweep is under way)."""
    return _CODE_DIGEST


def _digest_files() -> str:
    h = hashlib.sha256()
    for rel in _CODE:
        h.update(rel.encode() + b"\0" + (_PACKAGE / rel).read_bytes())
    return h.hexdigest()[:16]


_CODE_DIGEST = _digest_files()


class GroupStore:
    """One folder of finished groups: ``<encoder>[__random-init]__<template>__<key>.{csv,json}``.

    Plain CSV (it round-trips the probe table's str, int and bool columns exactly), so a folder of finished
    groups can be copied or committed and read on another machine. The JSON record is written last (and
    atomically), so a group killed while saving reads as not done.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(settings: dict[str, Any]) -> str:
        """A short digest of a group's settings (JSON-serializable) and of the probe's code."""
        text = json.dumps({**settings, "code": code_digest()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def paths(self, settings: dict[str, Any]) -> tuple[Path, Path]:
        """The group's (table, record) files. Names are built whole, never with ``with_suffix``: encoder
        names carry dots (``qwen2.5-0.5b``), which a suffix swap would cut."""
        random = "__random-init" if settings.get("random_init") else ""
        template = settings.get("template") or "plain"
        stem = f"{settings['encoder']}{random}__{template}__{self.key(settings)}"
        return self.root / f"{stem}.csv", self.root / f"{stem}.json"

    def load(self, settings: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """The group's table and record (timings, num_states) when it finished before, else None."""
        table_path, record_path = self.paths(settings)
        if not record_path.exists():
            return None
        if not table_path.exists():
            raise FileNotFoundError(
                f"{record_path} says this probe group finished, but its table {table_path} is missing; "
                f"delete {record_path} to compute the group again."
            )
        return pd.read_csv(table_path), json.loads(record_path.read_text())

    def save(self, settings: dict[str, Any], table: pd.DataFrame, record: dict[str, Any]) -> Path:
        """Write the group's table, then its record (the 'done' mark); returns the record's path."""
        self.root.mkdir(parents=True, exist_ok=True)
        table_path, record_path = self.paths(settings)
        record = {**record, "settings": settings, "code": code_digest(), "written": time.ctime()}
        _write_then_rename(table_path, lambda tmp: table.to_csv(tmp, index=False))
        _write_then_rename(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=1, default=str)))
        return record_path


def _write_then_rename(path: Path, write: Callable[[Path], object]) -> None:
    """Write beside ``path`` under a staging name, then rename: a killed write never looks finished."""
    tmp = path.with_name(temporary_name(path.name))
    write(tmp)
    os.replace(tmp, path)
