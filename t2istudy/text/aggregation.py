"""Layer-aggregation strategies: per-layer token states [L, B, T, D] -> one conditioning sequence.

A strategy is a plain string everywhere (notebook parameters, grid files, params.json) and is parsed
and validated only here, by ``parse_strategy``. ``str(Strategy)`` is the canonical, stable name and
round-trips through ``parse_strategy``.

Grammar: ``kind[option,option,...]`` or ``recipe:<name>`` (a released system's recipe, see
``t2istudy.text.recipes``; it parses to its expansion), with ``kind`` one of

    last          the final hidden state (decoders: the final norm is already applied)
    layer:p       hidden state p (a position, below)
    mean          plain mean over the selected states (dominated by the largest-norm layers)
    norm_mean     normalize each state, then average (the paper's best strategy)
    concat        normalized states concatenated along features -> width L * D
    learned       the normalized stack [B, T, L, D]; the model applies a softmax over layers

A *position* names one hidden state: an integer k (0 = embedding output, negative counts from the end)
or a depth fraction p/q in [0, 1], which on an encoder with B blocks (states 0..B) is state
floor(p/q * B + 1/2): the nearest state, a tie going to the deeper one. So FLUX.2's 1/4;1/2;3/4 is
states 10;20;30 of its 40 blocks, 2;3;5 of 6, 5;9;14 of 18, 8;15;23 of 30 and 6;12;18 of 24.

Options (canonical order):

    layernorm | standardize | rms | l2 | minmax | none   the normalization (default: layernorm for
                  norm_mean/concat/learned, none for last/layer; ``mean`` takes none)
    no_embed      drop state 0 (the embedding output) from multi-layer strategies
    layers=a:b    a Python slice over state indices; bounds are positions, e.g. ``layers=4:12``,
                  ``layers=-6:``, ``layers=1/2:``
    layers=a;b;c  an explicit list of positions, shallow to deep, e.g. ``layers=10;20;30``,
                  ``layers=1/4;1/2;3/4``, ``layers=-2;-1``
    no_mask       keep padding positions as computed (default: zeroed)
    template=t    wrap each prompt in the named template before encoding (``t2istudy.text.templates``);
                  the encoder applies it and drops the template's tokens, the fold never sees it

Normalizations. Per token, over the feature axis, no affine parameters:
    layernorm     (x - mean) / sqrt(var + 1e-5), biased variance, as ``torch.nn.functional.layer_norm``
    standardize   (x - mean) / (std + 1e-6), unbiased std, as in NVIDIA Cosmos' text-embedding normalizer
    rms           x / sqrt(mean(x^2) + 1e-6)
    l2            x / max(||x||_2, 1e-12)
Per layer, over one prompt's real tokens (LTX-2's connector), so it needs the padding mask:
    minmax        (x - mean) / (max - min + 1e-6), mean, max and min over every feature of every real
                  token of the prompt in that layer (LTX-2 also multiplies by 8, a constant that the
                  training's input scale and the probe's LayerNorm remove, so it is left out)

Every strategy is a fold over the layers (``Aggregator``): ``aggregate`` feeds a stacked tensor
through it, ``encoders.FrozenEncoder.encode_aggregated`` feeds it from forward hooks one layer at a
time, so both give the same numbers without the streaming path ever holding every layer. The fold
keeps only its output buffer: [B, T, D] whatever the depth, except ``concat`` ([B, T, L*D]) and
``learned`` ([B, T, L, D]), whose outputs are that wide by definition.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F

from t2istudy.text.recipes import PREFIX, RECIPES, named_recipe
from t2istudy.text.templates import TEMPLATES

KINDS = ("last", "layer", "mean", "norm_mean", "concat", "learned")
TOKEN_NORMS = ("none", "layernorm", "standardize", "rms", "l2")
PROMPT_NORMS = ("minmax",)  # per layer, over the prompt's real tokens: need the mask
NORMS = TOKEN_NORMS + PROMPT_NORMS
MULTI_LAYER_KINDS = ("mean", "norm_mean", "concat", "learned")
EPS = {"layernorm": 1e-5, "standardize": 1e-6, "rms": 1e-6, "l2": 1e-12, "minmax": 1e-6}

_HELP = (
    "Valid strategies: last, layer:<position>, mean, norm_mean, concat, learned, with options in brackets, "
    "e.g. 'norm_mean[standardize,no_embed]', 'norm_mean[rms,layers=4:12]', 'concat[none,layers=1/4;1/2;3/4]', "
    "'concat[minmax]', 'layer:-2[template=lumina2]', or a named recipe 'recipe:<name>'. "
    f"Norm options: {', '.join(NORMS)}."
)


@dataclass(frozen=True)
class Depth:
    """A position given as a fraction of the encoder's depth (0 = embedding output, 1 = last state)."""

    fraction: Fraction

    def __str__(self) -> str:
        return f"{self.fraction.numerator}/{self.fraction.denominator}"

    def state(self, num_states: int) -> int:
        """The nearest state of an encoder with ``num_states - 1`` blocks; a tie goes to the deeper one."""
        return math.floor(self.fraction * (num_states - 1) + Fraction(1, 2))


Position = int | Depth


@dataclass(frozen=True)
class LayerSlice:
    """``layers=a:b``: a Python slice over state indices whose bounds may be depth fractions."""

    start: Position | None
    stop: Position | None

    def __str__(self) -> str:
        return ":".join("" if v is None else str(v) for v in (self.start, self.stop))


@dataclass(frozen=True)
class LayerList:
    """``layers=a;b;c``: explicit positions, shallow to deep."""

    positions: tuple[Position, ...]

    def __str__(self) -> str:
        return ";".join(map(str, self.positions))


@dataclass(frozen=True)
class Strategy:
    """A parsed aggregation strategy; build it with ``parse_strategy`` so it is validated."""

    kind: str
    layer: Position | None = None  # only for kind == "layer"
    norm: str = "none"
    include_embed: bool = True
    layers: LayerSlice | LayerList | None = None
    mask_padding: bool = True
    template: str | None = None  # applied by the encoder, see t2istudy.text.templates

    def __str__(self) -> str:
        head = f"layer:{self.layer}" if self.kind == "layer" else self.kind
        options = []
        if self.norm != _default_norm(self.kind):
            options.append(self.norm)
        if not self.include_embed:
            options.append("no_embed")
        if self.layers is not None:
            options.append(f"layers={self.layers}")
        if not self.mask_padding:
            options.append("no_mask")
        if self.template is not None:
            options.append(f"template={self.template}")
        return head + (f"[{','.join(options)}]" if options else "")


def _default_norm(kind: str) -> str:
    return "layernorm" if kind in ("norm_mean", "concat", "learned") else "none"


_POSITION = r"[+-]?\d+(?:/\d+)?"
_PATTERN = re.compile(rf"^(?P<head>[a-z_]+(?::{_POSITION})?)(?:\[(?P<opts>[^\[\]]*)\])?$")


def parse_strategy(name: str | Strategy) -> Strategy:
    """Parse and validate a strategy string or ``recipe:<name>`` (a ``Strategy`` passes through unchanged)."""
    if isinstance(name, Strategy):
        return name
    if not isinstance(name, str):
        raise ValueError(f"Strategy must be a string such as 'norm_mean', got {type(name).__name__}. {_HELP}")
    text = name.strip().replace(" ", "")
    recipe = named_recipe(text)
    if recipe is not None:
        return parse_strategy(recipe.strategy)
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"Cannot parse strategy {name!r}. {_HELP}")
    head, opts = match["head"], match["opts"]
    kind, layer = head, None
    if ":" in head:
        kind, index = head.split(":")
        if kind != "layer":
            raise ValueError(f"Strategy {name!r}: only 'layer' takes an index (layer:<k>). {_HELP}")
        layer = _parse_position(index, name)
    elif kind == "layer":
        raise ValueError(f"Strategy {name!r}: 'layer' needs an index, e.g. 'layer:12' or 'layer:-2'. {_HELP}")
    if kind not in KINDS:
        raise ValueError(f"Unknown strategy kind {kind!r} in {name!r}. {_HELP}")

    norm, include_embed, layers, mask_padding, template = _default_norm(kind), True, None, True, None
    seen: set[str] = set()
    for opt in opts.split(",") if opts else []:
        if not opt:
            raise ValueError(f"Strategy {name!r} has an empty option (stray comma). {_HELP}")
        key = "norm" if opt in NORMS else opt.split("=")[0]
        if key in seen:
            raise ValueError(f"Strategy {name!r} sets {key!r} twice; give each option once.")
        seen.add(key)
        if opt in NORMS:
            norm = opt
        elif opt == "no_embed":
            include_embed = False
        elif opt == "no_mask":
            mask_padding = False
        elif opt.startswith("layers="):
            layers = _parse_layers(opt[len("layers=") :], name)
        elif opt.startswith("template="):
            template = opt[len("template=") :]
            if template not in TEMPLATES:
                raise ValueError(
                    f"Strategy {name!r}: unknown template {template!r}; known templates: "
                    f"{', '.join(TEMPLATES)} (add one to t2istudy/text/templates.py)."
                )
        else:
            raise ValueError(f"Unknown option {opt!r} in strategy {name!r}. {_HELP}")

    if kind == "mean" and norm != "none":
        raise ValueError(
            f"Strategy {name!r}: 'mean' averages raw states; for normalized layers use 'norm_mean[{norm}]'."
        )
    if kind == "norm_mean" and norm == "none":
        raise ValueError(f"Strategy {name!r}: norm_mean needs a normalization; use 'mean' for raw states.")
    if kind not in MULTI_LAYER_KINDS and (not include_embed or layers is not None):
        raise ValueError(
            f"Strategy {name!r}: no_embed and layers= select layers for {', '.join(MULTI_LAYER_KINDS)}; "
            f"'{kind}' uses a single state."
        )
    return Strategy(kind, layer, norm, include_embed, layers, mask_padding, template)


def _parse_position(text: str, name: str) -> Position:
    if "/" not in text:
        return int(text)
    numerator, denominator = text.split("/")
    if numerator.startswith(("+", "-")) or int(denominator) == 0 or int(numerator) > int(denominator):
        raise ValueError(
            f"Strategy {name!r}: depth fraction {text!r} must lie in [0, 1] (0/1 = embedding, 1/1 = last), "
            "e.g. '1/4'; count from the end with an integer, e.g. '-2'."
        )
    return Depth(Fraction(int(numerator), int(denominator)))


def _parse_layers(text: str, name: str) -> LayerSlice | LayerList:
    example = "e.g. 'layers=4:12', 'layers=1/2:', 'layers=10;20;30' or 'layers=1/4;1/2;3/4'"
    if ":" in text and ";" in text:
        raise ValueError(f"Strategy {name!r}: layers= is either a slice or a ';' list, not both ({example}).")
    parts = text.split(";") if ";" in text else text.split(":")
    if any(not re.fullmatch(_POSITION, p) for p in parts if p or ";" in text):
        raise ValueError(f"Strategy {name!r}: layers= bounds must be integers or fractions p/q ({example}).")
    if ";" in text:
        positions = tuple(_parse_position(p, name) for p in parts)
        if len(set(positions)) != len(positions):
            raise ValueError(f"Strategy {name!r}: layers= lists a position twice; give each once.")
        return LayerList(positions)
    if len(parts) != 2:
        raise ValueError(f"Strategy {name!r}: layers= takes a slice 'start:stop' or a ';' list ({example}).")
    start, stop = (_parse_position(p, name) if p else None for p in parts)
    if start is None and stop is None:
        raise ValueError(f"Strategy {name!r}: 'layers=:' selects everything; drop the option instead.")
    return LayerSlice(start, stop)


def _state(position: Position, num_states: int, name: str) -> int:
    """A position as a state index 0..num_states-1, validated."""
    if isinstance(position, Depth):
        return position.state(num_states)
    if not -num_states <= position < num_states:
        raise ValueError(
            f"Layer index {position} in strategy '{name}' is out of range for an encoder with {num_states} "
            f"hidden states (embedding + {num_states - 1} blocks): use {-num_states} <= k <= {num_states - 1} "
            "(0 = embedding output, -1 = last), or a depth fraction such as 1/2."
        )
    return position % num_states


def selected_states(strategy: str | Strategy, num_states: int) -> list[int]:
    """Indices of the hidden states a strategy reads, validated against ``num_states`` (= layers + 1)."""
    s = parse_strategy(strategy)
    if num_states < 1:
        raise ValueError(f"num_states must be >= 1, got {num_states}.")
    if s.kind == "last":
        return [num_states - 1]
    if s.kind == "layer":
        return [_state(s.layer, num_states, str(s))]
    indices = list(range(num_states))
    if isinstance(s.layers, LayerSlice):
        bounds = (b.state(num_states) if isinstance(b, Depth) else b for b in (s.layers.start, s.layers.stop))
        indices = indices[slice(*bounds)]
    elif isinstance(s.layers, LayerList):
        indices = [_state(p, num_states, str(s)) for p in s.layers.positions]
        if any(a >= b for a, b in zip(indices, indices[1:], strict=False)):
            raise ValueError(
                f"Strategy '{s}' names states {indices} on an encoder with {num_states} hidden states: list "
                "positions shallow to deep, each state once (on a shallow encoder two fractions can round "
                "to the same state; use explicit indices there)."
            )
    if not s.include_embed:
        indices = [i for i in indices if i != 0]
    if not indices:
        raise ValueError(
            f"Strategy '{s}' selects no layers from {num_states} hidden states; choose a layers= slice "
            f"inside 0:{num_states} (and keep at least one block besides the embedding)."
        )
    return indices


def output_width(strategy: str | Strategy, num_states: int, width: int) -> int:
    """Feature width of the aggregated sequence (per layer for ``learned``, whose output is [B,T,L,D])."""
    s = parse_strategy(strategy)
    n = len(selected_states(s, num_states))
    return n * width if s.kind == "concat" else width


def projection_parameters(
    strategy: str | Strategy, num_states: int, width: int, cross_attention_dim: int
) -> int:
    """Trainable parameters of the text conditioner for this strategy (``diffusion.model.TextConditioner``):
    the Linear from the aggregated width to the U-Net's cross-attention width, plus one logit per layer for
    ``learned``. Concat multiplies it by the number of layers, so it is reported per arm."""
    s = parse_strategy(strategy)
    linear = (output_width(s, num_states, width) + 1) * cross_attention_dim
    return linear + (len(selected_states(s, num_states)) if s.kind == "learned" else 0)


def normalize(x: torch.Tensor, norm: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalize x [..., T, D] without affine parameters: per token over features, or for ``minmax`` per
    prompt over its real tokens (``mask`` [..., T], True = real token)."""
    if norm == "none":
        return x
    if norm == "layernorm":
        return F.layer_norm(x, x.shape[-1:], eps=EPS["layernorm"])
    if norm == "standardize":
        centered = x - x.mean(dim=-1, keepdim=True)
        return centered / (x.std(dim=-1, keepdim=True) + EPS["standardize"])
    if norm == "rms":
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS["rms"])
    if norm == "l2":
        return F.normalize(x, dim=-1, eps=EPS["l2"])
    if norm == "minmax":
        if mask is None:
            raise ValueError("The minmax normalization is over a prompt's real tokens: pass its mask [B, T].")
        return _minmax(x, mask.to(device=x.device, dtype=torch.bool))
    raise ValueError(f"Unknown normalization {norm!r}; choose one of {', '.join(NORMS)}.")


def _minmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (max - min + eps), statistics over every feature of the prompt's real tokens."""
    real = mask[..., None]
    count = (mask.sum(dim=-1) * x.shape[-1]).clamp(min=1)[..., None, None]
    mean = torch.where(real, x, 0.0).sum(dim=(-2, -1), keepdim=True) / count
    high = torch.where(real, x, -torch.inf).amax(dim=(-2, -1), keepdim=True)
    low = torch.where(real, x, torch.inf).amin(dim=(-2, -1), keepdim=True)
    spread = torch.where(mask.any(dim=-1)[..., None, None], high - low, 1.0)  # a prompt with no token
    return (x - mean) / (spread + EPS["minmax"])


class Aggregator:
    """Fold over hidden states in index order: ``add(i, h_i)`` for every state, then ``result(mask)``.

    Each needed state is folded straight into the output buffer (running sum for mean/norm_mean,
    its slot for concat/learned, a copy for last/layer), so nothing but the output is kept: no
    reference to a state survives ``add``. Pass ``out`` (e.g. a slice of a preallocated result) to
    avoid even that allocation. ``mask`` [B, T] is needed up front only by ``minmax``, which
    normalizes each layer over the prompt's real tokens as it arrives.
    """

    def __init__(
        self,
        strategy: str | Strategy,
        num_states: int,
        out: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ):
        self.strategy = parse_strategy(strategy)
        self.num_states = num_states
        self.wanted = selected_states(self.strategy, num_states)
        self._slot = {index: k for k, index in enumerate(self.wanted)}
        if self.strategy.norm in PROMPT_NORMS and mask is None:
            raise ValueError(
                f"Strategy '{self.strategy}' normalizes each layer over the prompt's tokens: pass "
                "Aggregator(..., mask=mask) with the [B, T] padding mask."
            )
        self.mask = mask
        self.out = out
        self._last: int | None = None
        self._arrived: set[int] = set()

    def _buffer(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.out is None:
            b, t, d = hidden.shape
            kind, n = self.strategy.kind, len(self.wanted)
            shape = (b, t, n * d) if kind == "concat" else (b, t, n, d) if kind == "learned" else (b, t, d)
            self.out = torch.empty(shape, dtype=torch.float32, device=hidden.device)
        return self.out

    def add(self, index: int, hidden: torch.Tensor) -> None:
        """Consume hidden state ``index`` ([B, T, D]); states must arrive in increasing order."""
        if self._last is not None and index <= self._last:
            raise RuntimeError(f"Hidden state {index} arrived after {self._last}; feed states in order.")
        self._last = index
        if index not in self._slot:
            return
        self._arrived.add(index)
        out, k, kind = self._buffer(hidden), self._slot[index], self.strategy.kind
        x = normalize(hidden.float(), self.strategy.norm, self.mask)
        if kind in ("mean", "norm_mean"):
            out.copy_(x) if k == 0 else out.add_(x)
        elif kind == "concat":
            width = hidden.shape[-1]
            out[..., k * width : (k + 1) * width].copy_(x)
        elif kind == "learned":
            out[:, :, k].copy_(x)
        else:
            out.copy_(x)

    def result(self, mask: torch.Tensor) -> torch.Tensor:
        """The aggregated features: [B, T, D'] ([B, T, L, D] for learned); padding zeroed if masked."""
        missing = [i for i in self.wanted if i not in self._arrived]
        if missing:
            raise RuntimeError(f"Hidden states {missing} never arrived; the encoder hooks missed a layer.")
        out, kind = self.out, self.strategy.kind
        if kind in ("mean", "norm_mean"):
            out.div_(len(self.wanted))
        if self.strategy.mask_padding:
            m = mask.to(device=out.device, dtype=out.dtype)
            out.mul_(m[:, :, None, None] if kind == "learned" else m[:, :, None])
        return out


def aggregate(hidden: torch.Tensor, mask: torch.Tensor, strategy: str | Strategy) -> torch.Tensor:
    """Aggregate stacked hidden states [L, B, T, D] with ``mask`` [B, T] (True = real token).

    Returns float32 [B, T, D'] (``output_width``), or [B, T, L', D] for ``learned``. A strategy's
    template acts in the encoder: pass states encoded with it (``FrozenEncoder.encode(..., template=)``).
    """
    if hidden.dim() != 4:
        raise ValueError(f"hidden must be [layers, batch, tokens, width], got shape {tuple(hidden.shape)}.")
    if tuple(mask.shape) != tuple(hidden.shape[1:3]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match hidden [B, T] = {tuple(hidden.shape[1:3])}."
        )
    agg = Aggregator(strategy, hidden.shape[0], mask=mask)
    for i in agg.wanted:
        agg.add(i, hidden[i])
    return agg.result(mask)


def recipe_of(strategy) -> str | None:
    """``recipe:<name>`` whose expansion equals ``strategy`` (any spelling), else None."""
    canonical = str(parse_strategy(strategy))
    for recipe in RECIPES.values():
        if str(parse_strategy(recipe.strategy)) == canonical:
            return f"{PREFIX}{recipe.name}"
    return None
