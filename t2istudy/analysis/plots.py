"""Figures of the analysis notebooks; each returns (figure, the table it draws), which
``figure_files.save_figure`` writes as PNG + PDF with its numbers as CSV beside it."""

from __future__ import annotations

import matplotlib.pyplot as plt  # the backend is matplotlib's choice: inline in Jupyter, Agg headless
import numpy as np
import pandas as pd
import seaborn as sns

from t2istudy.analysis.stats import GROUPS, skill_order, tier_of
from t2istudy.analysis.tables import OURS
from t2istudy.scoring.failure_modes import FAILURES
from t2istudy.study import run_results
from t2istudy.text.plots_layers import plot_layer_norms
from t2istudy.text.registry import encoder_family
from t2istudy.world.shapes_geneval import EXTRA_TASKS, TASKS


def skill_bars(metrics: pd.DataFrame) -> tuple[plt.Figure, pd.DataFrame]:
    """Per-skill bar chart: one panel per encoder, bars per strategy, error bars = SD over seeds.
    On the GenEval-style tier the bars are its tasks and overall is each run's mean of task means."""
    unit = "task" if tier_of(metrics) == "geneval" else "skill"
    data = metrics[~metrics["skill"].isin(GROUPS[1:])][["encoder", "strategy", "seed", "skill", "mean"]]
    order = skill_order(data["skill"])
    grid = sns.catplot(
        data=data,
        x="skill",
        y="mean",
        hue="strategy",
        col="encoder",
        kind="bar",
        order=order,
        errorbar="sd",
        col_wrap=min(2, data["encoder"].nunique()),
        height=3.2,
        aspect=1.8,
    )
    grid.set_axis_labels("", f"score ({OURS})")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=45)
        ax.set_ylim(0, 1)
    grid.figure.suptitle(
        f"Per-{unit} scores, {tier_of(metrics)} tier (bars: mean over seeds; whiskers: SD over seeds)", y=1.02
    )
    return grid.figure, data


def failure_plot(shares: pd.DataFrame) -> tuple[plt.Figure, pd.DataFrame]:
    """GenEval-style images by how they failed (``scoring.failure_modes``): one panel per task, one stacked
    bar per arm, pooled over seeds. The ``pass`` segment is the task's verdict; the rest says which lever
    the failures call for (nothing drawn, the wrong number of objects, the wrong shapes, colour leakage)."""
    data = shares.assign(arm=shares["encoder"] + " " + shares["strategy"])
    tasks = [task for task in (*TASKS, *EXTRA_TASKS) if task in set(data["task"])]
    fig, axes = plt.subplots(
        len(tasks), 1, figsize=(9, 1.2 + max(1.0, 0.32 * data["arm"].nunique()) * len(tasks)), sharex=True
    )
    axes = np.atleast_1d(axes)
    colours = dict(zip(FAILURES, sns.color_palette("tab10", len(FAILURES)), strict=True))
    for ax, task in zip(axes, tasks, strict=True):
        wide = data[data["task"] == task].pivot(index="arm", columns="failure", values="share")
        wide = wide[[f for f in FAILURES if f in wide.columns]].sort_index(ascending=False)
        left = np.zeros(len(wide))
        for reason in wide.columns:
            ax.barh(wide.index, wide[reason], left=left, color=colours[reason], label=reason)
            left += wide[reason].to_numpy()
        ax.set_title(task, loc="left", fontsize=10)
        ax.set_xlim(0, 1)
    axes[-1].set_xlabel("share of images (pooled over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=5, bbox_to_anchor=(0.5, 1.0), fontsize=8)
    fig.suptitle("How GenEval-style prompts fail, by task and arm (first reason per image)", y=1.03)
    fig.tight_layout()
    return fig, data


def scaling_plot(
    arms: pd.DataFrame, info: pd.DataFrame, tier: str = "heldout"
) -> tuple[plt.Figure, pd.DataFrame]:
    """Overall score vs encoder parameters (log x), CI error bars; ``tier`` names the benchmark tier in the
    title (``arms`` keeps no tier column). The paper's question 4 is about decoder sizes, so decoders of one
    strategy are joined by a line and a bidirectional encoder is an open marker beside them; the strategies
    are nudged apart on x so that their error bars do not hide one another."""
    data = arms[arms["skill"] == "overall"].merge(info, on="encoder").sort_values("params")
    layer_k = data["strategy"].str.fullmatch(r"layer:\d+")
    if layer_k.any() and data[layer_k].groupby("encoder").size().max() == 1:  # one middle layer per encoder
        data.loc[layer_k, "strategy"] = "layer:k"
    strategies = list(dict.fromkeys(data["strategy"]))
    nudge = {s: 10 ** (0.025 * (i - (len(strategies) - 1) / 2)) for i, s in enumerate(strategies)}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, strategy in enumerate(strategies):
        group = data[data["strategy"] == strategy]
        x = group["params"] * nudge[strategy]
        err = np.nan_to_num(
            np.vstack([group["mean"] - group["ci_low"], group["ci_high"] - group["mean"]]).clip(min=0)
        )
        decoder = (group["kind"] != "bidirectional").to_numpy()
        color = f"C{i}"
        ax.errorbar(
            x[decoder], group["mean"][decoder], yerr=err[:, decoder], marker="o", capsize=3, color=color,
            label=strategy,
        )  # fmt: skip
        if (~decoder).any():
            ax.errorbar(
                x[~decoder], group["mean"][~decoder], yerr=err[:, ~decoder], marker="o", mfc="white",
                capsize=3, color=color, ls="none", label=None if decoder.any() else strategy,
            )  # fmt: skip
    sizes = data.drop_duplicates("encoder")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xticks(
        sizes["params"],
        [f"{r.encoder}\n{r.params / 1e6:.0f}M" + ("\n(bidirectional)" if r.kind == "bidirectional" else "")
         for r in sizes.itertuples()],
        fontsize=7,
    )  # fmt: skip
    ax.set_xlim(sizes["params"].min() / 1.6, sizes["params"].max() * 1.6)
    ax.set_xlabel("encoder parameters (log scale)")
    ax.set_ylabel(f"overall score\n{OURS}")
    top = float(np.nanmax(data[["ci_high", "mean"]].to_numpy())) if len(data) else 1.0
    ax.set_ylim(0, min(1.0, max(0.25, 1.25 * top)))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="strategy", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Scaling: score vs encoder size, {tier} tier\n(CI over prompts and seeds)", fontsize=10)
    families = data["encoder"].map(encoder_family).unique()
    if len(families) == 1 and data["encoder"].nunique() > 1:  # one family: size alone differs
        ax.text(0.0, -0.3, f"One family ({families[0]}): the sizes share tokenizer, data and recipe.",
                transform=ax.transAxes, fontsize=7, va="top")  # fmt: skip
    elif data["encoder"].nunique() > 1:  # the paper's question 4 asks about size; these sizes are families
        ax.text(
            0.0,
            -0.3,
            "Confounded: each size is another model family (tokenizer, data, training recipe), "
            "so size and family cannot be told apart here. Open markers: a bidirectional encoder, not a "
            "decoder LLM.",
            transform=ax.transAxes,
            fontsize=7,
            va="top",
            wrap=True,
        )
    return fig, data


def family_scaling_plot(table: pd.DataFrame, tier: str = "heldout") -> tuple[plt.Figure, pd.DataFrame]:
    """Within one family, larger - smaller per skill (or task; `stats.family_scaling`): a bar per strategy
    with its raw 95% CI and a star where the call holds on Holm's correction; one panel per pair of sizes."""
    size_pairs = list(dict.fromkeys(zip(table["smaller"], table["larger"], strict=True)))
    fig, axes = plt.subplots(len(size_pairs), 1, figsize=(8, 3.4 * len(size_pairs)), squeeze=False)
    for ax, (smaller, larger) in zip(axes[:, 0], size_pairs, strict=True):
        data = table[(table["smaller"] == smaller) & (table["larger"] == larger)]
        skills, strategies = skill_order(data["skill"]), list(dict.fromkeys(data["strategy"]))
        width = 0.8 / len(strategies)
        for i, strategy in enumerate(strategies):
            d = data[data["strategy"] == strategy].set_index("skill").reindex(skills)
            x = np.arange(len(skills)) + (i - (len(strategies) - 1) / 2) * width
            err = np.nan_to_num(np.vstack([d["diff"] - d["ci_low"], d["ci_high"] - d["diff"]]).clip(min=0))
            ax.bar(x, d["diff"], width, yerr=err, capsize=2, color=f"C{i}", label=strategy)
            for xi, row in zip(x, d.itertuples(), strict=True):
                if str(row.verdict).startswith("held"):
                    ax.annotate("*", (xi, row.ci_high), ha="center", va="bottom")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(skills)), skills, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{larger}\nminus {smaller}", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(title="strategy", fontsize=8)
    axes[0, 0].set_title(
        f"Within one family: larger - smaller per skill, {tier} tier\n"
        "(paired by seed and prompt; raw 95% CI; * held on Holm's correction)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig, table


def claims_plot(
    table: pd.DataFrame, metric: str = "score", tier: str = "heldout"
) -> tuple[plt.Figure, pd.DataFrame]:
    """Forest plot of the paired differences behind each claim; ``tier`` names the tier in the axis label."""
    data = table.dropna(subset=["diff"]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(data), 2) + 1))
    y = np.arange(len(data))[::-1]
    outcome = data["verdict"].str.split(" ").str[0]  # "held (preliminary: 1 seed)" stays green, open marker
    colors = outcome.map({"held": "tab:green", "failed": "tab:red"}).fillna("tab:gray")
    preliminary = data["verdict"].str.contains("preliminary").to_numpy()
    ax.hlines(y, data["ci_low"], data["ci_high"], color=colors)
    ax.scatter(data["diff"][~preliminary], y[~preliminary], color=colors[~preliminary], zorder=3)
    ax.scatter(
        data["diff"][preliminary],
        y[preliminary],
        facecolors="white",
        edgecolors=colors[preliminary],
        zorder=3,
        label="preliminary (< 3 seeds)",
    )
    if preliminary.any():
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    design = data["design"] if "design" in data.columns else pd.Series("declared", index=data.index)
    labels = [
        f"{a} - {b}" + ("" if d == "declared" else f" ({d}: all {int(n)} seeds)")
        for a, b, d, n in zip(data["a"], data["b"], design, data["n_seeds"], strict=True)
    ]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(f"paired difference in {metric}, {tier} tier (95% CI over prompts and seeds)")
    ax.set_title(
        "The paper's claims at this scale (green: held, red: failed, grey: inconclusive or exploratory;\n"
        "verdicts on Holm-adjusted p over the table's family, bars: raw 95% CI)",
        fontsize=9,
    )
    return fig, data


def recipe_plot(table: pd.DataFrame, metric: str = "score") -> tuple[plt.Figure, pd.DataFrame]:
    """The recipe comparison (:func:`recipe_comparison`): one panel per tier, one row per recipe (best on
    average first), a point with its CI per encoder; the projection's parameter count beside each point,
    and an open diamond at the baseline's score on the seeds the recipe's difference pairs it on."""
    tiers = [t for t in run_results.TIERS if t in set(table["tier"])]
    order = table.groupby("recipe")["score"].mean().sort_values(ascending=False).index.tolist()
    encoders = list(dict.fromkeys(table["encoder"]))
    same_seeds = [c for c in table.columns if str(c).endswith("_same_seeds")]
    fig, axes = plt.subplots(
        1, len(tiers), figsize=(5.5 * len(tiers), 0.45 * len(order) + 1.6), sharey=True, squeeze=False
    )
    for ax, tier in zip(axes[0], tiers, strict=True):
        at_tier = table[table["tier"] == tier]
        for k, enc in enumerate(encoders):
            rows = at_tier[at_tier["encoder"] == enc].set_index("recipe").reindex(order)
            y = np.arange(len(order))[::-1] + (k - (len(encoders) - 1) / 2) * 0.22
            err = np.vstack([rows["score"] - rows["ci_low"], rows["ci_high"] - rows["score"]]).clip(min=0)
            bars = ax.errorbar(rows["score"], y, xerr=np.nan_to_num(err), fmt="o", capsize=2, label=enc)
            for column in same_seeds:  # where the paired difference is taken from, when it is not the mean
                ax.scatter(
                    rows[column],
                    y,
                    marker="D",
                    s=22,
                    facecolors="none",
                    edgecolors=bars[0].get_color(),
                    zorder=3,
                )
            right = rows[["ci_high", *same_seeds]].max(axis=1)  # the label clears the CI and the diamond
            for yy, x, width in zip(y, right, rows["projection_params"], strict=True):
                if pd.notna(width) and pd.notna(x):
                    ax.annotate(
                        f"{int(width) / 1e6:.2g}M",
                        (x, yy),
                        xytext=(3, 0),
                        textcoords="offset points",
                        fontsize=6,
                        va="center",
                        color="gray",
                    )
        ax.set_title(f"{tier} tier", fontsize=9)
        ax.set_xlabel(f"overall {metric} (95% CI over prompts and seeds)")
        ax.set_xlim(0, 1)
    systems = table.drop_duplicates("recipe").set_index("recipe")["system"]
    axes[0][0].set_yticks(
        np.arange(len(order))[::-1], [f"{r} ({systems[r]})" if systems[r] else r for r in order], fontsize=8
    )
    axes[0][-1].legend(title="encoder", fontsize=8, loc="lower right")
    marks = (
        f"; open diamond: {same_seeds[0].removesuffix('_same_seeds')} on the recipe's seeds"
        if same_seeds
        else ""
    )
    fig.suptitle(f"Released recipes under one protocol (grey: projection parameters{marks})", fontsize=10)
    fig.tight_layout()
    return fig, table


def upsampling_effect_plot(effect: pd.DataFrame, metric: str = "score") -> tuple[plt.Figure, pd.DataFrame]:
    """Forest plot of :func:`upsampling_effect`: upsampled - as written, per tier and skill (task)."""
    rows = effect.assign(a=effect["tier"] + " " + effect["skill"] + ": upsampled", b="as written")
    fig, data = claims_plot(rows, metric)
    ax = fig.axes[0]
    ax.set_xlabel(f"paired difference in {metric} (95% CI over prompts and seeds)")
    rewriters = ", ".join(sorted(effect["rewriter"].astype(str).unique()))
    ax.set_title(f"Inference prompt upsampling ({rewriters}), same trained models", fontsize=9)
    return fig, data


def protocol_plot(
    effect: pd.DataFrame, grid: str, baseline_grid: str, metric: str = "score"
) -> tuple[plt.Figure, pd.DataFrame]:
    """Forest plot of :func:`~t2istudy.analysis.comparisons.protocol_effect`: each landed arm of ``grid``
    minus the same arm of ``baseline_grid``, per tier and call (overall; the binding mean)."""
    arm = effect["encoder"] + " " + effect["strategy"]
    rows = effect.assign(a=arm + ", " + effect["tier"] + " " + effect["skill"] + f": {grid}", b=baseline_grid)
    fig, data = claims_plot(rows, metric)
    ax = fig.axes[0]
    ax.set_xlabel(f"paired difference in {metric} (95% CI over prompts and seeds)")
    ax.set_title(f"{grid} against {baseline_grid}, arm by arm (verdicts on Holm over the family)", fontsize=9)
    return fig, data


def layer_norm_plot(stats: pd.DataFrame) -> tuple[plt.Figure, pd.DataFrame]:
    """The layer-norm figure of notebooks/layer_norms.ipynb, redrawn from its CSV (its plot function)."""
    needed = {"encoder", "layer", "depth", "norm", "tokens", "mean", "max"}
    if not needed <= set(stats.columns):
        raise ValueError(
            f"The layer-norm table lacks columns {sorted(needed - set(stats.columns))}: pass the "
            f"layer_norms.csv written by notebooks/layer_norms.ipynb (t2istudy layer-norms)."
        )
    return plot_layer_norms(stats), stats


def loss_curves(logs: pd.DataFrame, window: int = 10) -> tuple[plt.Figure, pd.DataFrame]:
    """Training loss against step, a panel per (encoder, strategy), a line per (grid, seed): the running
    median over ``window`` logged steps (one line every ``logging_steps``), so a divergence reads as a lasting
    step up, not as one noisy batch. ``logs``: ``comparisons.load_train_logs`` of one or more grids."""
    data = logs.sort_values(["grid", "run_id", "step"]).copy()
    data["loss_median"] = data.groupby(["grid", "run_id"])["loss"].transform(
        lambda s: s.rolling(window, min_periods=1).median()
    )
    data["line"] = data["grid"] + " seed " + data["seed"].astype(str)
    data["panel"] = data["encoder"] + " " + data["strategy"]
    grid = sns.relplot(
        data=data,
        x="step",
        y="loss_median",
        hue="line",
        col="panel",
        kind="line",
        col_wrap=min(3, data["panel"].nunique()),
        height=2.8,
        aspect=1.4,
        facet_kws={"sharey": True},
    )
    grid.set_axis_labels("training step", f"loss (running median of {window} logs)")
    grid.set_titles("{col_name}")
    columns = ["grid", "run_id", "encoder", "strategy", "seed", "step", "loss", "loss_median"]
    return grid.figure, data[columns + [c for c in ("grad_norm", "lr") if c in data]]
