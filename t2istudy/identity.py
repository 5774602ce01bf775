"""Content identity: what a file, a folder or a piece of code *is*, by its bytes, not by its name or path.

Every cache, store and resume of the package asks the same question: is this the input I used before? A path
or a name cannot answer it (a folder's weights replaced in place keep its path; an edited module keeps its
name), so each asks here, and gets a digest of the bytes.

Files are hashed in full (sha256) the first time they are seen. The digest is remembered in a small sidecar,
``.t2istudy-digests.json`` beside them, under the file's size and modification time (ns): a 15 GB encoder
folder is hashed once, not at every resume. Any rewrite of a file (a copy, a save, an in-place edit, a
truncation) changes its size or its mtime, so a remembered digest is never served for other bytes; what it
cannot see is a bit flipped by the disk itself under an unchanged mtime, the price of not re-reading
gigabytes at every start. Where the sidecar cannot be written (a read-only folder), the digest is computed
and kept for this process only.

Code is identified by the modules a result depends on, found from the import graph (``module_digest``), and
by their syntax trees without docstrings: a comment or a reformat is not a change, an edited hold-out is.

Below every subpackage and importing none of them, like ``staging``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

from t2istudy.staging import temporary_name

SIDECAR = ".t2istudy-digests.json"
SHORT = 16  # hex digits of a digest as recorded (64 bits)
PACKAGE_ROOT = Path(__file__).resolve().parent
_MEMORY: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, for unwritable folders


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in full now (no memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_sidecar(folder: Path) -> dict:
    try:
        found = json.loads((folder / SIDECAR).read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):  # none yet, or torn: hashing again is the cost, nothing else
        return {}


def _write_sidecar(folder: Path, entries: dict) -> None:
    tmp = folder / temporary_name(SIDECAR)
    try:
        tmp.write_text(json.dumps(entries, indent=0, sort_keys=True))
        os.replace(tmp, folder / SIDECAR)
    except OSError:  # read-only or full: the digests stay in this process's memory
        tmp.unlink(missing_ok=True)


def _digests(files: list[Path], folder: Path, remember: bool = True) -> dict[str, str]:
    """sha256 of each file (relative name -> digest), reusing what the sidecar in ``folder`` remembers for the
    same size and mtime; the sidecar is rewritten only when something was hashed (never without
    ``remember``: a folder that must stay as shipped, such as the package's own data)."""
    remembered = _read_sidecar(folder) if remember else {}
    found, changed = {}, False
    for path in files:
        rel = path.relative_to(folder).as_posix()
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = remembered.get(rel)
        memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            found[rel] = entry["sha256"]
        elif memo_key in _MEMORY:
            found[rel] = _MEMORY[memo_key]
            remembered[rel], changed = {"stamp": stamp, "sha256": found[rel]}, True
        else:
            found[rel] = _MEMORY[memo_key] = file_sha256(path)
            remembered[rel], changed = {"stamp": stamp, "sha256": found[rel]}, True
    if changed and remember:
        _write_sidecar(folder, {k: v for k, v in remembered.items() if (folder / k).is_file()})
    return found


def content_files(folder: str | Path) -> list[Path]:
    """The files that make a folder's content: every regular file below it, in name order, except hidden
    ones (the sidecar, a Hub download's ``.cache/``) and staging leftovers (``*.tmp-*``)."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(_left_out(part) for part in p.relative_to(folder).parts)
    )


def _left_out(name: str) -> bool:
    """Hidden names and staging leftovers (``<name>.tmp-<host>-<pid>-<random>``, an old ``<name>.tmp``)."""
    return name.startswith(".") or ".tmp-" in name or name.endswith(".tmp")


def content_digest(path: str | Path, files: list[str] | None = None, *, remember: bool = True) -> str:
    """A short digest of a file's bytes, or of a folder's files (their relative names and bytes); ``files``
    restricts a folder's digest to those relative names (an entry's data without its done-mark);
    ``remember=False`` writes no sidecar.

    Raises FileNotFoundError naming the path when it does not exist."""
    path = Path(path)
    if path.is_file():
        return _digests([path], path.parent, remember)[path.name][:SHORT]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist: there is no content to identify.")
    chosen = content_files(path) if files is None else [path / name for name in files]
    h = hashlib.sha256()
    for rel, digest in sorted(_digests(chosen, path, remember).items()):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()[:SHORT]


# ---- code: the modules a result depends on --------------------------------------------------------------


def module_file(name: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The source file of a module of this package (``t2istudy.probe.layerwise``), or None when the name is
    not a module (a function or a class imported from one)."""
    parts = name.split(".")[1:]
    if not parts:
        candidates = [root / "__init__.py"]
    else:
        base = root.joinpath(*parts)
        candidates = [base.with_suffix(".py"), base / "__init__.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, module: str, is_package: bool, package: str) -> set[str]:
    """The package's modules an AST imports, anywhere in it (inside functions too)."""
    found: set[str] = set()
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the current package upwards
                base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m == package or m.startswith(package + ".")}


def module_closure(entry: str, root: Path = PACKAGE_ROOT) -> list[str]:
    """Every module of this package that ``entry`` imports, directly or not (with the parent packages each
    import runs), found by reading the sources' import statements; ``entry`` included, sorted."""
    package = entry.split(".")[0]
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            continue
        seen.add(name)
        parents = [".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)]
        tree = ast.parse(path.read_text(), filename=str(path))
        todo += parents + sorted(_imported(tree, name, path.name == "__init__.py", package))
    return sorted(seen)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def module_digest(entry: str, root: Path = PACKAGE_ROOT) -> str:
    """A short digest of the code of every module ``entry`` depends on (``module_closure``): their syntax
    trees without docstrings, so a comment, a docstring or a reformat leaves it unchanged."""
    h = hashlib.sha256()
    for name in module_closure(entry, root):
        path = module_file(name, root)
        tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
        h.update(f"{name}\0{ast.dump(tree)}\n".encode())
    return h.hexdigest()[:SHORT]


# ---- what a store does with content that is not what its done-mark says ----------------------------------


def move_aside(path: str | Path, why: str) -> Path:
    """Rename ``path`` to ``<name>.moved-<time>`` beside it (nothing is deleted: it may be someone's work) and
    warn, naming both and why; returns the new path. Stores skip ``.moved-`` names when they look up."""
    path = Path(path)
    target = path.with_name(f"{path.name}.moved-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    warnings.warn(f"{path}: {why}; moved aside to {target.name} and built again.", stacklevel=2)
    return target


def moved_aside(path: str | Path) -> bool:
    """Whether a folder or file is one that ``move_aside`` renamed (never served by a lookup)."""
    return ".moved-" in Path(path).name
