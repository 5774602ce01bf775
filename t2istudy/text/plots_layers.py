"""Figures for the layer-norm explorer: token norm per layer, cross-layer cosine similarity.

Each figure is saved as PNG and PDF with the numbers it shows as CSV beside it
(``t2istudy.figure_files.save_figure``).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def plot_layer_norms(stats: pd.DataFrame) -> plt.Figure:
    """Raw token norm per layer (log scale), one line per encoder, x = relative depth.

    Left: mean and 5-95th percentile band without the first token. Right: the largest token norm
    with the first token included (the attention sink; float16 ends at 65504).
    """
    raw = stats[stats["norm"] == "none"]
    if raw.empty:
        raise ValueError(
            "stats has no norm='none' rows; compute them with layer_norm_stats(..., norms=('none',...))."
        )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    palette = dict(
        zip(raw["encoder"].unique(), sns.color_palette(n_colors=raw["encoder"].nunique()), strict=True)
    )
    body = raw[raw["tokens"] == "no_first"]
    for encoder, group in body.groupby("encoder", sort=False):
        axes[0].plot(group["depth"], group["mean"], marker="o", ms=3, color=palette[encoder], label=encoder)
        if {"p5", "p95"} <= set(group.columns):
            axes[0].fill_between(group["depth"], group["p5"], group["p95"], color=palette[encoder], alpha=0.2)
    for encoder, group in raw[raw["tokens"] == "all"].groupby("encoder", sort=False):
        axes[1].plot(group["depth"], group["max"], marker="o", ms=3, color=palette[encoder], label=encoder)
    axes[1].axhline(65504, color="grey", ls="--", lw=1)
    axes[1].annotate("float16 max", (0.0, 65504), textcoords="offset points", xytext=(2, 3), fontsize=8)
    axes[0].set(title="Token norm without the first token (mean, p5-p95)", ylabel="L2 norm")
    axes[1].set(title="Largest token norm (first token included)")
    for ax in axes:
        ax.set(yscale="log", xlabel="depth (0 = embedding output, 1 = last state)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(title="encoder", fontsize=8)
    fig.tight_layout()
    return fig


def plot_layer_similarity(similarity: pd.DataFrame) -> plt.Figure:
    """Heatmap of the mean cosine similarity between layers, one panel per encoder."""
    encoders = list(similarity["encoder"].unique())
    cols = min(len(encoders), 4)
    rows = math.ceil(len(encoders) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, encoder in zip(axes.flat, encoders, strict=False):
        matrix = similarity[similarity["encoder"] == encoder].pivot(
            index="layer_a", columns="layer_b", values="cosine"
        )
        sns.heatmap(matrix, ax=ax, vmin=-0.2, vmax=1.0, cmap="viridis", square=True, cbar=ax is axes.flat[0])
        ax.set(title=encoder or "encoder", xlabel="layer", ylabel="layer")
    for ax in list(axes.flat)[len(encoders) :]:
        ax.axis("off")
    fig.suptitle("Mean cosine similarity of a token's states across layers (first token excluded)")
    fig.tight_layout()
    return fig
