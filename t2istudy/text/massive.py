"""Massive activations: the few channels of a layer that sit orders of magnitude above the rest.

Sun et al. (2024), "Massive Activations in Large Language Models": in LLMs a handful of channels,
mostly on the first token or on delimiter tokens, reach hundreds to thousands of times the median
channel. They are what a per-token normalization tames and what a plain mean over layers lets
dominate. This module finds them and measures how much of an aggregated vector they account for.

Everything works on the real tokens of several prompts pooled side by side: ``tokens`` [L, n, D]
(L states, n tokens, D channels) with ``first`` [n] marking each prompt's first token.
A channel's magnitude in a layer is its largest |activation| over those tokens; a channel is compared
with the median channel of the same layer (``relative``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import pandas as pd
import torch

from t2istudy.text.aggregation import aggregate
from t2istudy.text.encoders import FrozenEncoder, LayerStates

CARRIER_FRACTION = 0.5  # a token "carries" a channel where |x| >= this fraction of the channel's magnitude
MIN_RELATIVE = 100.0  # a top channel this many times above the median channel counts as massive
SHARE_STRATEGIES = ("mean", "norm_mean")


@dataclass
class PooledTokens:
    """Real tokens of several prompts side by side, with what each one is."""

    hidden: torch.Tensor  # [L, n, D] float32
    labels: list[str]  # token strings, one per pooled token
    first: torch.Tensor  # [n] bool: the token is its prompt's first
    position: torch.Tensor  # [n] long: position inside its prompt
    prompt: torch.Tensor  # [n] long: index of its prompt

    def without_first(self) -> PooledTokens:
        """The same tokens minus every prompt's first one (the attention sink)."""
        keep = ~self.first
        return PooledTokens(
            self.hidden[:, keep],
            [label for label, k in zip(self.labels, keep.tolist(), strict=True) if k],
            self.first[keep],
            self.position[keep],
            self.prompt[keep],
        )


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """Readable strings of single tokens: the decoded text, or the raw token where that is blank."""
    raw = tokenizer.convert_ids_to_tokens(list(ids))
    out = []
    for token_id, token in zip(ids, raw, strict=True):
        text = tokenizer.decode([token_id]).replace("\n", "\\n")
        out.append(text.strip() or str(token))
    return out


def pool_states(states: LayerStates, tokenizer) -> PooledTokens:
    """Pool the real (unpadded) tokens of every prompt in ``states`` and label them."""
    mask = states.mask
    n_prompts, length = mask.shape
    position = torch.arange(length).expand(n_prompts, length)
    prompt = torch.arange(n_prompts)[:, None].expand(n_prompts, length)
    labels = token_strings(tokenizer, states.ids[mask].tolist())
    return PooledTokens(states.hidden[:, mask], labels, position[mask] == 0, position[mask], prompt[mask])


def channel_magnitudes(tokens: torch.Tensor) -> torch.Tensor:
    """Largest |activation| of every channel over the tokens: [L, n, D] -> [L, D]."""
    if tokens.dim() != 3 or tokens.shape[1] == 0:
        raise ValueError(
            f"tokens must be [layers, tokens, width] with at least one token, got {tuple(tokens.shape)}."
        )
    return tokens.abs().amax(dim=1)


def _carrier_summary(labels: list[str], limit: int = 3) -> str:
    counts = Counter(labels).most_common(limit)
    return "; ".join(f"{label!r} x{count}" for label, count in counts)


def top_channels(
    pooled: PooledTokens, k: int = 4, carrier_fraction: float = CARRIER_FRACTION
) -> pd.DataFrame:
    """The ``k`` largest channels of every layer and the tokens that carry them.

    Columns: layer, rank (1 = largest), channel, magnitude (max |x| over tokens), median_channel
    (the layer's median channel magnitude), relative (magnitude / median_channel), value (the signed
    activation at the peak), peak_token, peak_position, carriers (tokens with |x| >= carrier_fraction
    x magnitude), first_share (share of those that are a prompt's first token), carrier_tokens (the
    most frequent carrier strings with counts).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer number of channels, got {k!r}.")
    hidden = pooled.hidden
    magnitude = channel_magnitudes(hidden)  # [L, D]
    median = magnitude.median(dim=1).values  # [L]
    k = min(k, hidden.shape[2])
    top = magnitude.topk(k, dim=1)
    rows = []
    for layer in range(hidden.shape[0]):
        for rank, (size, channel) in enumerate(
            zip(top.values[layer].tolist(), top.indices[layer].tolist(), strict=True), start=1
        ):
            column = hidden[layer, :, channel]
            peak = int(column.abs().argmax())
            carrier = column.abs() >= carrier_fraction * size
            rows.append(
                {
                    "layer": layer,
                    "rank": rank,
                    "channel": channel,
                    "magnitude": size,
                    "median_channel": float(median[layer]),
                    "relative": size / max(float(median[layer]), 1e-30),
                    "value": float(column[peak]),
                    "peak_token": pooled.labels[peak],
                    "peak_position": int(pooled.position[peak]),
                    "carriers": int(carrier.sum()),
                    "first_share": float(pooled.first[carrier].float().mean()),
                    "carrier_tokens": _carrier_summary(
                        [pooled.labels[i] for i in carrier.nonzero().flatten().tolist()]
                    ),
                }
            )
    return pd.DataFrame(rows)


def massive_channels(table: pd.DataFrame, min_relative: float = MIN_RELATIVE) -> list[int]:
    """Channels that are a top channel of some layer at ``min_relative`` x the median channel or more."""
    return sorted(int(c) for c in table.loc[table["relative"] >= min_relative, "channel"].unique())


def channel_share(features: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """Per token, the share of the squared L2 norm in ``channels``: [n, D] -> [n] in 0..1."""
    total = features.double().pow(2).sum(dim=-1)
    part = features[..., list(channels)].double().pow(2).sum(dim=-1)
    return part / total.clamp_min(1e-300)


def _variance_shares(features: torch.Tensor, channels: Sequence[int]) -> dict[str, float]:
    x = features.double()
    variance = x.var(dim=0, unbiased=False) if x.shape[0] > 1 else torch.zeros(x.shape[1], dtype=x.dtype)
    total = float(variance.sum())
    varying = total / max(float(x.pow(2).sum(dim=1).mean()), 1e-300)
    share = float(variance[list(channels)].sum()) / max(total, 1e-300)
    return {"varying": varying, "variance_share": share, "varying_rest": varying * (1 - share)}


def aggregate_shares(
    pooled: PooledTokens,
    channels: Sequence[int],
    strategies: Sequence[str] = SHARE_STRATEGIES,
) -> pd.DataFrame:
    """How much of each strategy's vector ``channels`` account for, with and without the first token.

    Columns: strategy, tokens (all | no_first), n_tokens, n_channels, width, chance (n_channels /
    width: the share of a vector spread evenly), share (mean over tokens of the per-token share of the
    squared norm), share_median, norm (mean L2 norm of the vector), varying (variance across tokens
    summed over channels / mean squared norm: the part of the vector that differs from token to token,
    i.e. all that can carry the prompt), variance_share (the channels' part of that variance),
    varying_rest (varying x (1 - variance_share): what varies outside the channels).
    """
    hidden = pooled.hidden
    width = hidden.shape[2]
    mask = torch.ones(1, hidden.shape[1], dtype=torch.bool)
    rows = []
    for strategy in strategies:
        features = aggregate(hidden[:, None], mask, strategy)[0]  # [n, D]: every token on its own
        share = channel_share(features, channels)
        for tokens, keep in (("all", torch.ones_like(pooled.first)), ("no_first", ~pooled.first)):
            if not keep.any():
                continue
            rows.append(
                {
                    "strategy": strategy,
                    "tokens": tokens,
                    "n_tokens": int(keep.sum()),
                    "n_channels": len(channels),
                    "width": width,
                    "chance": len(channels) / width,
                    "share": float(share[keep].mean()),
                    "share_median": float(share[keep].median()),
                    "norm": float(features[keep].norm(dim=-1).mean()),
                    **_variance_shares(features[keep], channels),
                }
            )
    return pd.DataFrame(rows)


def encoder_massive_activations(
    encoder: FrozenEncoder,
    prompts: Sequence[str],
    *,
    k: int = 4,
    min_relative: float = MIN_RELATIVE,
    batch_size: int = 16,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(top channels per layer, aggregate shares) of one encoder over ``prompts``, each with an
    ``encoder`` column; the shares are measured on the massive channels of the top-channel table."""
    pooled = pool_states(encoder.encode(list(prompts), batch_size=batch_size), encoder.tokenizer)
    top = top_channels(pooled, k)
    channels = massive_channels(top, min_relative)
    shares = aggregate_shares(pooled, channels)
    shares.insert(2, "channels", " ".join(map(str, channels)))
    top.insert(0, "encoder", encoder.name)
    shares.insert(0, "encoder", encoder.name)
    top["depth"] = top["layer"] / max(int(top["layer"].max()), 1)
    return top, shares


def _share_bars(ax: plt.Axes, shares: pd.DataFrame, column: str, title: str) -> None:
    """Grouped bars: one group per encoder, mean vs norm_mean, first token in (light) and out (dark)."""
    palette = {("mean", "all"): "salmon", ("mean", "no_first"): "C3"}
    palette |= {("norm_mean", "all"): "lightblue", ("norm_mean", "no_first"): "C0"}
    encoders = list(shares["encoder"].unique())
    width = 0.8 / len(palette)
    for i, ((strategy, tokens), color) in enumerate(palette.items()):
        rows = shares[(shares["strategy"] == strategy) & (shares["tokens"] == tokens)].set_index("encoder")
        values = [float(rows.loc[e, column]) if e in rows.index else 0.0 for e in encoders]
        label = f"{strategy}, first token {'in' if tokens == 'all' else 'out'}"
        ax.bar([x + (i - 1.5) * width for x in range(len(encoders))], values, width, color=color, label=label)
    ax.set_xticks(range(len(encoders)), encoders, fontsize=8)
    ax.set(ylim=(0, 1), title=title)
    ax.grid(True, axis="y", alpha=0.3)


def plot_massive_activations(top: pd.DataFrame, shares: pd.DataFrame) -> plt.Figure:
    """Top: the largest channel of each layer relative to the median channel, per encoder (open
    circles: mostly carried by the first token). Bottom: the massive channels' share of each token's
    ``mean`` and ``norm_mean`` vector, and of their variation from token to token."""
    fig = plt.figure(figsize=(11, 8))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    ax = fig.add_subplot(grid[0, :])
    for encoder in top["encoder"].unique():
        first = top[(top["encoder"] == encoder) & (top["rank"] == 1)]
        (line,) = ax.plot(first["depth"], first["relative"], marker="o", ms=3, label=encoder)
        sink = first[first["first_share"] >= 0.5]
        ax.scatter(sink["depth"], sink["relative"], s=40, facecolors="none", edgecolors=line.get_color())
    ax.axhline(MIN_RELATIVE, color="grey", ls="--", lw=1)
    ax.set(
        yscale="log",
        xlabel="depth (0 = embedding output, 1 = last state)",
        ylabel="largest channel / median channel",
        title="Largest channel per layer (open circle: mostly carried by the first token)",
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="encoder", fontsize=8)
    left, right = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    _share_bars(left, shares, "share", "Massive channels' share of each token's squared norm")
    _share_bars(right, shares, "variance_share", "... of the variation across tokens")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig
