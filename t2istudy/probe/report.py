"""Probe results as figures and tables, merged across sweeps, and set against the diffusion study.

Reads only summaries (``layerwise.summarize_accuracy`` output or the ``probe_all.csv`` files it was saved to), so the
analysis notebooks can use it without training anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import scipy.stats
import seaborn as sns

from t2istudy.figure_files import write_png_pdf
from t2istudy.probe.features import from_stack
from t2istudy.text.aggregation import parse_strategy, recipe_of

# ----------------------------------------------------------------------------------------------------
# Figures


def plot_layer_curves(summary: pd.DataFrame, encoder: str, ncols: int = 4):
    """One panel per skill: accuracy per layer (seed min-max shaded, mean line), the strategies as
    horizontal reference lines, controls (random init, shuffled) dashed, chance dotted."""
    data = summary[summary.encoder == encoder]
    if data.empty:
        raise ValueError(
            f"No probe results for encoder {encoder!r}; have {sorted(summary.encoder.unique())}."
        )
    skills = list(dict.fromkeys(data.skill))
    nrows = -(-len(skills) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), sharex=True, sharey=True, squeeze=False
    )
    palette = [
        c for i, c in enumerate(plt.rcParams["axes.prop_cycle"].by_key()["color"]) if i != 3
    ]  # red = chance
    strategies = [r for r in dict.fromkeys(data[data.control == "none"].representation) if not from_stack(r)]
    colours = {r: palette[i % len(palette)] for i, r in enumerate(strategies)}
    for ax, skill in zip(axes.flat, skills, strict=False):
        d = data[data.skill == skill]
        layers = d[(d.control == "none") & d.layer.notna()].sort_values("layer")
        if not layers.empty:
            ax.plot(layers.layer, layers.accuracy, color="black", lw=1.5, label="layer k")
            ax.fill_between(layers.layer, layers.seed_min, layers.seed_max, color="black", alpha=0.2, lw=0)
        for _, row in d[d.layer.isna()].iterrows():
            style = {"none": "-", "random_init": "--", "shuffled": ":"}[row.control]
            colour = "gray" if row.control == "shuffled" else colours.get(row.representation, "gray")
            label = row.representation if row.control == "none" else f"{row.representation} ({row.control})"
            ax.axhline(row.accuracy, color=colour, ls=style, lw=1.2, label=label)
        if "chance" in d and d.chance.notna().any():
            ax.axhline(
                d.chance.iloc[0],
                color=plt.rcParams["axes.prop_cycle"].by_key()["color"][3],
                ls="-.",
                lw=1.2,
                label="chance",
            )
        if "ceiling" in d and d.ceiling.notna().any():
            ax.axhline(d.ceiling.iloc[0], color="black", ls=(0, (1, 3)), lw=1, label="ceiling")
        ax.set_title(f"{skill} (n={int(d.n.max())})", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(skills) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("layer index (0 = embedding)")
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out exact accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.suptitle(f"Probe of {encoder}: what each layer and strategy keeps, per skill (band: seed min-max)")
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 6), 1, 0.97))
    return fig


def save_figures(
    summary: pd.DataFrame, out_dir: str | os.PathLike = "figures", prefix: str = "probe"
) -> list[Path]:
    """``<out_dir>/<prefix>_<encoder>.{png,pdf,csv}`` per encoder and ``<prefix>_all.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{prefix}_all.csv"]
    summary.to_csv(written[0], index=False, float_format="%.4f")
    for encoder in summary.encoder.unique():
        # Not Path.with_suffix: "qwen2.5-0.5b" would lose its ".5b" as if it were an extension.
        png, pdf, csv = (out / f"{prefix}_{encoder.replace('/', '_')}.{ext}" for ext in ("png", "pdf", "csv"))
        fig = plot_layer_curves(summary, encoder)
        write_png_pdf(fig, png, pdf, dpi=120, tight=False)
        plt.close(fig)
        summary[summary.encoder == encoder].to_csv(csv, index=False, float_format="%.4f")
        written += [png, pdf, csv]
    return written


def load_summaries(folder: str | os.PathLike, name: str = "probe_all.csv") -> pd.DataFrame:
    """Every probe summary under ``folder`` (its own ``probe_all.csv`` and its subfolders'), as one table.

    Sweeps of different encoders are run and committed separately (``figures/probe/<encoder>/``); analysis
    reads them together. An (encoder, control, representation, skill) found in two files is an error:
    say which sweep counts by moving the other away.
    """
    paths = sorted(Path(folder).rglob(name))
    if not paths:
        raise FileNotFoundError(f"No {name} under {folder}: run notebooks/probe.ipynb with out_dir={folder}.")
    frames = [read_summary(path).assign(source=str(path)) for path in paths]
    table = pd.concat(frames, ignore_index=True)
    key = ["encoder", "control", "representation", "skill"]
    dup = table[table.duplicated(key, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise ValueError(
            f"Probe results for {tuple(first[key])} appear in several files "
            f"({sorted(set(dup[(dup[key] == first[key]).all(axis=1)].source))}): keep one sweep per encoder."
        )
    return table


SUMMARY_COLUMNS = (
    "encoder",
    "control",
    "representation",
    "skill",
    "seeds",
    "accuracy",
)  # what the analysis reads
# Checked for a value on every row where present (a row cut short leaves them empty); older summaries lack n and CIs.
SUMMARY_NUMBERS = ("n", "seeds", "accuracy", "ci_low", "ci_high")


def read_summary(path: str | os.PathLike) -> pd.DataFrame:
    """One ``probe_all.csv``, refused naming the file and its first bad line when it is cut short (a copy or
    a write interrupted) or is not a probe summary: a torn row would otherwise fail later, naming nothing."""
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as err:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise ValueError(f"{path} is not a readable probe summary ({err}): {_SUMMARY_FIX}") from None
    missing = [c for c in SUMMARY_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the probe summary columns {missing}: {_SUMMARY_FIX}")
    numbers = [c for c in SUMMARY_NUMBERS if c in table.columns]
    numeric = table[numbers].apply(pd.to_numeric, errors="coerce")
    bad = table[list(SUMMARY_COLUMNS[:4])].isna().any(axis=1) | numeric.isna().any(axis=1)
    if bad.any():
        line = int(bad.to_numpy().nonzero()[0][0]) + 2  # 1-based, after the header
        raise ValueError(f"{path}, line {line}: an incomplete row (the file is cut short?): {_SUMMARY_FIX}")
    return table


_SUMMARY_FIX = (
    "restore it (git checkout -- <file>, if committed) or rerun the probe sweep that wrote it "
    "(notebooks/probe.ipynb with the same out_dir)"
)


# ----------------------------------------------------------------------------------------------------
# Released recipes, probed (issue 18: the cheap first look before any diffusion run)


def recipe_probe_table(summary: pd.DataFrame, baseline: str = "paper") -> pd.DataFrame:
    """One row per (encoder, named recipe) probed: the mean over skills of held-out probe accuracy, each
    skill's accuracy, and the difference to ``baseline`` (a recipe name) on the same encoder.

    Probe summaries hold a recipe under its expansion (``recipe:ltx2`` is ``concat[minmax]``); the name comes
    back here through ``recipe_of``. ``seed_std`` is the mean over skills of
    each skill's spread over probe seeds (a summary keeps no per-prompt rows, so no CI on the mean).
    Representations that are no recipe's expansion (``layer:3``, ...) are left out.
    """
    probes = summary[summary.control == "none"]
    names = {rep: (recipe_of(rep) or "").removeprefix("recipe:") for rep in probes.representation.unique()}
    probes = probes.assign(recipe=probes.representation.map(names))
    probes = probes[probes.recipe != ""]
    if probes.empty:
        raise ValueError(
            "No named recipe in these probe results: probe with representations such as "
            "['recipe:paper', 'recipe:flux2', ...] (notebooks/probe.ipynb, docs/probe.md)."
        )
    per_skill = probes.pivot_table(index=["encoder", "recipe"], columns="skill", values="accuracy")
    table = (
        probes.groupby(["encoder", "recipe"])
        .agg(strategy=("representation", "first"), seed_std=("seed_std", "mean"), n_seeds=("seeds", "min"))
        .assign(accuracy=per_skill.mean(axis=1))[["strategy", "accuracy", "seed_std", "n_seeds"]]
        .join(per_skill)
    )
    table = table.reset_index()
    base = table[table.recipe == baseline].set_index("encoder").accuracy
    table.insert(4, f"diff_vs_{baseline}", table.accuracy - table.encoder.map(base))
    table["rank"] = table.groupby("encoder").accuracy.rank(ascending=False, method="min").astype(int)
    return table.sort_values(["encoder", "rank", "recipe"], ignore_index=True)


def plot_recipe_probe(table: pd.DataFrame, baseline: str = "paper") -> tuple[plt.Figure, pd.DataFrame]:
    """Mean probe accuracy per recipe (rows, in the first encoder's order), one marker per encoder, with
    ``baseline`` drawn as a vertical line per encoder. Returns the figure and the numbers it shows."""
    data = table[["encoder", "recipe", "strategy", "accuracy", "seed_std"]]
    order = list(data[data.encoder == data.encoder.iloc[0]].sort_values("accuracy", ascending=False).recipe)
    order += sorted(set(data.recipe) - set(order))
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(order) + 1.2))
    sns.pointplot(
        data=data,
        x="accuracy",
        y="recipe",
        hue="encoder",
        order=order,
        linestyle="none",
        errorbar=None,  # one row per (encoder, recipe): the spread over probe seeds is in the table
        dodge=0.4 if data.encoder.nunique() > 1 else False,  # seaborn divides by (encoders - 1)
        ax=ax,
    )
    for encoder, color in zip(data.encoder.unique(), sns.color_palette(), strict=False):
        base = data[(data.encoder == encoder) & (data.recipe == baseline)].accuracy
        if len(base):
            ax.axvline(float(base.iloc[0]), color=color, lw=0.8, ls="--")
    ax.set_xlabel(f"probe accuracy, mean over skills (dashed: recipe:{baseline})")
    ax.set_ylabel("")
    ax.set_title("Released recipes, probed on held-out compositions")
    fig.tight_layout()
    return fig, data


# ----------------------------------------------------------------------------------------------------
# Does the probe predict the diffusion study?


def relate_to_diffusion(
    summary: pd.DataFrame, runs: pd.DataFrame, score: str = "mean", ax=None
) -> tuple[pd.DataFrame, pd.Series]:
    """Scatter probe accuracy against diffusion per-skill scores; report the Spearman rank correlation.

    ``runs``: per-skill diffusion scores, e.g. ``runs.load_metrics("runs", grid)`` (columns ``encoder``,
    ``strategy``, ``skill`` and the ``score`` column, default ``mean``); runs that differ only in seed are
    averaged, group rows (basic / advanced / overall) drop out in the join. Strategy strings are
    canonicalized with ``parse_strategy``. Returns (the joined table, Series of rho, p, n); draws on ``ax``.
    """
    needed = {"encoder", "strategy", "skill", score}
    if not needed <= set(runs.columns):
        raise ValueError(f"runs needs columns {sorted(needed)}, got {sorted(runs.columns)}.")
    probes = summary[summary.control == "none"][["encoder", "representation", "skill", "accuracy"]]
    runs = runs.assign(representation=[str(parse_strategy(s)) for s in runs.strategy])
    scores = runs.groupby(["encoder", "representation", "skill"], as_index=False)[score].mean()
    joined = scores.rename(columns={score: "score"}).merge(probes, on=["encoder", "representation", "skill"])
    if len(joined) < 3:
        raise ValueError(
            f"Only {len(joined)} (encoder, strategy, skill) points are in both tables; probe the runs' "
            "encoders and strategies (same skill names) first."
        )
    result = scipy.stats.spearmanr(joined.accuracy, joined.score)
    stats = pd.Series({"rho": result.statistic, "p": result.pvalue, "n": len(joined)})
    if ax is not None:
        sns.scatterplot(data=joined, x="accuracy", y="score", hue="skill", style="encoder", ax=ax)
        ax.set_xlabel("probe accuracy (held-out, exact)")
        ax.set_ylabel(f"diffusion score ({score})")
        ax.set_title(f"Spearman rho = {stats.rho:.2f} (p = {stats.p:.3f}, n = {len(joined)})")
    return joined, stats
