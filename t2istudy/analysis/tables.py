"""Tables for the analysis notebooks and RESULTS.md: Tables 1-2 beside the paper's numbers, provenance
notes for captions, and one writer for CSV (numbers), Markdown and LaTeX.

The paper's own numbers (``t2istudy/data/paper_results.csv``: VQAScore on GenAI-Bench with 7B-scale
encoders) sit beside ours with their source spelled out; they are not on the same scale as ours.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from t2istudy.analysis.stats import Options, skill_order

OURS = "ours (shapes world, pixel judge)"
PAPER = "paper (GenAI-Bench, VQAScore)"


def paper_results() -> pd.DataFrame:
    """The paper's reported VQAScore (GenAI-Bench overall): only the numbers it states."""
    path = resources.files("t2istudy") / "data" / "paper_results.csv"
    return pd.read_csv(str(path), comment="#")


def _fmt(mean: float, low: float, high: float) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.3f}" if pd.isna(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def table1(arms: pd.DataFrame, opts: Options = Options()) -> pd.DataFrame:
    """Table 1: last-layer embeddings across encoders, overall and per skill; the paper's rows labelled."""
    last = arms[arms["strategy"] == opts.baseline_strategy]
    cols = skill_order(last["skill"])
    wide = last.pivot_table(index="encoder", columns="skill", values="mean", sort=False)[cols].round(3)
    wide.insert(0, "source", OURS)
    wide.insert(1, "n_seeds", last[last.skill == "overall"].set_index("encoder")["n_seeds"].astype("Int64"))
    paper = paper_results()
    paper = paper[paper["strategy"] == "last"]
    extra = pd.DataFrame(
        {"source": PAPER, "n_seeds": np.nan, "overall": paper["vqascore_overall"].to_numpy()},
        index=pd.Index(paper["encoder"], name="encoder"),
    )
    return pd.concat([wide, extra]).reset_index()


def table2(arms: pd.DataFrame, skill: str = "overall") -> pd.DataFrame:
    """Table 2: the strategy ablation per encoder (mean [CI] over seeds and prompts); the paper's beside."""
    sub = arms[arms["skill"] == skill].copy()
    sub["cell"] = [
        _fmt(m, lo, hi) for m, lo, hi in zip(sub["mean"], sub["ci_low"], sub["ci_high"], strict=True)
    ]
    # "a middle layer" is a different k per encoder: one column when every encoder has one such arm
    layer_k = sub["strategy"].str.fullmatch(r"layer:\d+")
    if layer_k.any() and sub[layer_k].groupby("encoder").size().max() == 1:
        sub.loc[layer_k, "cell"] += " (" + sub.loc[layer_k, "strategy"] + ")"
        sub.loc[layer_k, "strategy"] = "layer:k"
    strategies = list(dict.fromkeys(sub["strategy"]))
    wide = sub.pivot_table(index="encoder", columns="strategy", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=strategies).fillna("")
    wide.insert(0, "source", OURS)
    paper = paper_results().pivot_table(
        index="encoder", columns="strategy", values="vqascore_overall", sort=False
    )
    paper = paper.reindex(columns=strategies).map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    paper.insert(0, "source", PAPER)
    return pd.concat([wide, paper]).reset_index()


def provenance_note(provenance: pd.DataFrame) -> str:
    """A sentence for a table's caption when the compared runs ran with different code, versions or
    devices (``run_results.load_provenance``); "" when they agree or none recorded it."""
    recorded = provenance.drop(columns="run_id").notna().any(axis=1)
    if not recorded.any():
        return ""
    parts = []
    for column in provenance.columns.drop("run_id"):
        values = sorted({str(v) for v in provenance.loc[recorded, column]})
        if len(values) > 1:
            parts.append(f"{column} ({', '.join(values)})")
    if not recorded.all():
        parts.append(f"{int((~recorded).sum())} of {len(provenance)} runs predate provenance records")
    return " Compared runs differ in: " + "; ".join(parts) + "." if parts else ""


def tier_dir(figures_dir: str | Path, tier: str) -> Path:
    """Where a tier's tables and figures go: ``figures_dir`` itself for the held-out tier (the names the
    study has always written), ``figures_dir/<tier>/`` for another, under the same file names, so that the
    tiers never overwrite each other."""
    return Path(figures_dir) if tier == "heldout" else Path(figures_dir) / tier


def write_table(table: pd.DataFrame, out_dir: str | Path, stem: str, caption: str = "") -> list[Path]:
    """The same table as CSV (numbers), Markdown (RESULTS.md, GitHub) and LaTeX (papers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.md", out_dir / f"{stem}.tex"]
    table.to_csv(paths[0], index=False)
    shown = table.copy()
    for col in shown.columns:  # counts stay counts (tabulate's floatfmt would print 3 as 3.000)
        values = pd.to_numeric(shown[col], errors="coerce").dropna()
        is_count = str(col) == "n" or str(col).startswith("n_")  # float once a paper row adds a NaN
        whole = pd.api.types.is_numeric_dtype(shown[col]) and bool((values == values.round()).all())
        if pd.api.types.is_integer_dtype(shown[col]) or (is_count and whole):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
    text = (
        shown.astype(object)
        .where(shown.notna(), None)
        .to_markdown(index=False, floatfmt=".3f", missingval="")
    )
    paths[1].write_text((f"{caption}\n\n" if caption else "") + text + "\n", encoding="utf-8")
    latex = table.to_latex(
        index=False, float_format="%.3f", na_rep="", caption=caption or None, label=f"tab:{stem}"
    )
    paths[2].write_text(latex, encoding="utf-8")
    return paths
