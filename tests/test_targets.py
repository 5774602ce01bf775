"""figures/targets.*: each target's mean over per-prompt draws, its range, and whether it is met."""

from __future__ import annotations

import pandas as pd
import pytest

from t2istudy.reports.targets import markdown_table, plot_targets, shared_suffix, target_table


def results_rows(run: str, rule: str, tier: str, group: str, means: list[float]) -> list[dict]:
    return [
        {"run": run, "rule": rule, "sample_seed": k, "tier": tier, "group": group, "mean": m}
        for k, m in enumerate(means)
    ]


def ladder_rows(run: str) -> list[dict]:
    base = {"ladder": run, "threads": 1, "load_average": 2.0, "sample_seconds": 120.0}
    return [
        {**base, "steps": 1000, "machine_minutes": 5.0},
        {**base, "steps": 3000, "machine_minutes": 21.0},  # the final rung is the one reported
    ]


def test_target_table_by_hand():
    results = pd.DataFrame(
        results_rows("a", "per_prompt", "geneval", "overall", [0.4, 0.5, 0.6])
        + results_rows("a", "per_prompt", "geneval", "single_object", [0.9, 0.96, 0.99])
        + results_rows("a", "per_prompt", "heldout", "overall", [0.21])
        + results_rows("a", "shared", "geneval", "overall", [0.0, 0.0, 0.0])  # another rule: ignored
    )
    table = target_table(results, pd.DataFrame(ladder_rows("a")))
    row = table.iloc[0]
    assert (row["steps"], row["train_minutes"], row["sample_minutes"]) == (3000, 21.0, 2.0)
    assert row["geneval_style"] == pytest.approx(0.5) and row["geneval_style_met"]  # 0.50 meets >= 0.50
    assert (row["geneval_style_low"], row["geneval_style_high"], row["geneval_style_draws"]) == (0.4, 0.6, 3)
    assert row["single_object"] == pytest.approx(0.95) and row["single_object_met"]
    assert row["held_out"] == pytest.approx(0.21) and row["held_out_met"]
    md = markdown_table(table)
    assert "| a | 3000 | 21.0 (0.42, 2.0) | 0.500 (0.400-0.600) | 0.950 (0.900-0.990) | 0.210 |" in md
    assert md.rstrip().endswith("GenEval-style, single object, held-out |")


def test_target_not_met_and_missing_run_named():
    results = pd.DataFrame(results_rows("a", "per_prompt", "geneval", "overall", [0.49]))
    row = target_table(results, pd.DataFrame(ladder_rows("a"))).iloc[0]
    assert not row["geneval_style_met"] and row["held_out_draws"] == 0 and not row["held_out_met"]
    results = pd.DataFrame(results_rows("b", "per_prompt", "geneval", "overall", [0.3]))
    with pytest.raises(ValueError, match=r"not in the ladder table: b\..*--plot-only"):
        target_table(results, pd.DataFrame(ladder_rows("a")))


def test_failure_breakdown_pools_draws_by_hand(tmp_path):
    """Two draws of two single-object prompts: pass, empty, too many, pass -> shares 0.5 / 0.25 / 0.25."""
    from t2istudy.reports.targets import failure_breakdown, failure_markdown
    from t2istudy.world.shapes_geneval import make_geneval_tier

    tier = make_geneval_tier(50, 0)
    single = tier[tier["task"] == "single_object"].head(2)
    (a, b) = single["prompt"].tolist()
    noun = {p: p.split()[-1] for p in (a, b)}  # "a photo of a circle" -> circle
    draws = {
        0: [(1.0, f"red {noun[a]}"), (0.0, "")],
        1: [(0.0, f"red {noun[a]}, blue {noun[a]}"), (1.0, f"blue {noun[b]}")],
    }
    for seed, rows in draws.items():
        pd.DataFrame(
            {
                "id": single["id"],
                "prompt": single["prompt"],
                "task": "single_object",
                "score": [s for s, _ in rows],
                "detected": [d for _, d in rows],
            }
        ).to_csv(tmp_path / f"run-x__per_prompt__s{seed}__geneval.csv", index=False)
    row = failure_breakdown(tmp_path).set_index("task").loc["single_object"]
    assert (row["images"], row["draws"]) == (4, 2)
    assert (row["pass"], row["empty"], row["too many"], row["wrong shapes"]) == (0.5, 0.25, 0.25, 0.0)
    md = failure_markdown(failure_breakdown(tmp_path), suffix="-x")
    assert "| run | single_object | 4 (2) | 0.50 | 0.25 | 0.25 |" in md  # zero-only reasons left out
    with pytest.raises(FileNotFoundError, match="sample_noise.py --rules per_prompt"):
        failure_breakdown(tmp_path / "none")


def test_plot_targets_writes_the_table_it_draws(tmp_path):
    results = pd.DataFrame(
        results_rows("a-x", "per_prompt", "geneval", "overall", [0.4, 0.5])
        + results_rows("b-x", "per_prompt", "heldout", "overall", [0.1])
    )
    ladder = pd.DataFrame(ladder_rows("a-x") + [{**r, "ladder": "b-x"} for r in ladder_rows("a-x")])
    table = target_table(results, ladder)
    paths = plot_targets(table, ["a-x"], tmp_path, suffix="-x")
    assert sorted(p.name for p in paths) == ["targets.csv", "targets.pdf", "targets.png"]
    written = pd.read_csv(tmp_path / "targets.csv")
    assert written["run"].tolist() == ["a-x", "b-x"] and written["geneval_style"].tolist()[0] == 0.45


def test_shared_suffix_cuts_at_a_name_boundary():
    runs = ["cpu-latent-v-4000steps-gemma3-s0", "cpu-latent-v-6000steps-gemma3-s0"]
    assert shared_suffix(runs) == "000steps-gemma3-s0"  # the raw common end cuts "4000" mid-number
    assert shared_suffix(runs, boundary="-") == "-gemma3-s0"
    assert shared_suffix(runs[:1]) == "" and shared_suffix(["ab", "xy"], boundary="-") == ""
