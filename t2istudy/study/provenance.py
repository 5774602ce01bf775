"""What a run ran with: the code version and the versions that can change its numbers, and the device.

Recorded in every run's params.json (`provenance`), so that rerunning the study later can tell whether
a different number comes from different code or a different environment; the analysis tables say when
the runs they compare differ in any of these (:func:`t2istudy.analysis.tables.provenance_note`,
:mod:`t2istudy.analysis.provenance`).

A committed grid runs from a clean tree: `grid run` and `grid resample` refuse a tree with uncommitted
changes (:func:`dirty_refusal`), because a run would then record code that no commit holds. ``--allow-dirty``
overrides that for development; the command line passes it to every process the grid starts through the
environment (``ALLOW_DIRTY``, so that cluster jobs see it too), and each such run's record carries
``dirty_allowed`` beside ``git_dirty``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from t2istudy.study.paths import REPO

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "papermill")
ALLOW_DIRTY = "T2ISTUDY_ALLOW_DIRTY"  # set by `grid run` / `grid resample --allow-dirty`
DIRTY_ALLOWED = "--allow-dirty: run from a tree with uncommitted changes; its code is in no commit"
FIELDS = ("git_commit", "git_dirty", "python", *PACKAGES, "device")


def _git(repo, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``git -C <repo> <args>``, its output as text, a minute at most."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60, check=check
    )


def git_state(repo=None) -> tuple[str | None, bool | None]:
    """(commit, dirty): HEAD and whether tracked code differs from it (:func:`changed_files`); (None, None)
    outside a checkout. ``repo``: the code's checkout (``REPO``) unless given."""
    try:
        return _git(repo or REPO, "rev-parse", "HEAD").stdout.strip(), bool(changed_files(repo))
    except (OSError, subprocess.SubprocessError):
        return None, None


# What runs and analyses write, not code: rewriting them leaves the code a record names unchanged, so an
# analysis re-run from a clean worktree over its own committed outputs is not "dirty"
RESULT_FOLDERS = ("runs", "figures")


def changed_files(repo=None) -> list[str]:
    """Tracked files that differ from HEAD (``git status --porcelain``) outside :data:`RESULT_FOLDERS`."""
    outside = [f":(exclude){folder}" for folder in RESULT_FOLDERS]
    status = _git(repo or REPO, "status", "--porcelain", "--untracked-files=no", "--", ".", *outside).stdout
    return [line[3:] for line in status.splitlines() if line.strip()]


def dirty_refusal(grid_file, repo=None) -> str | None:
    """Why a grid may not run here: its file is committed and the code's tree has uncommitted changes, so
    its runs would record code that no commit holds. None when it may (a clean tree, a grid file git does
    not track, or no checkout at all)."""
    repo = repo or REPO
    _, dirty = git_state(repo)
    if not dirty:
        return None
    grid_file = os.path.abspath(grid_file)
    tracked = _git(
        os.path.dirname(grid_file), "ls-files", "--error-unmatch", os.path.basename(grid_file), check=False
    )
    if tracked.returncode != 0:
        return None
    changed = changed_files(repo)
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return (
        f"{repo} has uncommitted changes ({shown}) and {os.path.basename(grid_file)} is a committed grid: its "
        "runs would record code that no commit holds. Commit or stash the changes, or run the grid from a clean "
        "worktree of a committed revision (docs/study.md: `git worktree add ../t2istudy-run HEAD`); "
        "--allow-dirty runs it anyway for development, and marks every run's record (dirty_allowed)."
    )


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device() -> str:
    """The accelerator the run's training and sampling use: the first CUDA device's name, else the CPU."""
    import torch  # here, not at the top: the read side (run_folder, run_results) stays torch-free

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    return f"cpu: {platform.machine()}, {os.cpu_count()} cores"


def provenance() -> dict[str, str | bool | None]:
    """Every field of FIELDS for this process: git commit and dirty flag, versions, device; and, for a run
    from a dirty tree under ``--allow-dirty``, ``dirty_allowed`` saying so."""
    commit, dirty = git_state()
    allowed = {"dirty_allowed": DIRTY_ALLOWED} if dirty and os.environ.get(ALLOW_DIRTY) else {}
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        **allowed,
        "python": platform.python_version(),
        **{name: package_version(name) for name in PACKAGES},
        "device": device(),
    }
