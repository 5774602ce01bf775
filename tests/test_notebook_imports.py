"""Every committed notebook's package imports resolve (a module moved by a refactor breaks a notebook only
when someone executes it; this catches it in seconds, without running a kernel)."""

import ast
import importlib
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def package_imports(notebook: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every ``import t2istudy...`` / ``from t2istudy... import name`` in code cells."""
    found = []
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        tree = ast.parse(
            "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        )
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("t2istudy"):
                found += [(node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [(a.name, None) for a in node.names if a.name.startswith("t2istudy")]
    return found


def test_the_parser_finds_imports_in_a_hand_built_notebook(tmp_path):
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "source": [
                    "%matplotlib inline\n",
                    "from t2istudy.study import paths\n",
                    "import t2istudy.world.shapes as S\n",
                ],
            },
            {"cell_type": "markdown", "source": ["from t2istudy.nowhere import x"]},
        ]
    }
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(nb))
    assert package_imports(path) == [("t2istudy.study", "paths"), ("t2istudy.world.shapes", None)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_package_imports_resolve(notebook):
    imports = package_imports(notebook)
    assert imports, f"{notebook.name} imports nothing from t2istudy: a thin notebook calls into the package"
    for module, name in imports:
        mod = importlib.import_module(module)
        if name is not None and not hasattr(mod, name):
            importlib.import_module(f"{module}.{name}")  # a submodule; raises with the missing name
