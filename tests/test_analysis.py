"""Analysis on a fixture of fake finished runs (tests/fixtures/runs, see make_fixture.py for the design):
hand-computed table values, claim verdicts, and both analysis notebooks executing end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from t2istudy.analysis import stats, tables
from t2istudy.scoring.bootstrap import mean_ci_over_seeds_and_prompts
from t2istudy.study import run_results, runner

FIXTURE = Path(__file__).parent / "fixtures" / "runs"
NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


@pytest.fixture(scope="module")
def loaded():
    metrics = run_results.load_metrics(FIXTURE, "fixture")
    scores = run_results.load_scores(FIXTURE, "fixture")
    return (
        metrics,
        scores,
        stats.encoder_info(metrics),
        stats.arm_table(metrics, scores, stats.Options(n_boot=300)),
    )


def test_fixture_loads_with_known_counts(loaded):
    metrics, scores, info, _ = loaded
    assert metrics.run_id.nunique() == 24 and len(scores) == 24 * 16
    assert info.set_index("encoder")["kind"].to_dict() == {
        "gemma3-270m": "decoder",
        "minilm-l6": "bidirectional",
        "smollm2-135m": "decoder",
    }
    assert info.set_index("encoder").loc["gemma3-270m", "params"] == pytest.approx(268.1e6)


def test_bootstrap_and_arm_difference_hand_values():
    constant = np.full((3, 10), 0.4)
    assert mean_ci_over_seeds_and_prompts(constant) == pytest.approx((0.4, 0.4, 0.4))
    a = pd.DataFrame(
        {"seed": [0, 0, 1, 1], "id": ["p", "q"] * 2, "score": [1.0, 1.0, 1.0, 0.0], "skills": "x"}
    )
    b = a.assign(score=[0.0, 1.0, 0.0, 0.0])
    diff = stats.arm_difference(a, b)
    assert diff["diff"] == pytest.approx(0.5) and (diff["n_seeds"], diff["n_prompts"]) == (2, 2)
    assert 0.0 <= diff["ci_low"] <= 0.5 <= diff["ci_high"] <= 1.0
    assert stats.verdict({"diff": 0.1, "ci_low": 0.01, "ci_high": 0.2}) == "held"
    assert stats.verdict({"diff": -0.1, "ci_low": -0.2, "ci_high": -0.01}) == "failed"
    assert stats.verdict({"diff": 0.1, "ci_low": -0.01, "ci_high": 0.2}) == "inconclusive"
    assert stats.verdict({"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan}) == "not run"
    one_seed = {"diff": 0.1, "ci_low": 0.01, "ci_high": 0.2, "n_seeds": 1}
    assert stats.verdict(one_seed, min_seeds=3) == "held (preliminary: 1 seed)"
    assert stats.verdict({**one_seed, "n_seeds": 3}, min_seeds=3) == "held"
    level_two_seeds = {"diff": 0.1, "ci_low": -0.01, "ci_high": 0.2, "n_seeds": 2}
    assert stats.verdict(level_two_seeds, min_seeds=3) == "inconclusive (preliminary: 2 seeds)"


def test_tables_match_hand_computed_means(loaded):
    _, _, _, arms = loaded
    t1 = tables.table1(arms).set_index("encoder")
    # k = (8, 10) of 16 prompts -> 18/32; basic skills are the first 6 prompts -> all 1
    assert t1.loc["gemma3-270m", "overall"] == pytest.approx(0.562, abs=1e-3)
    assert t1.loc["gemma3-270m", "basic"] == 1.0 and t1.loc["smollm2-135m", "counting"] == 0.5
    assert t1.loc["Mistral-7B", "source"] == tables.PAPER and t1.loc["Mistral-7B", "overall"] == 0.675
    assert t1.loc["T5-XXL", "overall"] == 0.741 and "bge-Gemma2" not in t1.index  # no last-layer number
    t2 = tables.table2(arms).set_index("encoder")
    assert t2.loc["gemma3-270m", "norm_mean"].startswith("0.812 [")
    assert t2.loc["gemma3-270m", "layer:k"].endswith("(layer:9)") and t2.loc["minilm-l6", "layer:k"].endswith(
        "(layer:3)"
    )
    assert t2.loc["bge-Gemma2", "norm_mean"] == "0.789" and t2.loc["bge-Gemma2", "source"] == tables.PAPER


def test_claims_verdicts(loaded):
    _, scores, info, _ = loaded
    claims = stats.claims(scores, info, stats.Options(n_boot=500, min_seeds=2)).set_index(["a", "b"])
    held = claims.loc[("gemma3-270m norm_mean", "gemma3-270m last")]
    assert held["diff"] == pytest.approx(0.25) and held["verdict"] == "held"
    same = claims.loc[("smollm2-135m norm_mean", "smollm2-135m last")]
    assert (same["diff"], same["ci_low"], same["ci_high"], same["verdict"]) == (0.0, 0.0, 0.0, "inconclusive")
    assert claims.loc[("gemma3-270m norm_mean", "minilm-l6 last"), "diff"] == pytest.approx(0.8125 - 0.5)
    assert len(claims) == 2 + 3 + 2  # claim 1 per LLM, claim 2 per encoder, claim 3 per LLM x bidirectional
    gains = stats.skill_gains(scores, info, stats.Options(n_boot=200)).set_index(["encoder", "skill"])
    assert gains.loc[("gemma3-270m", "differentiation"), "diff"] == 1.0  # prompts 9-10 flip in both seeds
    assert gains.loc[("gemma3-270m", "scene"), "n_prompts"] == 3  # one attribute prompt also tags scene


def test_write_table_formats(tmp_path, loaded):
    paths = tables.write_table(tables.table1(loaded[3]), tmp_path, "t1", "Table 1")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    assert "| Mistral-7B" in paths[1].read_text() and "nan" not in paths[1].read_text()
    gemma = next(line for line in paths[1].read_text().splitlines() if line.startswith("| gemma3-270m"))
    assert gemma.split("|")[3].strip() == "2"  # n_seeds prints as a count, not 2.000
    assert "\\begin{tabular}" in paths[2].read_text()
    assert pd.read_csv(paths[0]).shape == (5, 14)


@pytest.mark.slow
def test_analysis_notebooks_execute_on_the_fixture(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "runs")
    figures_dir = tmp_path / "figures"
    common = {"runs_dir": str(tmp_path / "runs"), "grid": "fixture", "figures_dir": str(figures_dir)}
    table_run = runner.execute_notebook(
        NOTEBOOKS / "analysis_tables.ipynb", tmp_path / "runs" / "analysis" / "tables", common
    )
    assert table_run.state == "done", table_run.error
    figs = runner.execute_notebook(
        NOTEBOOKS / "analysis_figures.ipynb",
        tmp_path / "runs" / "analysis" / "figures",
        {
            **common,
            "layer_norms_csv": str(tmp_path / "runs" / "layer_norms" / "default" / "layer_norms.csv"),
            "probe_dir": str(FIXTURE.parent / "probe"),
        },
    )
    assert figs.state == "done", figs.error
    expected = {
        f"{stem}.{ext}"
        for stem in ("table1_last_layer", "table2_strategies", "claims", "skill_gains", "prompt_following")
        for ext in ("csv", "md", "tex")
    }
    expected |= {
        f"{stem}.{ext}"
        for stem in ("skill_bars", "scaling", "claims_forest", "layer_norms", "probe_vs_diffusion")
        for ext in ("png", "pdf", "csv")
    }
    assert {p.name for p in figures_dir.iterdir()} == expected
    joined = pd.read_csv(
        figures_dir / "probe_vs_diffusion.csv"
    )  # both probe sweeps, merged: 2 x 2 x 8 points
    assert len(joined) == 32 and set(joined.encoder) == {"gemma3-270m", "minilm-l6"}
    assert (joined.accuracy - (0.2 + 0.6 * joined.score)).abs().max() < 1e-9
    claims = pd.read_csv(figures_dir / "claims.csv")
    assert (
        claims.loc[claims.a == "gemma3-270m norm_mean", "verdict"].tolist()
        == ["held (preliminary: 2 seeds)"] * 3
    )
    assert (tmp_path / "runs" / "analysis" / "tables" / "notebook.ipynb").exists()
    frac = runner.execute_notebook(
        NOTEBOOKS / "analysis_tables.ipynb",
        tmp_path / "runs" / "analysis" / "tables-fraction",
        {**common, "figures_dir": str(tmp_path / "fraction"), "metric": "fraction"},
    )
    assert frac.state == "done", frac.error
    by_metric = pd.read_csv(
        tmp_path / "fraction" / "claims.csv"
    )  # fraction = 0.5 + 0.5 x score: half the gap
    held = by_metric[(by_metric.a == "gemma3-270m norm_mean") & (by_metric.b == "gemma3-270m last")]
    assert held["diff"].tolist() == pytest.approx([0.125]) and held["verdict"].tolist() == [
        "held (preliminary: 2 seeds)"
    ]
    above = runner.execute_notebook(
        NOTEBOOKS / "analysis_tables.ipynb",
        tmp_path / "runs" / "analysis" / "tables-above_floor",
        {**common, "figures_dir": str(tmp_path / "above_floor"), "metric": "above_floor"},
    )
    assert above.state == "done", above.error  # fraction - floor 0.5 = 0.5 x score: the same gap as fraction
    gap = pd.read_csv(tmp_path / "above_floor" / "claims.csv").set_index(["a", "b"])["diff"]
    assert gap[("gemma3-270m norm_mean", "gemma3-270m last")] == pytest.approx(0.125)
    with pytest.raises(ValueError, match="not declared"):
        runner.execute_notebook(
            NOTEBOOKS / "analysis_tables.ipynb", tmp_path / "x" / "y", {"grids": "fixture"}
        )


def test_prompt_following_is_the_score_above_the_shuffled_prompt_floor(tmp_path):
    opts = stats.Options(n_boot=200)
    frac = stats.prompt_following(run_results.load_scores(FIXTURE, "fixture", metric="fraction"), opts)
    row = frac.set_index(["encoder", "strategy", "skill"]).loc[("gemma3-270m", "last", "overall")]
    # fraction = 0.5 + 0.5 x score, floor 0.5: above the floor = 0.5 x (8 + 10) / 32
    assert (row["score"], row["floor"], row["above_floor"]) == pytest.approx((0.78125, 0.5, 0.28125))
    assert row["ci_low"] <= row["above_floor"] <= row["ci_high"] and row["n_seeds"] == 2
    verdicts = stats.prompt_following(run_results.load_scores(FIXTURE, "fixture"), opts)  # score floor 0
    assert (verdicts["score"] == verdicts["above_floor"]).all() and (verdicts["floor"] == 0).all()
    shutil.copytree(FIXTURE, tmp_path / "runs")
    one = tmp_path / "runs" / "fixture" / "gemma3-270m__last__seed0" / "scores.csv"
    pd.read_csv(one).drop(columns=["score_shuffled", "fraction_shuffled"]).to_csv(one, index=False)
    # one run scored without the control: its seed drops out of the table, the other seed remains
    older = stats.prompt_following(run_results.load_scores(tmp_path / "runs", "fixture"), opts)
    last = older.set_index(["encoder", "strategy", "skill"]).loc[("gemma3-270m", "last", "overall")]
    assert last["n_seeds"] == 1 and last["score"] == pytest.approx(10 / 16)  # only seed 1 counts
    with pytest.raises(ValueError, match="grid rescore"):  # the secondary metric needs the control
        run_results.load_scores(tmp_path / "runs", "fixture", metric="above_floor")


def test_probe_summaries_merge_across_sweeps_and_refuse_duplicates(tmp_path):
    from t2istudy.probe import report as probe_report

    sweeps = FIXTURE.parent / "probe"
    merged = probe_report.load_summaries(sweeps)
    assert len(merged) == 32 and merged.groupby("encoder").size().to_dict() == {
        "gemma3-270m": 16,
        "minilm-l6": 16,
    }
    shutil.copytree(sweeps, tmp_path / "probe")
    shutil.copytree(tmp_path / "probe" / "minilm-l6", tmp_path / "probe" / "again")
    with pytest.raises(ValueError, match="several files"):
        probe_report.load_summaries(tmp_path / "probe")
    with pytest.raises(FileNotFoundError, match="notebooks/probe.ipynb"):
        probe_report.load_summaries(tmp_path / "empty")


def test_fraction_metric_recomputes_stats_from_the_scores(tmp_path):
    score = run_results.load_metrics(FIXTURE, "fixture").set_index(["run_id", "skill"])["mean"]
    frac = run_results.load_metrics(FIXTURE, "fixture", metric="fraction").set_index(["run_id", "skill"])[
        "mean"
    ]
    assert frac.loc[("gemma3-270m__last__seed0", "overall")] == pytest.approx(0.5 + 0.5 * 8 / 16)
    assert (frac - (0.5 + 0.5 * score)).abs().max() < 1e-12
    scores = run_results.load_scores(FIXTURE, "fixture", metric="fraction")
    assert {"verdict", "fraction"} <= set(scores.columns) and (scores.score == scores.fraction).all()
    with pytest.raises(ValueError, match="Unknown metric"):
        run_results.load_metrics(FIXTURE, "fixture", metric="vqa")
    shutil.copytree(FIXTURE / "fixture", tmp_path / "fixture")
    one = tmp_path / "fixture" / "minilm-l6__last__seed0" / "scores.csv"
    pd.read_csv(one).drop(columns="fraction").to_csv(one, index=False)  # a VQAScore run has no partial credit
    with pytest.raises(ValueError, match="no 'fraction' column"):
        run_results.load_scores(tmp_path, "fixture", metric="fraction")


def test_paired_effect_reads_only_the_seeds_and_prompts_both_sides_have():
    """Upsampled vs as-written prompts on the same models: by hand, treated is 1 on seed 0 and 0 on seed
    1; control is 1 on the counting prompts and 0 on the colour ones, on seeds 0-2 (seed 2 is unpaired)."""

    def scores(values):
        return pd.DataFrame(
            [
                {"seed": seed, "id": f"p{i}", "skills": "counting" if i < 2 else "color", "score": value}
                for seed, row in values.items()
                for i, value in enumerate(row)
            ]
        )

    treated = scores({0: [1, 1, 1, 1], 1: [0, 0, 0, 0]})
    control = scores({0: [1, 1, 0, 0], 1: [1, 1, 0, 0], 2: [1, 1, 1, 1]})
    table = stats.paired_effect(treated, control, stats.Options(n_boot=200)).set_index("skill")
    assert list(table.index) == ["overall", "counting", "color"]  # GenEval task names first
    assert table.loc["overall", ["treated", "control", "diff"]].tolist() == [0.5, 0.5, 0.0]
    assert table.loc["counting", "diff"] == -0.5 and table.loc["color", "diff"] == 0.5
    assert table.loc["overall", "n_seeds"] == 2 and table.loc["overall", "n_prompts"] == 4
    assert table.loc["overall", "verdict"] == "inconclusive (preliminary: 2 seeds)"
