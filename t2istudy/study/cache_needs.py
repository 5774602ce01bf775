"""Which embedding-cache entries the study still needs: `t2istudy cache list` and `t2istudy cache prune`.

An entry is needed while a run that is not done (pending, failed, interrupted, running) would read it: the
same lookups `grid prepare` makes (:func:`t2istudy.study.prepare.cache_requests`), over every grid file.
A done run never reads its entry again, so its entry may go; rebuilding it later costs one encoder pass.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from t2istudy.run_store import run_state
from t2istudy.study import grids
from t2istudy.study.paths import repo_file
from t2istudy.study.prepare import cache_requests
from t2istudy.text.cache import EmbeddingCache
from t2istudy.text.cache_index import CacheEntry, delete_entries, list_entries, prunable


def grid_files(given: list[str] | None) -> list[Path]:
    """The grid files to consult: those given, else every grids/*.yaml of the repository."""
    return [repo_file(g) for g in given] if given else sorted(repo_file("grids").glob("*.yaml"))


def pending_needs(files: list[Path], runs_dir: str | Path) -> tuple[dict[Path, list[str]], dict[str, str]]:
    """``(entry path -> the not-done runs that read it, as grid/run_id; run -> why it could not be read)``.

    Entry paths are resolved, so that they compare with the listing's whatever the working directory."""
    needs: dict[Path, list[str]] = defaultdict(list)
    bad: dict[str, str] = {}
    for file in files:
        grid = grids.load_grid(file)
        specs = [s for s in grids.expand_grid(grid) if run_state(grids.run_path(runs_dir, s)) != "done"]
        unreadable: dict[str, str] = {}
        for request in cache_requests(specs, bad=unreadable):
            for strategy in request.strategies:
                entry = EmbeddingCache.find(
                    request.cache_dir, request.encoder, strategy, request.captions, request.max_length
                )
                if entry is not None:
                    needs[entry.path.resolve()].extend(
                        f"{grid.name}/{r}" for r in request.wanted_by[strategy]
                    )
        bad.update({f"{grid.name}/{run_id}": why for run_id, why in unreadable.items()})
    return dict(needs), bad


def cache_table(root: str | Path, needs: dict[Path, list[str]]) -> list[str]:
    """One line per entry: size, last use, state, encoder, strategy, folder, and the runs that need it."""
    lines = []
    for e in list_entries(root):
        runs = sorted(set(needs.get(e.path.resolve(), [])))
        state = "complete" if e.complete else "incomplete"
        who = f"{len(runs)} pending: {', '.join(runs)}" if runs else "no pending run"
        lines.append(
            f"{e.size_gb:8.3f} GB  {e.last_used:%Y-%m-%d %H:%M}  {state:10s}  {e.encoder}  {e.strategy}  "
            f"{e.path.name}  ({who})"
        )
    return lines


def prune_cache(
    root: str | Path, files: list[Path], runs_dir: str | Path, *, delete: bool, log=print
) -> list[CacheEntry]:
    """The complete entries no pending run needs, deleted only with ``delete`` (a dry run otherwise).

    Refuses (ValueError) while a pending run cannot be read: it might need any entry."""
    needs, bad = pending_needs(files, runs_dir)
    if bad:
        raise ValueError(
            "Cannot tell which cache entries these runs need, so nothing is pruned:\n"
            + "\n".join(f"  {run}: {why}" for run, why in bad.items())
            + "\nFix them in their grid file, or name the grids to consult with --grid."
        )
    victims = prunable(list_entries(root), set(needs))
    total = sum(e.size_bytes for e in victims) / 1e9
    for e in victims:
        log(
            f"{'deleting' if delete else 'would delete'} {e.size_gb:.2f} GB  {e.encoder}  {e.strategy}  {e.path}"
        )
    if delete:
        delete_entries(victims)
        log(f"freed {total:.2f} GB in {len(victims)} entries")
    else:
        log(f"{len(victims)} entries, {total:.2f} GB, no pending run needs (dry run: --yes deletes them)")
    return victims
