"""The import rule between the layers (pyproject.toml [tool.importlinter]) holds, and breaking it is caught.

`make lint` runs the same contracts; this test shows they can fail: a copy of the package with one
forbidden import (the world importing the study) must break the layers contract and name that import.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repository's contracts on the `t2istudy` package found under ``root``."""
    return subprocess.run(
        [str(LINT), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_package_keeps_every_contract():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_forbidden_import_breaks_the_layers_contract(tmp_path):
    shutil.copytree(REPO / "t2istudy", tmp_path / "t2istudy", ignore=shutil.ignore_patterns("__pycache__"))
    shapes = tmp_path / "t2istudy" / "world" / "shapes.py"
    shapes.write_text(
        shapes.read_text() + "\nfrom t2istudy.study import paths  # the world must not know the study\n"
    )
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "Layers: study > probe > diffusion | scoring > text > world > helpers BROKEN" in result.stdout
    assert "t2istudy.world.shapes -> t2istudy.study.paths" in result.stdout
