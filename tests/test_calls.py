"""Families of calls: Holm's correction by hand, verdicts called on it, seeds beyond a grid's declared budget
marked exploratory, and each comparison's provenance (dirty tree, different commits) marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from t2istudy.analysis import calls, provenance, stats
from t2istudy.figure_files import check_writable
from t2istudy.scoring.bootstrap import (
    holm,
    mean_of_group_means_ci_over_seeds_and_prompts,
    mean_of_group_means_test_over_seeds_and_prompts,
    two_sided_p,
)
from t2istudy.study import grids, run_results

FIXTURE = Path(__file__).parent / "fixtures" / "runs"


def test_holm_on_hand_computed_p_values():
    # sorted: 0.005 x 4 = 0.020, 0.010 x 3 = 0.030, 0.030 x 2 = 0.060, 0.040 x 1 = 0.040 -> 0.060 (monotone)
    adjusted = holm([0.01, 0.04, 0.03, 0.005, np.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and np.isnan(adjusted[4])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    # the seven bootstrap p-values among 14 calls (7 others at 0.5): Holm keeps 5 of the 7
    family = [0.003, 0.002, 0.00005, 0.00005, 0.030, 0.030, 0.004] + [0.5] * 7
    assert int((holm(family)[:7] < 0.05).sum()) == 5


def test_bootstrap_p_comes_from_the_resamples_of_the_ci():
    assert two_sided_p(np.array([0.1, 0.2, -0.1, 0.3])) == pytest.approx(0.5)  # 2 x 1/4
    assert two_sided_p(np.zeros(10)) == 1.0 and two_sided_p(np.ones(10)) == 0.0
    rng = np.random.default_rng(3)
    groups = [rng.normal(0.02, 0.1, size=(3, 40)), rng.normal(0.02, 0.1, size=(3, 25))]
    mean, low, high, p = mean_of_group_means_test_over_seeds_and_prompts(groups, 500, 0)
    assert (mean, low, high) == mean_of_group_means_ci_over_seeds_and_prompts(groups, 500, 0)
    assert 0 < p <= 1 and (p < 0.05) == (low > 0 or high < 0)


def test_verdicts_are_called_on_the_adjusted_p_value():
    family = pd.DataFrame(
        {
            "diff": [0.05, 0.03, -0.04],
            "ci_low": [0.02, 0.001, -0.07],
            "ci_high": [0.08, 0.06, -0.01],
            "p": [0.001, 0.04, 0.004],
            "n_seeds": 3,
        }
    )
    called = calls.adjust(family, min_seeds=3)
    assert called["p_holm"].tolist() == pytest.approx([0.003, 0.04, 0.008])
    assert called["verdict"].tolist() == ["held", "held", "failed"]
    wider = calls.adjust(pd.concat([family, family.assign(p=0.5, ci_low=-0.01)], ignore_index=True), 3)
    assert wider.loc[1, "verdict"] == "inconclusive (held before Holm)"  # raw CI above 0, p_holm 0.24
    assert wider.loc[0, "verdict"] == "held" and wider.loc[2, "verdict"] == "failed"


def test_seed_budget_is_read_from_the_grid_file_and_checked(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nnotebook: notebooks/run.ipynb\nseed_budget: 3\naxes: {seed: [0, 1]}\n")
    assert grids.seed_budget(grid) == 3
    assert calls.seed_budgets(tmp_path, ["g", "other"]) == {"g": 3, "other": None}
    grid.write_text("name: g\nnotebook: notebooks/run.ipynb\nseed_budget: three\n")
    with pytest.raises(ValueError, match="seed_budget must be a positive whole number"):
        grids.seed_budget(grid)
    assert grids.seed_budget(Path(__file__).parents[1] / "grids" / "small2.yaml") == 3


def test_a_seed_beyond_the_budget_is_marked_exploratory_in_every_table():
    metrics = run_results.load_metrics(FIXTURE, "fixture")
    scores = run_results.load_scores(FIXTURE, "fixture")
    budgets = {"fixture": 1}  # the fixture runs seeds 0 and 1: seed 1 is beyond a budget of 1
    metrics, scores = calls.mark_exploratory(metrics, budgets), calls.mark_exploratory(scores, budgets)
    assert set(metrics.loc[metrics["exploratory"], "seed"]) == {1}
    assert set(metrics.loc[~metrics["exploratory"], "seed"]) == {0}
    opts = stats.Options(n_boot=200)
    arms = stats.arm_table(metrics, scores, opts)
    assert (arms["n_seeds"] == 1).all() and (arms["n_exploratory"] == 1).all()
    table = stats.claims_family({"heldout": scores}, stats.encoder_info(metrics), opts)
    exploratory = table[table["design"] == calls.EXPLORATORY]
    assert len(exploratory) == len(table) / 2 and (exploratory["n_seeds"] == 2).all()
    assert exploratory["verdict"].str.startswith("exploratory: ").all()
    assert exploratory["p_holm"].isna().all()  # no call: outside the family
    declared = table[table["design"] == calls.DECLARED]
    assert declared["p_holm"].notna().all() and (declared["n_seeds"] == 1).all()
    assert "seed 1" in calls.exploratory_note(metrics)


def test_provenance_marks_dirty_trees_and_different_commits():
    runs = pd.DataFrame(
        {
            "grid": "g",
            "run_id": ["a0", "a1", "b0", "b1"],
            "trained_commit": ["c1", "c1", "c1", "c2"],
            "trained_dirty": [False, False, False, True],
            "scored_commit": ["c3", "c1", "c1", "c2"],
            "scored_dirty": [True, False, False, True],
        }
    )
    table = pd.DataFrame({"diff": [0.1, 0.2, 0.3], "pairs": ["a0+b0;a1+b1", "a1+b0", "x+y"]})
    marked = provenance.mark(table, runs)
    assert marked["provenance"].tolist() == [
        "dirty tree: 2 of 4 runs; different commits: 1 of 2 pairs",
        "clean",
        "unrecorded",
    ]
    assert "pairs" not in marked.columns
    counts = provenance.summary(runs).iloc[0]
    assert (counts["runs"], counts["trained_dirty"], counts["scored_dirty"], counts["trained_commits"]) == (
        4,
        1,
        2,
        2,
    )
    assert provenance.caption(marked).startswith(
        " Provenance: 1 of 3 comparisons use runs trained or scored from a dirty tree, 1 of 3 pair runs"
    )


def test_an_unwritable_output_folder_fails_before_the_analysis(tmp_path):
    assert check_writable(tmp_path / "figures" / "geneval") == tmp_path / "figures" / "geneval"
    assert list((tmp_path / "figures" / "geneval").iterdir()) == []  # the probe file is gone
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # (root may write to a read-only folder; nobody into a file)
    with pytest.raises(
        PermissionError, match=r"The output folder .*file/figures is not writable.*figures_dir="
    ):
        check_writable(blocker / "figures")


def test_a_call_short_of_its_declared_seeds_counts_as_pending():
    """Gemma-3's claim 1 before `last`'s seed 1 lands: its raw CI and p stay, but Holm counts it at p = 1 (a
    call on one training run, where the grid declares two, must not lower the others' correction) and it
    reads "(preliminary: 1 of 2 seeds)"; with both seeds landed it is an ordinary call again."""
    metrics = run_results.load_metrics(FIXTURE, "fixture")
    scores = run_results.load_scores(FIXTURE, "fixture")
    grid_arms = dict.fromkeys(zip(metrics["encoder"], metrics["strategy"], strict=True), 2)
    opts = stats.Options(n_boot=200, n_boot_test=400, min_seeds=2)
    info = stats.encoder_info(metrics, grid_arms)
    last_seed1 = (scores["encoder"] == "gemma3-270m") & (scores["strategy"] == "last") & (scores["seed"] == 1)
    short = stats.claims_family({"heldout": scores[~last_seed1]}, info, opts, arms=grid_arms)
    full = stats.claims_family({"heldout": scores}, info, opts, arms=grid_arms)
    is_call = lambda t: (t["a"] == "gemma3-270m norm_mean") & (t["b"] == "gemma3-270m last")  # noqa: E731
    owed = short[is_call(short)].iloc[0]
    assert (owed["n_seeds"], owed["seeds_declared"], owed["p_holm"]) == (1, 2, 1.0)
    assert owed["p"] < 1 and owed["verdict"].endswith("(preliminary: 1 of 2 seeds)")
    rest = short[~is_call(short)]
    assert rest["p_holm"].tolist() == list(holm([*rest["p"], 1.0])[:-1])  # the owed call counted at p = 1
    called = full[is_call(full)].iloc[0]
    assert called["n_seeds"] == 2 and "preliminary" not in called["verdict"]
    assert called["p_holm"] == pytest.approx(holm(full["p"].to_numpy())[is_call(full).to_numpy()][0])


def test_a_partial_grid_counts_the_claims_its_declared_arms_still_owe():
    """Two landed arms of the fixture's 12: Holm still divides among all 7 claims of the complete grid."""
    metrics = run_results.load_metrics(FIXTURE, "fixture")
    scores = run_results.load_scores(FIXTURE, "fixture")
    grid_arms = set(zip(metrics["encoder"], metrics["strategy"], strict=True))  # what the fixture declares
    landed = lambda t: t[(t["encoder"] == "gemma3-270m") & t["strategy"].isin(["norm_mean", "last"])]  # noqa: E731
    opts = stats.Options(n_boot=200, n_boot_test=400)
    info = stats.encoder_info(landed(metrics), grid_arms)
    assert info["encoder"].tolist() == ["gemma3-270m", "minilm-l6", "smollm2-135m"]
    assert info.set_index("encoder").loc["minilm-l6", "kind"] == "bidirectional"  # the registry's facts
    table = stats.claims_family({"heldout": landed(scores)}, info, opts, arms=grid_arms)
    # claim 1 for 2 LLMs, claim 2 for 3 encoders, claim 3 for 2 LLMs x 1 bidirectional: 7 calls
    assert len(table) == 7 and (table["verdict"] == "not run").sum() == 6
    ran = table[table["verdict"] != "not run"].iloc[0]
    assert ran["a"] == "gemma3-270m norm_mean" and ran["b"] == "gemma3-270m last"
    assert ran["p_holm"] == pytest.approx(min(1.0, 7 * ran["p"]))  # smallest of 7, the others at p = 1
    assert "7 calls" in calls.family_note(table, "claims")
    # without declared arms only the landed encoder's calls exist: the correction a partial grid understated
    assert (
        len(stats.claims_family({"heldout": landed(scores)}, stats.encoder_info(landed(metrics)), opts)) == 2
    )
    gains = stats.skill_gains(landed(scores), info, opts, arms=grid_arms)
    assert set(gains["encoder"]) == {"gemma3-270m", "smollm2-135m"}
    assert (gains.loc[gains["encoder"] == "smollm2-135m", "p"] == 1.0).all()
