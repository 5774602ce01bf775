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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from t2istudy.identity import content_digest, module_digest
from t2istudy.staging import temporary_name

# The probe's entry module: every module of the package it imports (found from the import graph by
# `identity.module_closure`: the shapes world, the benchmark, the recipes, the encoders...) decides a group's
# numbers, so an edit to any of them makes the earlier groups stale.
PROBE_ENTRY = "t2istudy.probe.layerwise"


def code_digest() -> str:
    """Digest of the code that computes a probe group's numbers, as it was when imported (the code that
    runs, even if the files are edited while a long sweep is under way)."""
    return _CODE_DIGEST


_CODE_DIGEST = module_digest(PROBE_ENTRY)


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
        """The group's table and record (timings, num_states) when it finished before, else None.

        The record (the done-mark) holds the table's row count and checksum: a table that is missing, cut
        short or altered since does not match, and reads as not done, with a warning naming the file (the
        group is computed again and overwrites it)."""
        table_path, record_path = self.paths(settings)
        if not record_path.exists():
            return None
        try:
            record = json.loads(record_path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            return _stale(f"its done-mark {record_path} is unreadable ({err})")
        if not table_path.exists():
            return _stale(f"{record_path} says this group finished, but its table {table_path} is missing")
        checksum = content_digest(table_path, remember=False)  # a table is small: read in full
        if checksum != record.get("checksum"):
            return _stale(
                f"{table_path} does not match its done-mark (checksum {checksum}, recorded "
                f"{record.get('checksum')}): cut short or altered since it was written"
            )
        table = pd.read_csv(table_path)
        if len(table) != record.get("rows"):
            return _stale(f"{table_path} has {len(table)} rows, its done-mark says {record.get('rows')}")
        return table, record

    def save(self, settings: dict[str, Any], table: pd.DataFrame, record: dict[str, Any]) -> Path:
        """Write the group's table, then its record (the 'done' mark, with the table's row count and
        checksum); returns the record's path."""
        self.root.mkdir(parents=True, exist_ok=True)
        table_path, record_path = self.paths(settings)
        _write_then_rename(table_path, lambda tmp: table.to_csv(tmp, index=False))
        record = {
            **record,
            "settings": settings,
            "code": code_digest(),
            "rows": len(table),
            "checksum": content_digest(table_path, remember=False),
            "written": time.ctime(),
        }
        _write_then_rename(record_path, lambda tmp: tmp.write_text(json.dumps(record, indent=1, default=str)))
        return record_path


def _stale(why: str) -> None:
    """A stored group that cannot be trusted reads as not done: say which file, and that it is recomputed."""
    warnings.warn(f"Probe group store: {why}; computing the group again.", stacklevel=3)
    return None


def _write_then_rename(path: Path, write: Callable[[Path], object]) -> None:
    """Write beside ``path`` under a staging name, then rename: a killed write never looks finished."""
    tmp = path.with_name(temporary_name(path.name))
    write(tmp)
    os.replace(tmp, path)
