"""Every training flag in one dataclass, and how a run's options.json reads back into it.

Torch-free apart from the preset and strategy parsers, so that sampling, `grid prepare` and the run
notebook can name and resolve options without importing the training loop (accelerate, data, cache).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import numbers
import textwrap
import tokenize
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

from diffusers.optimization import SchedulerType

from t2istudy.diffusion.model import get_preset
from t2istudy.diffusion.train_folder import read_options
from t2istudy.text.aggregation import parse_strategy
from t2istudy.text.upsample import parse_upsampling


@dataclass
class TrainOptions:
    """Every training flag with its default (diffusers train_text_to_image names where they exist).

    `None` means "the preset's default" (see `Preset.train_defaults`), resolved by `resolve_options`.
    Values are checked when the options are made (`check_options`), before any model or encoder loads, so
    a grid's dry run and the command line refuse a bad value at once, naming the flag.
    """

    # == what is compared ==
    encoder: str = "gemma3-270m"  # a built-in name (t2istudy.text.encoders), a local HF folder or a .gguf
    strategy: str = "norm_mean"  # how the encoder's layers become tokens (t2istudy.text.aggregation grammar)
    preset: str = "cpu-small"  # model size, resolution and training defaults (t2istudy.diffusion.model)
    input_scale: str = "rms"  # rms: one dataset-wide factor bringing token RMS to 1 | none
    max_length: int | None = None  # encoder token limit (None: the encoder's default)
    # == data and text ==
    data: str = "shapes"  # "shapes" (the procedural world) or a folder of images + captions / .tar shards
    pool_size: int = 8192  # shapes: scenes in the fixed training pool (every caption gets cached)
    max_objects: int | None = None  # shapes: cap objects per scene (None: the world's maximum)
    # shapes: share of captions naming the shapes without their colours ("a circle and a square"), the
    # wording of GenEval's colourless tasks, which no default caption uses (0: the default pool, unchanged)
    colourless_captions: float = 0.0
    # shapes, binding levers (issue 36): every caption names each object with its colour (no skill wordings;
    # the same scenes), and exactly this share of two-object scenes in the pool (None: the world's own draw)
    named_captions: bool | None = None  # every caption names each object with its colour (None: off)
    two_object_share: float | None = (
        None  # exact share of two-object scenes in the pool (None: the world's own)
    )
    data_seed: int = 0  # seed of the training data (the shapes pool)
    on_bad: str = "skip"  # folder data: skip unreadable images / missing captions (counted) or stop
    # folder data: open every image once when the index is built, so bad ones are skipped there; false: list
    # only (53 against 82 us a pair, docs/training.md: ~20 min less at 46M), a bad image fails at its read
    verify_images: bool = True
    text: str = "cache"  # cache: encode every caption once to disk | online: encode in the loop
    text_dtype: str = (
        "fp32"  # online: the encoder's dtype, fp32 | bf16 | fp16 (fp16 clamps the attention sink)
    )
    caption_upsampling: str | None = None  # rewrite the caption pool once: "local:smollm2-135m:caption"
    cache_dir: str = "cache/embeddings"  # where caption embeddings are cached, per encoder and strategy
    encode_batch_size: int = 64  # captions per encoder pass when the cache is built
    # local diffusers AutoencoderKL folder (sd2-256); None: the preset's own
    # autoencoder, trained once per machine (cpu-latent; t2istudy.diffusion.autoencoder)
    vae_path: str | None = None
    latents: str | None = None  # VAE presets: online (encode every step) | cache (encode the pool once, mmap)
    latent_cache_dir: str = "cache/latents"  # where --latents cache keeps the encoded pool
    autoencoder_dir: str = "cache/autoencoders"  # where a preset's own autoencoder is trained once
    dataloader_num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    # == optimisation ==
    train_batch_size: int | None = None  # per process
    gradient_accumulation_steps: int = 1  # batches per optimizer step
    max_train_steps: int | None = None  # optimizer steps (None: the preset's)
    learning_rate: float | None = None  # peak learning rate (None: the preset's)
    lr_scheduler: str | None = (
        None  # any diffusers get_scheduler name (None: the preset's, else constant_with_warmup)
    )
    lr_warmup_steps: int | None = None  # linear warm-up steps (None: the preset's)
    adam_beta1: float = 0.9  # AdamW first-moment decay
    adam_beta2: float = 0.999  # AdamW second-moment decay
    adam_weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_epsilon: float = 1e-8  # AdamW denominator epsilon
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    # shared: one learning rate for every parameter | width: the projection's is scaled by one encoder state's
    # width over the projection's input width (muP's input-layer rule; 1 for a single-state arm, so the same
    # run bit for bit; a concatenation of k states learns at lr/k)
    projection_lr: str = "shared"
    prediction_type: str | None = (
        None  # epsilon | v_prediction | flow (flow matching, diffusion/objectives.py)
    )
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting; None or 0 disables
    # training noise levels: uniform (today's) | logit_normal: sigmoid(logit_mean + logit_std * z) (SD3)
    timestep_sampling: str | None = None  # uniform | logit_normal (None: uniform)
    logit_mean: float = 0.0  # logit-normal location; > 0 leans toward high noise, where the layout is decided
    logit_std: float = 1.0  # logit-normal scale
    caption_dropout: float = 0.1  # fraction of captions replaced by the empty prompt (for CFG)
    use_ema: bool | None = None  # keep an exponential moving average of the weights (None: the preset's)
    ema_decay: float = 0.9999  # upper bound; EMA warm-up (power 2/3) makes early decay smaller
    mixed_precision: str | None = None  # no | fp16 | bf16
    seed: int = 0  # training seed: initialisation, batches, noise, caption dropout
    # == run directory, checkpoints, logging ==
    output_dir: str | None = None  # the run folder (None: a new folder under --runs_root)
    runs_root: str = "runs/train"  # where a run without --output_dir gets its folder
    checkpointing_steps: int | None = None  # save a resumable checkpoint every N steps (None: the preset's)
    checkpoints_total_limit: int | None = 2  # None or 0 keeps every checkpoint
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    stop_after_steps: int | None = None  # save a checkpoint and stop at this step (as if killed)
    logging_steps: int = 10  # one train_log.jsonl line every N steps
    report_to: str = "tensorboard"  # tensorboard | none
    num_threads: int | None = None  # torch CPU threads per process
    progress: bool = True  # show progress bars

    def __post_init__(self) -> None:
        check_options(self)


@functools.cache
def option_help() -> dict[str, str]:
    """Each option's comment in TrainOptions' source, its ``--help`` text: the comment on the field's line(s),
    else the comment lines right above it (a ``# == section ==`` heading belongs to no field). Read once,
    from the source, so that the comment a reader sees beside the default is the help a user sees."""
    source = textwrap.dedent(inspect.getsource(TrainOptions))
    lines = source.splitlines()
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    found = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        own = bool(text)
        n = node.lineno - 1
        while (
            not own
            and n in comments
            and lines[n - 1].lstrip().startswith("#")
            and not comments[n].startswith("==")
        ):
            text.insert(0, comments[n])
            n -= 1
        found[node.target.id] = " ".join(text)
    return found


CHOICES = {
    "input_scale": ("rms", "none"),
    "projection_lr": ("shared", "width"),
    "text": ("cache", "online"),
    "text_dtype": ("fp32", "bf16", "fp16"),
    "on_bad": ("skip", "stop"),
    "prediction_type": ("epsilon", "v_prediction", "flow"),
    "timestep_sampling": ("uniform", "logit_normal"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "report_to": ("tensorboard", "none"),
    "latents": ("online", "cache"),
    "lr_scheduler": tuple(s.value for s in SchedulerType),
}
# name -> (test, the allowed range in words); None (the preset's default, or off) always passes.
RANGES = {
    "max_length": (lambda v: v >= 1, ">= 1"),
    "pool_size": (lambda v: v >= 1, ">= 1"),
    "max_objects": (lambda v: v >= 1, ">= 1"),
    "colourless_captions": (lambda v: 0.0 <= v <= 1.0, "0 .. 1"),
    "two_object_share": (lambda v: 0.0 <= v <= 1.0, "0 .. 1"),
    "data_seed": (lambda v: 0 <= v < 2**32, "0 .. 2**32 - 1"),
    "encode_batch_size": (lambda v: v >= 1, ">= 1"),
    "dataloader_num_workers": (lambda v: v >= 0, ">= 0"),
    "train_batch_size": (lambda v: v >= 1, ">= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "max_train_steps": (lambda v: v >= 1, ">= 1"),
    "learning_rate": (lambda v: 0 < v < float("inf"), "> 0"),
    "lr_warmup_steps": (lambda v: v >= 0, ">= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "[0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "[0, 1)"),
    "adam_weight_decay": (lambda v: 0 <= v < float("inf"), ">= 0"),
    "adam_epsilon": (lambda v: 0 < v < float("inf"), "> 0"),
    "max_grad_norm": (lambda v: -float("inf") < v < float("inf"), "a finite number (<= 0 disables clipping)"),
    "snr_gamma": (lambda v: 0 <= v < float("inf"), ">= 0 (0 or unset disables Min-SNR weighting)"),
    "caption_dropout": (lambda v: 0 <= v < 1, "[0, 1)"),
    "logit_mean": (lambda v: -float("inf") < v < float("inf"), "a finite number"),
    "logit_std": (lambda v: 0 < v < float("inf"), "> 0"),
    "ema_decay": (lambda v: 0 <= v < 1, "[0, 1)"),
    "seed": (lambda v: 0 <= v < 2**32, "0 .. 2**32 - 1"),
    "checkpointing_steps": (lambda v: v >= 1, ">= 1"),
    "checkpoints_total_limit": (lambda v: v >= 0, ">= 0 (0 keeps every checkpoint)"),
    "stop_after_steps": (lambda v: v >= 1, ">= 1"),
    "logging_steps": (lambda v: v >= 1, ">= 1"),
    "num_threads": (lambda v: v >= 1, ">= 1"),
}


def check_options(opts: TrainOptions) -> None:
    """Refuse a value of the wrong type, out of its range or outside its choices, naming the flag, the value
    and what is allowed. Cheap and torch-free in spirit: runs whenever TrainOptions is made."""
    for f in dataclasses.fields(TrainOptions):
        value = getattr(opts, f.name)
        if value is None:
            continue
        kinds = _field_types()[f.name]
        if int in kinds and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ValueError(f"--{f.name} {value!r} is not valid: expected a whole number.")
        if float in kinds and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ValueError(f"--{f.name} {value!r} is not valid: expected a number.")
        if f.name in RANGES and not RANGES[f.name][0](value):
            raise ValueError(f"--{f.name} {value!r} is out of range: allowed {RANGES[f.name][1]}.")
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise ValueError(
                f"--{f.name} {value!r} is not valid: choose one of {', '.join(CHOICES[f.name])}."
            )


@functools.cache
def _field_types() -> dict[str, list[type]]:
    """Each field's type without None: `int | None` -> [int]."""
    hints = typing.get_type_hints(TrainOptions)
    return {
        name: [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
        for name, hint in hints.items()
    }


FALLBACKS = {
    "use_ema": False,
    "named_captions": False,
    "timestep_sampling": "uniform",
    "mixed_precision": "no",
    "checkpointing_steps": 500,
    "latents": "online",
    "lr_scheduler": "constant_with_warmup",
}


# The fields a preset's train_defaults may set: those whose default is None ("the preset's").
PRESET_SETTABLE = frozenset(f.name for f in dataclasses.fields(TrainOptions) if f.default is None)


def resolve_options(opts: TrainOptions) -> TrainOptions:
    """Fill `None` fields from the preset, validate choices, canonicalize the strategy."""
    preset = get_preset(opts.preset)
    values = asdict(opts)
    fixed = sorted(k for k in preset.train_defaults if k not in PRESET_SETTABLE)
    if fixed:  # a preset default that a fixed field default would silently override
        raise ValueError(
            f"Preset {preset.name} sets {fixed} in train_defaults, but TrainOptions gives them a fixed default, "
            "so the preset's value would be ignored: give each field a None default (and a FALLBACKS entry)."
        )
    for key, value in {**FALLBACKS, **preset.train_defaults}.items():
        if values.get(key) is None:
            values[key] = value
    values["prediction_type"] = values["prediction_type"] or preset.prediction_type
    if values["prediction_type"] == "flow" and values["snr_gamma"]:
        raise ValueError(
            f"Min-SNR weighting (snr_gamma={values['snr_gamma']}, preset {preset.name}) is defined here for the "
            "DDPM objectives, not flow matching: pass --snr_gamma 0 with --prediction_type flow."
        )
    values["strategy"] = str(parse_strategy(values["strategy"]))
    if values["latents"] == "cache" and not preset.vae:
        raise ValueError(
            f"--latents cache needs a preset with a VAE; {preset.name} trains on pixels. Drop the flag or pick "
            "cpu-latent / sd2-256."
        )
    if values["text_dtype"] != "fp32" and values["text"] != "online":
        raise ValueError(
            f"--text_dtype {values['text_dtype']} sets the encoder's dtype for --text online; the embedding cache "
            "is encoded once in float32. Add --text online, or drop --text_dtype."
        )
    spec = parse_upsampling(values["caption_upsampling"])  # validates; "none" -> None
    values["caption_upsampling"] = values["caption_upsampling"] if spec is not None else None
    return TrainOptions(**values)  # checks the preset's defaults as it checked the given values


def projection_lr_factor(opts: TrainOptions, in_width: int, state_width: int) -> float:
    """What the projection's learning rate is multiplied by: ``state_width / in_width`` under the width rule
    (muP scales an input layer's Adam step by the reference width over its fan-in; the reference is one of
    the encoder's states), exactly 1.0 with ``shared`` or when the projection reads one state."""
    if opts.projection_lr == "shared" or in_width == state_width:
        return 1.0
    return state_width / in_width


def load_options(run_dir: str | Path) -> tuple[TrainOptions, dict]:
    """The resolved options and derived values a run was trained with."""
    data = read_options(run_dir)
    derived = data.pop("derived", {})
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    return TrainOptions(**{k: v for k, v in data.items() if k in known}), derived
