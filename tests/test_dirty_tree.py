"""A committed grid does not run from a dirty tree: `grid run` and `grid resample` refuse it and name the fix;
`--allow-dirty` runs it, and every run's record says so (provenance `dirty_allowed`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from t2istudy.study import cli, provenance, runner

GRID = "name: g\nnotebook: notebooks/run.ipynb\naxes: {seed: [0]}\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def dirty_repo(tmp_path, monkeypatch) -> Path:
    """A checkout with a committed grid file and a committed module changed since (the code under study)."""
    repo = tmp_path / "repo"
    (repo / "grids").mkdir(parents=True)
    (repo / "grids" / "g.yaml").write_text(GRID)
    (repo / "code.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "grid")
    (repo / "code.py").write_text("x = 2\n")  # uncommitted: a run would record code no commit holds
    monkeypatch.setattr(provenance, "REPO", repo)
    monkeypatch.setenv(provenance.ALLOW_DIRTY, "")  # recorded, so that what --allow-dirty sets is undone
    monkeypatch.delenv(provenance.ALLOW_DIRTY)
    monkeypatch.setattr(provenance, "device", lambda: "cpu: test")
    return repo


def test_grid_run_refuses_a_committed_grid_from_a_dirty_tree(dirty_repo, tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(runner, "run_grid", lambda *a, **k: started.append(k) or [])
    grid = str(dirty_repo / "grids" / "g.yaml")
    for command in ("run", "resample"):
        assert cli.main(["grid", command, grid, "--runs-dir", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err
        assert "uncommitted changes (code.py)" in err and "git worktree add" in err and "--allow-dirty" in err
    assert started == [] and not (tmp_path / "runs").exists()  # nothing ran, nothing written


def test_allow_dirty_runs_and_the_record_says_so(dirty_repo, tmp_path, capsys, monkeypatch):
    started = []
    monkeypatch.setattr(runner, "run_grid", lambda *a, **k: started.append(a) or [])
    grid = str(dirty_repo / "grids" / "g.yaml")
    assert cli.main(["grid", "run", grid, "--runs-dir", str(tmp_path / "runs"), "--allow-dirty"]) == 0
    assert len(started) == 1 and "WARNING --allow-dirty" in capsys.readouterr().err
    record = provenance.provenance()  # what each run writes into params.json (and a re-sampling into metrics)
    assert record["git_dirty"] is True and record["dirty_allowed"] == provenance.DIRTY_ALLOWED


def test_a_clean_tree_or_an_uncommitted_grid_runs(dirty_repo, tmp_path):
    (dirty_repo / "grids" / "new.yaml").write_text(GRID)  # a grid being written is development
    assert provenance.dirty_refusal(dirty_repo / "grids" / "new.yaml") is None
    git(dirty_repo, "checkout", "code.py")
    assert provenance.dirty_refusal(dirty_repo / "grids" / "g.yaml") is None
    assert "dirty_allowed" not in provenance.provenance()


def test_rewritten_results_are_not_uncommitted_code(dirty_repo):
    """Runs and figures are what the code writes: a committed figure or run record rewritten (an analysis
    re-run over its own outputs) leaves the tree clean; a changed module, or a file under a folder merely
    named like one deeper down, does not."""
    for folder in ("runs/g/r", "figures/g", "docs/figures"):
        (dirty_repo / folder).mkdir(parents=True)
        (dirty_repo / folder / "table.csv").write_text("a\n1\n")
    git(dirty_repo, "checkout", "code.py")
    git(dirty_repo, "add", ".")
    git(dirty_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "results")
    for folder in ("runs/g/r", "figures/g"):
        (dirty_repo / folder / "table.csv").write_text("a\n2\n")
    assert provenance.git_state()[1] is False and provenance.changed_files() == []
    (dirty_repo / "docs/figures/table.csv").write_text("a\n2\n")
    assert provenance.changed_files() == ["docs/figures/table.csv"] and provenance.git_state()[1] is True
    (dirty_repo / "code.py").write_text("x = 3\n")
    assert provenance.changed_files() == ["code.py", "docs/figures/table.csv"]
