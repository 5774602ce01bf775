"""Layer-aggregation strategies: per-layer token states [L, B, T, D] -> one conditioning sequence.

A strategy is a plain string everywhere (notebook parameters, grid files, params.json) and is parsed
and validated only here, by ``parse_strategy``. ``str(Strategy)`` is the canonical, stable name and
round-trips through ``parse_strategy``.

Grammar: ``kind[option,option,...]`` with ``kind`` one of

    last          the final hidden state (decoders: the final norm is already applied)
    layer:k       hidden state k (0 = embedding output, negative counts from the end)
    mean          plain mean over the selected states (dominated by the largest-norm layers)
    norm_mean     normalize each state per token, then average (the paper's best strategy)
    concat        normalized states concatenated along features -> width L * D
    learned       the normalized stack [B, T, L, D]; the model applies a softmax over layers

and options (canonical order):

    layernorm | standardize | rms | l2 | none   per-token normalization (default: layernorm for
                  norm_mean/concat/learned, none for last/layer; ``mean`` takes none)
    no_embed      drop state 0 (the embedding output) from multi-layer strategies
    layers=a:b    Python slice over state indices (0 = embedding), e.g. ``layers=4:12``, ``layers=-6:``
    no_mask       keep padding positions as computed (default: zeroed)

Normalizations (over the feature axis of each token, no affine parameters):
    layernorm     (x - mean) / sqrt(var + 1e-5), biased variance, as ``torch.nn.functional.layer_norm``
    standardize   (x - mean) / (std + 1e-6), unbiased std, as in NVIDIA Cosmos' text-embedding normalizer
    rms           x / sqrt(mean(x^2) + 1e-6)
    l2            x / max(||x||_2, 1e-12)

Every strategy is a fold over the layers (``Aggregator``): ``aggregate`` feeds a stacked tensor
through it, ``encoders.FrozenEncoder.encode_aggregated`` feeds it from forward hooks one layer at a
time, so both give the same numbers without the streaming path ever holding every layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("last", "layer", "mean", "norm_mean", "concat", "learned")
NORMS = ("none", "layernorm", "standardize", "rms", "l2")
MULTI_LAYER_KINDS = ("mean", "norm_mean", "concat", "learned")
EPS = {"layernorm": 1e-5, "standardize": 1e-6, "rms": 1e-6, "l2": 1e-12}

_HELP = (
    "Valid strategies: last, layer:<k>, mean, norm_mean, concat, learned, with options in brackets, "
    "e.g. 'norm_mean[standardize,no_embed]', 'norm_mean[rms,layers=4:12]', 'mean[no_mask]', 'layer:-2'. "
    f"Norm options: {', '.join(NORMS)}."
)


@dataclass(frozen=True)
class Strategy:
    """A parsed aggregation strategy; build it with ``parse_strategy`` so it is validated."""

    kind: str
    layer: int | None = None  # only for kind == "layer"
    norm: str = "none"
    include_embed: bool = True
    layers: tuple[int | None, int | None] | None = None  # slice over state indices
    mask_padding: bool = True

    def __str__(self) -> str:
        head = f"layer:{self.layer}" if self.kind == "layer" else self.kind
        options = []
        if self.norm != _default_norm(self.kind):
            options.append(self.norm)
        if not self.include_embed:
            options.append("no_embed")
        if self.layers is not None:
            start, stop = ("" if v is None else str(v) for v in self.layers)
            options.append(f"layers={start}:{stop}")
        if not self.mask_padding:
            options.append("no_mask")
        return head + (f"[{','.join(options)}]" if options else "")


def _default_norm(kind: str) -> str:
    return "layernorm" if kind in ("norm_mean", "concat", "learned") else "none"


_PATTERN = re.compile(r"^(?P<head>[a-z_]+(?::[+-]?\d+)?)(?:\[(?P<opts>[^\[\]]*)\])?$")


def parse_strategy(name: str | Strategy) -> Strategy:
    """Parse and validate a strategy string (a ``Strategy`` passes through unchanged)."""
    if isinstance(name, Strategy):
        return name
    if not isinstance(name, str):
        raise ValueError(f"Strategy must be a string such as 'norm_mean', got {type(name).__name__}. {_HELP}")
    match = _PATTERN.match(name.strip().replace(" ", ""))
    if match is None:
        raise ValueError(f"Cannot parse strategy {name!r}. {_HELP}")
    head, opts = match["head"], match["opts"]
    kind, layer = head, None
    if ":" in head:
        kind, index = head.split(":")
        if kind != "layer":
            raise ValueError(f"Strategy {name!r}: only 'layer' takes an index (layer:<k>). {_HELP}")
        layer = int(index)
    elif kind == "layer":
        raise ValueError(f"Strategy {name!r}: 'layer' needs an index, e.g. 'layer:12' or 'layer:-2'. {_HELP}")
    if kind not in KINDS:
        raise ValueError(f"Unknown strategy kind {kind!r} in {name!r}. {_HELP}")

    norm, include_embed, layers, mask_padding = _default_norm(kind), True, None, True
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
            layers = _parse_slice(opt[len("layers=") :], name)
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
    return Strategy(kind, layer, norm, include_embed, layers, mask_padding)


def _parse_slice(text: str, name: str) -> tuple[int | None, int | None]:
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"Strategy {name!r}: layers= takes a slice 'start:stop', e.g. 'layers=4:12'.")
    try:
        start, stop = (int(p) if p else None for p in parts)
    except ValueError:
        raise ValueError(f"Strategy {name!r}: layers= bounds must be integers, e.g. 'layers=4:12'.") from None
    if start is None and stop is None:
        raise ValueError(f"Strategy {name!r}: 'layers=:' selects everything; drop the option instead.")
    return start, stop


def selected_states(strategy: str | Strategy, num_states: int) -> list[int]:
    """Indices of the hidden states a strategy reads, validated against ``num_states`` (= layers + 1)."""
    s = parse_strategy(strategy)
    if num_states < 1:
        raise ValueError(f"num_states must be >= 1, got {num_states}.")
    if s.kind == "last":
        return [num_states - 1]
    if s.kind == "layer":
        if not -num_states <= s.layer < num_states:
            raise ValueError(
                f"Layer index {s.layer} is out of range for an encoder with {num_states} hidden states "
                f"(embedding + {num_states - 1} blocks): use layer:k with {-num_states} <= k <= "
                f"{num_states - 1} (0 = embedding output, -1 = last)."
            )
        return [s.layer % num_states]
    indices = list(range(num_states))
    if s.layers is not None:
        indices = indices[slice(*s.layers)]
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


def normalize(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-token normalization over the last (feature) axis, without affine parameters."""
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
    raise ValueError(f"Unknown normalization {norm!r}; choose one of {', '.join(NORMS)}.")


class Aggregator:
    """Fold over hidden states in index order: ``add(i, h_i)`` for every state, then ``result(mask)``.

    Each needed state is folded straight into the output buffer (running sum for mean/norm_mean,
    its slot for concat/learned, a copy for last/layer), so nothing but the output is kept. Pass
    ``out`` (e.g. a slice of a preallocated result) to avoid even that allocation.
    """

    def __init__(self, strategy: str | Strategy, num_states: int, out: torch.Tensor | None = None):
        self.strategy = parse_strategy(strategy)
        self.num_states = num_states
        self.wanted = selected_states(self.strategy, num_states)
        self._slot = {index: k for k, index in enumerate(self.wanted)}
        self.out = out
        self._seen: list[int] = []

    def _buffer(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.out is None:
            b, t, d = hidden.shape
            kind, n = self.strategy.kind, len(self.wanted)
            shape = (b, t, n * d) if kind == "concat" else (b, t, n, d) if kind == "learned" else (b, t, d)
            self.out = torch.empty(shape, dtype=torch.float32, device=hidden.device)
        return self.out

    def add(self, index: int, hidden: torch.Tensor) -> None:
        """Consume hidden state ``index`` ([B, T, D]); states must arrive in increasing order."""
        if self._seen and index <= self._seen[-1]:
            raise RuntimeError(f"Hidden state {index} arrived after {self._seen[-1]}; feed states in order.")
        self._seen.append(index)
        if index not in self._slot:
            return
        out, k, kind = self._buffer(hidden), self._slot[index], self.strategy.kind
        x = normalize(hidden.float(), self.strategy.norm)
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
        missing = [i for i in self.wanted if i not in self._seen]
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

    Returns float32 [B, T, D'] (``output_width``), or [B, T, L', D] for ``learned``.
    """
    if hidden.dim() != 4:
        raise ValueError(f"hidden must be [layers, batch, tokens, width], got shape {tuple(hidden.shape)}.")
    if tuple(mask.shape) != tuple(hidden.shape[1:3]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match hidden [B, T] = {tuple(hidden.shape[1:3])}."
        )
    agg = Aggregator(strategy, hidden.shape[0])
    for i in agg.wanted:
        agg.add(i, hidden[i])
    return agg.result(mask)
