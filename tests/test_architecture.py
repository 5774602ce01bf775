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
    report = " ".join(result.stdout.split())  # lint-imports wraps a long contract name over lines
    assert (
        "Layers: analysis | reports > study > probe > diffusion | scoring > text > world > helpers BROKEN"
        in report
    )
    assert "t2istudy.world.shapes -> t2istudy.study.paths" in result.stdout


def test_every_module_the_architecture_doc_names_exists():
    """docs/architecture.md names modules as `t2istudy.a.b[.attr]`, `a.b` (a subpackage and its module) and
    `a/b.py`; each must be a file of the package (an attribute: defined in its module), so the doc cannot
    keep naming a module that was split, moved or deleted."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    package = REPO / "t2istudy"
    missing = []
    for match in sorted(set(re.findall(r"\bt2istudy(?:\.\w+)+", text))):
        parts = match.split(".")[1:]
        for cut in range(len(parts), 0, -1):
            base = package.joinpath(*parts[:cut])
            if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                break
        else:
            cut = 0
        rest = parts[cut:]
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        defined = cut and (
            not rest
            or (
                len(rest) == 1
                and re.search(rf"^(def|class) {rest[0]}\b|^{rest[0]}\b", source.read_text(), re.M)
            )
        )
        if not defined:
            missing.append(match)
    layers = "world|text|diffusion|scoring|probe|study"
    for layer, module in sorted(set(re.findall(rf"\b({layers})[./](\w+)(?:\.py)?\b", text))):
        if not (package / layer / f"{module}.py").is_file():
            missing.append(f"{layer}.{module}")
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_modules_stay_readable_in_one_sitting():
    """Issue 39's sizes: no module of the package over 600 lines, and the study layer (running grids of
    notebook runs) within 3,500 lines; a module that outgrows them is split by concern, not squeezed."""
    sizes = {p: len(p.read_text().splitlines()) for p in (REPO / "t2istudy").rglob("*.py")}
    assert {str(p.relative_to(REPO)): n for p, n in sizes.items() if n > 600} == {}
    assert sum(n for p, n in sizes.items() if p.parent.name == "study") <= 3500


def flags_without_help(source: str) -> list[str]:
    """Each ``add_argument(...)`` call in ``source`` that has no ``help=``, as its first name."""
    import ast

    return [
        next((a.value for a in node.args if isinstance(a, ast.Constant)), "?")
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "add_argument"
        and not any(k.arg == "help" for k in node.keywords)
    ]


def test_every_command_line_flag_has_help():
    """diffusers' examples' rule: `--help` explains every flag of the CLI, the benchmarks and the scripts."""
    assert flags_without_help('p.add_argument("--a", help="x")\np.add_argument("--b", default=1)') == ["--b"]
    files = [
        *(REPO / "t2istudy").rglob("*.py"),
        *(REPO / "benchmarks").glob("*.py"),
        *(REPO / "scripts").glob("*.py"),
    ]
    missing = {str(f.relative_to(REPO)): m for f in files if (m := flags_without_help(f.read_text()))}
    assert not missing, f"flags without help= (add one): {missing}"
