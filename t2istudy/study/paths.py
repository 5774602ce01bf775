"""Where the repository is: the one place that knows grids/ and notebooks/ sit beside the package."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # <repo>/t2istudy/study/paths.py


def repo_file(path: str | Path) -> Path:
    """``path`` as given when it exists from here, else the same path under the repository root (a
    command run from another folder still finds grids/ and notebooks/)."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else REPO / path


def at_repo_root() -> Path:
    """Notebooks opened in JupyterLab from notebooks/ run there; make relative paths (runs/, cache/,
    figures/) mean the same as under papermill, which runs from the repository root."""
    cwd = Path.cwd()
    if cwd.name == "notebooks" and (cwd.parent / "t2istudy").is_dir() and (cwd.parent / "grids").is_dir():
        os.chdir(cwd.parent)
    return Path.cwd()
