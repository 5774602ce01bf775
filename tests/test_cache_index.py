"""`t2istudy cache list / prune`: an entry a pending run reads is kept, the others are offered; a dry run
(the default) deletes nothing; a build in progress is never offered."""

from __future__ import annotations

import json
import shutil

from helpers import TINY_POOL, build_tiny_cache

from t2istudy.study.cli import main
from t2istudy.text.cache_index import list_entries


def tiny_grid(tmp_path, cache_root):
    """One pending cpu-tiny run that reads the tiny cache's norm_mean entry."""
    grid = tmp_path / "needs.yaml"
    grid.write_text(
        "name: needs\nnotebook: notebooks/run.ipynb\n"
        f"params: {{preset: cpu-tiny, encoder: fake-8, strategy: norm_mean,"
        f" train_options: {{cache_dir: '{cache_root}', pool_size: {TINY_POOL}}}}}\n"
        "axes:\n  seed: [0]\n"
    )
    return grid


def test_prune_keeps_what_a_pending_run_needs_and_a_dry_run_deletes_nothing(tmp_path, capsys):
    root = build_tiny_cache(tmp_path / "cache")
    (needed,) = [e.path for e in list_entries(root)]
    stale = needed.with_name(needed.name + "-old")  # the same entry for another caption set: no run reads it
    shutil.copytree(needed, stale)
    meta = json.loads((stale / "meta.json").read_text())
    (stale / "meta.json").write_text(json.dumps({**meta, "caption_hash": "0" * 16}))
    building = needed.with_name(needed.name + ".tmp-host-1-abc")  # another process's build: no meta.json yet
    building.mkdir()
    args = [
        "--root",
        str(root),
        "--grid",
        str(tiny_grid(tmp_path, root)),
        "--runs-dir",
        str(tmp_path / "runs"),
    ]

    assert main(["cache", "list", *args]) == 0
    listed = capsys.readouterr().out
    assert "(1 pending: needs/seed0)" in listed and listed.count("no pending run") == 2

    for dry in ([], ["--dry-run"]):
        assert main(["cache", "prune", *dry, *args]) == 0
        assert needed.is_dir() and stale.is_dir() and building.is_dir()  # nothing deleted
        out = capsys.readouterr().out
        assert "would delete" in out and str(stale) in out and str(needed) not in out.replace(str(stale), "")

    assert main(["cache", "prune", "--yes", *args]) == 0
    assert needed.is_dir() and not stale.exists() and building.is_dir()
