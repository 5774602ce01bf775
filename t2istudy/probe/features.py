"""The probe's inputs: every representation of the same prompts, normalized, encoded once.

Each caption goes through the encoder once (all hidden states); every ``layer:k``, ``last``, ``mean``,
``norm_mean`` (and variants), ``concat`` and ``learned`` is derived from those states with
``aggregation.aggregate``, then LayerNorm'd per token (no affine: the input scale, ~1e5 on raw layers, is
not what the probe measures) and kept in float16. ``layerwise`` trains the probes on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from t2istudy.text.aggregation import aggregate, parse_strategy

LAYERS = "layers"  # representation keyword: every hidden state, one probe per layer ("layer:k"); "layers/k"


@dataclass
class Features:
    """Normalized token sequences of several representations of the same N prompts (float16).

    ``stack`` holds every hidden state ([N, T, L, D], LayerNorm per token) when the sweep needs per-layer
    probes or ``learned``; ``layer:k`` reads slice k of it. Other strategies live in ``single``.
    """

    encoder: str
    mask: torch.Tensor  # [N, T] bool
    single: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N, T, D']
    stack: torch.Tensor | None = None  # [N, T, L, D]
    num_states: int = 0
    requested: list[str] = field(default_factory=list)  # the sweep's members, in the requested order

    @property
    def names(self) -> list[str]:
        layers = [f"layer:{k}" for k in range(self.num_states)] if self.stack is not None else []
        return layers + (["learned"] if self.stack is not None else []) + list(self.single)

    def shape_of(self, name: str) -> tuple[int, ...]:
        """Per-token input shape of a representation: (D,) or (L, D) for learned."""
        if name == "learned":
            return tuple(self.stack.shape[2:])
        if from_stack(name):
            return (self.stack.shape[3],)
        return (self.single[name].shape[2],)

    def batch(self, names: Sequence[str], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 inputs [R, B, T, *shape] and mask [B, T] for the members ``names`` (all of one shape);
        T is trimmed to the longest prompt among ``rows``."""
        rows_t = torch.as_tensor(rows)
        mask = self.mask[rows_t]
        length = int(mask.sum(1).max())
        mask, rows_t = mask[:, :length], (rows_t, slice(0, length))
        stacked = self.stack[rows_t] if self.stack is not None else None
        parts = []
        for name in names:
            if name == "learned":
                parts.append(stacked)
            elif from_stack(name):
                parts.append(stacked[:, :, int(name.split(":")[1])])
            else:
                parts.append(self.single[name][rows_t])
        return torch.stack(parts).float(), mask


_STACK_LAYER = re.compile(r"layer:\d+")


def from_stack(name: str) -> bool:
    """Whether a canonical representation is read from the stack of every state (``layer:k``, ``learned``)
    rather than aggregated on its own (strategies, and a layer read under a prompt template)."""
    return name == "learned" or bool(_STACK_LAYER.fullmatch(name))


def template_of(representation: str) -> str | None:
    """The prompt template a representation's states must be encoded with (None: the plain prompt)."""
    if representation == LAYERS or representation.startswith(LAYERS + "/") or representation == "learned":
        return None
    return parse_strategy(representation).template


def expand_representations(representations: Iterable[str], num_states: int) -> list[str]:
    """Canonical names: ``layers`` -> every ``layer:k`` (k = 0 .. num_states - 1; ``layers/3``: every 3rd
    state, a cheaper sweep of deep encoders), strategies via
    ``parse_strategy`` (``layer:-1`` -> ``layer:L-1``); duplicates dropped, order kept."""
    if isinstance(representations, str):
        representations = [representations]
    names: list[str] = []
    for rep in representations:
        if rep == LAYERS or rep.startswith(LAYERS + "/"):
            step = rep[len(LAYERS) + 1 :] or "1"
            if not step.isdigit() or int(step) < 1:
                raise ValueError(
                    f"Representation {rep!r}: use 'layers' (every state) or 'layers/<k>' (every k-th)."
                )
            names += [f"layer:{k}" for k in range(0, num_states, int(step))]
            continue
        strategy = parse_strategy(rep)
        if strategy.kind == "layer" and strategy.template is None:  # a templated layer: its own member
            k = strategy.layer % num_states if -num_states <= strategy.layer < num_states else strategy.layer
            if not 0 <= k < num_states:
                raise ValueError(
                    f"Representation {rep!r}: the encoder has {num_states} hidden states (0..{num_states - 1})."
                )
            names.append(f"layer:{k}")
        elif strategy.kind == "learned" and str(strategy) != "learned":
            raise ValueError(
                f"Representation {rep!r}: the probe supports plain 'learned' (every state, layernorm)."
            )
        else:
            names.append(str(strategy))
    return list(dict.fromkeys(names))


def featurize(
    encode: Callable[[list[str]], object],
    prompts: Sequence[str],
    representations: Iterable[str],
    *,
    encoder_name: str = "",
    chunk: int = 128,
    progress: bool = False,
) -> Features:
    """Encode every prompt once (all layers) and derive every representation from those states.

    ``encode(prompts)`` returns an ``encoders.LayerStates`` (``FrozenEncoder.encode``) or any object with
    ``hidden`` [L, B, T, D] and ``mask`` [B, T]. Prompts go in chunks so only one chunk's states are held.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("featurize needs at least one prompt.")
    chunks = range(0, len(prompts), chunk)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=f"encode {encoder_name}")
    masks, stacks, singles, names = [], [], {}, None
    for start in chunks:
        states = encode(prompts[start : start + chunk])
        hidden, mask = states.hidden.float(), states.mask.bool()
        if names is None:
            num_states = hidden.shape[0]
            names = expand_representations(representations, num_states)
            want_stack = any(from_stack(n) for n in names)
            strategies = [n for n in names if not from_stack(n)]
            template = getattr(states, "template", None)
            wrong = [n for n in strategies if parse_strategy(n).template != template]
            if wrong:  # a template changes the forward pass: the states must come from it
                raise ValueError(
                    f"Representations {wrong} need states encoded with their prompt template, but these were "
                    f"encoded with template={template!r}: featurize one template at a time, with "
                    "encode=lambda batch: encoder.encode(batch, template=...)."
                )
        masks.append(mask)
        m = mask[None, :, :, None].float()
        if want_stack:  # every state, LayerNorm per token, padding zeroed: [B, T, L, D]
            stacks.append((F.layer_norm(hidden, hidden.shape[-1:]) * m).permute(1, 2, 0, 3).half())
        for name in strategies:
            x = aggregate(hidden, mask, name)
            singles.setdefault(name, []).append((F.layer_norm(x, x.shape[-1:]) * m[0]).half())
    width = max(m.shape[1] for m in masks)
    features = Features(
        encoder=encoder_name,
        mask=torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks]),
        single={n: _cat_padded(parts, width) for n, parts in singles.items()},
        stack=_cat_padded(stacks, width) if stacks else None,
        num_states=num_states,
        requested=names,
    )
    return features


def _cat_padded(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """Concatenate [B, T_i, ...] chunks along B after right-padding T_i to ``width`` with zeros."""
    out = []
    for p in parts:
        pad = [0, 0] * (p.dim() - 2) + [0, width - p.shape[1]]
        out.append(F.pad(p, pad))
    return torch.cat(out)
