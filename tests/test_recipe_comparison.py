"""The released-recipes comparison (issue 18) over synthetic run folders with hand-computed numbers.

Design: gemma3-270m with three strategies x 2 seeds (both seeds alike), written by test_analysis_tiers'
``write_runs``. ``norm_mean`` is recipe:paper's expansion, so it is the baseline. GenEval-style tasks
passed: paper {single_object, two_object} -> 2/6; flux2 adds counting -> 3/6, diff +1/6 with a CI of
width 0 (each task's difference is constant over its prompts); lumina2 drops two_object -> 1/6, diff -1/6.
Held-out: paper passes 2 of 4 prompts, flux2 3, lumina2 1.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
from synthetic_runs import NOTEBOOKS, write_runs

from t2istudy.analysis import calls, comparisons, plots, stats
from t2istudy.study import runner

PASSED = {
    ("gemma3-270m", "norm_mean"): ({"single_object", "two_object"}, 2),
    ("gemma3-270m", "recipe:flux2"): ({"single_object", "two_object", "counting"}, 3),
    ("gemma3-270m", "recipe:lumina2"): ({"single_object"}, 1),
}
WIDTHS = {("gemma3-270m", "norm_mean"): 164_096, ("gemma3-270m", "recipe:flux2"): 491_776}  # lumina2: none


PROTOCOL = {"preset": "cpu-latent-v", "n_per_skill": 125}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipes") / "runs"
    extras = {arm: {"conditioner_parameters": n} for arm, n in WIDTHS.items()}
    return write_runs(root, "recipes", passed=PASSED, extras=extras, common=PROTOCOL)


def test_recipe_comparison_values(runs):
    table = comparisons.recipe_comparison(runs, "recipes", opts=stats.Options(n_boot=200))
    assert len(table) == 6 and list(dict.fromkeys(table["tier"])) == ["heldout", "geneval"]
    geneval = table[table["tier"] == "geneval"].set_index("recipe")
    assert list(geneval.index) == ["recipe:flux2", "recipe:paper", "recipe:lumina2"]  # best first
    assert geneval["score"].tolist() == pytest.approx([3 / 6, 2 / 6, 1 / 6])
    assert geneval.loc["recipe:flux2", ["diff_vs_paper", "diff_low", "diff_high"]].tolist() == pytest.approx(
        [1 / 6] * 3
    )
    assert geneval.loc["recipe:lumina2", "diff_vs_paper"] == pytest.approx(-1 / 6)
    assert geneval["verdict"].tolist() == [
        "held (preliminary: 2 seeds)",
        "baseline",
        "failed (preliminary: 2 seeds)",
    ]
    assert geneval.loc["recipe:flux2", "system"] == "FLUX.2"
    assert geneval["projection_params"].tolist()[:2] == [491_776, 164_096]
    assert pd.isna(geneval.loc["recipe:lumina2", "projection_params"])  # not recorded: shown empty
    assert (geneval["n_seeds"] == 2).all()
    held = table[table["tier"] == "heldout"].set_index("recipe")
    assert held["score"].tolist() == pytest.approx([0.75, 0.5, 0.25])
    assert held.loc["recipe:flux2", "diff_vs_paper"] == pytest.approx(0.25)
    assert pd.isna(held.loc["recipe:paper", "diff_vs_paper"])
    assert comparisons.recipe_comparison(runs, "no_such_grid").empty


def test_recipe_plot_has_a_panel_per_tier(runs):
    table = comparisons.recipe_comparison(runs, "recipes", opts=stats.Options(n_boot=50))
    fig, data = plots.recipe_plot(table)
    assert len(fig.axes) == 2 and len(data) == 6
    ax = fig.axes[0]
    ticks = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)}
    assert max(ticks, key=ticks.get) == "recipe:flux2 (FLUX.2)"  # best on average at the top
    assert min(ticks, key=ticks.get) == "recipe:lumina2 (Lumina-Image-2.0)"


@pytest.mark.slow
def test_recipes_notebook_writes_table_and_figure(runs, tmp_path):
    figures = tmp_path / "figures"
    probe = tmp_path / "probe" / "gemma3-270m"  # a recipe probe sweep as notebooks/probe.ipynb saves it
    probe.mkdir(parents=True)
    pd.DataFrame(
        {
            "encoder": "gemma3-270m",
            "control": "none",
            "representation": ["norm_mean", "concat[minmax]"],
            "skill": "counting",
            "accuracy": [0.5, 0.75],
            "seed_std": 0.0,
            "seeds": 1,
        }
    ).to_csv(probe / "probe_all.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.execute_notebook(
            NOTEBOOKS / "recipes.ipynb",
            tmp_path / "out",
            {
                "runs_dir": str(runs),
                "figures_dir": str(figures),
                "n_boot": 50,
                "probe_dir": str(probe.parent),
            },
        )
    assert result.state == "done", result.error
    assert {p.name for p in figures.iterdir()} == {
        *(f"recipes.{e}" for e in ("csv", "md", "tex")),
        *(f"recipes_forest.{e}" for e in ("png", "pdf", "csv")),
        *(f"probe_recipes.{e}" for e in ("csv", "md", "tex")),
        *(f"probe_recipes_plot.{e}" for e in ("png", "pdf", "csv")),
    }
    assert "FLUX.2" in (figures / "recipes.md").read_text()
    probed = pd.read_csv(figures / "probe_recipes.csv").set_index("recipe")
    assert probed.diff_vs_paper["ltx2"] == pytest.approx(0.25)


def test_baseline_runs_come_from_another_grid_of_the_same_protocol(runs, tmp_path):
    """recipes without its own norm_mean runs takes recipe:paper from a small2-like grid (same settings
    but encoder, strategy and seed), and refuses one whose settings differ."""
    root = tmp_path / "runs"
    without_paper = {arm: v for arm, v in PASSED.items() if arm[1] != "norm_mean"}
    write_runs(root, "recipes", passed=without_paper, common=PROTOCOL)
    paper_and_last = {
        **{a: v for a, v in PASSED.items() if a[1] == "norm_mean"},
        ("gemma3-270m", "last"): ({}, 0),
    }
    write_runs(root, "small2", passed=paper_and_last, common=PROTOCOL)
    opts = stats.Options(n_boot=100)
    assert comparisons.recipe_comparison(root, "recipes", opts=opts)["verdict"].eq("no baseline run").all()
    table = comparisons.recipe_comparison(root, "recipes", opts=opts, baseline_grid="small2")
    geneval = table[table["tier"] == "geneval"].set_index("recipe")
    assert list(geneval.index) == ["recipe:flux2", "recipe:paper", "recipe:lumina2"]  # small2's last left out
    assert geneval.loc["recipe:paper", ["grids", "n_seeds"]].tolist() == ["small2", 2]
    assert geneval.loc["recipe:flux2", "diff_vs_paper"] == pytest.approx(1 / 6)
    mine = comparisons.recipe_comparison(
        runs, "recipes", opts=opts
    )  # the grid's own baseline runs: the same numbers
    assert table.drop(columns=["grids", "projection_params"]).equals(
        mine.drop(columns=["grids", "projection_params"])
    )
    write_runs(root, "other", passed=paper_and_last, common={**PROTOCOL, "preset": "cpu-small"})
    with pytest.raises(ValueError, match="not the same protocol.*cpu-small"):
        comparisons.recipe_comparison(root, "recipes", opts=opts, baseline_grid="other")


def test_the_baseline_is_also_shown_on_the_seeds_the_difference_pairs(tmp_path):
    """One recipe seed is paired with the baseline's seed 0 alone: the table shows that seed's baseline
    score beside the baseline's mean, so a reader sees what the difference is taken from.
    Held-out: paper passes 2 of 4 prompts at seed 0 and 4 of 4 at seed 1 (mean 0.75); flux2 (seed 0 only)
    passes 3 of 4, so its difference is +0.25 against paper's seed 0 (0.5), though it is level with paper's mean."""
    root, other = tmp_path / "runs", tmp_path / "other"
    paper = ("gemma3-270m", "norm_mean")
    write_runs(
        root,
        "recipes",
        passed={
            paper: PASSED[paper],
            ("gemma3-270m", "recipe:flux2"): PASSED[("gemma3-270m", "recipe:flux2")],
        },
        common=PROTOCOL,
    )
    write_runs(other, "recipes", passed={paper: ({"single_object"}, 4)}, common=PROTOCOL)
    seed1 = "gemma3-270m__norm_mean__seed1"
    shutil.rmtree(root / "recipes" / seed1)
    shutil.copytree(other / "recipes" / seed1, root / "recipes" / seed1)
    shutil.rmtree(root / "recipes" / "gemma3-270m__recipe-flux2__seed1")
    table = comparisons.recipe_comparison(root, "recipes", opts=stats.Options(n_boot=50))
    held = table[table["tier"] == "heldout"].set_index("recipe")
    assert held["score"].to_dict() == pytest.approx({"recipe:paper": 0.75, "recipe:flux2": 0.75})
    assert held.loc["recipe:flux2", ["paper_same_seeds", "diff_vs_paper"]].tolist() == pytest.approx(
        [0.5, 0.25]
    )
    assert pd.isna(held.loc["recipe:paper", "paper_same_seeds"])


def test_single_state_baseline_runs_stand_in_under_the_width_rule(tmp_path):
    """grids/recipes_width.yaml trains its concat arms under ``projection_lr: width``; small2's norm_mean
    runs, trained without it, are recipe:paper under the rule too (the rule is the identity for one state),
    so they stand in. Only single-state arms match either rule: two rules among a grid's concat arms are
    two protocols, and refused."""
    root = tmp_path / "runs"
    without_paper = {arm: v for arm, v in PASSED.items() if arm[1] != "norm_mean"}
    width = {**PROTOCOL, "train_options": {"projection_lr": "width"}}
    write_runs(root, "recipes_width", passed=without_paper, common=width)
    write_runs(
        root, "small2", passed={a: v for a, v in PASSED.items() if a[1] == "norm_mean"}, common=PROTOCOL
    )
    opts = stats.Options(n_boot=100)
    table = comparisons.recipe_comparison(root, "recipes_width", opts=opts, baseline_grid="small2")
    geneval = table[table["tier"] == "geneval"].set_index("recipe")
    assert geneval.loc["recipe:paper", "grids"] == "small2"
    assert geneval.loc["recipe:flux2", "diff_vs_paper"] == pytest.approx(1 / 6)
    write_runs(
        root,
        "mixed",
        passed={("gemma3-270m", "recipe:flux2"): PASSED[("gemma3-270m", "recipe:flux2")]},
        common=PROTOCOL,
    )
    write_runs(
        root, "mixed", passed={("gemma3-270m", "concat[layers=-2:]"): ({"single_object"}, 1)}, common=width
    )
    with pytest.raises(ValueError, match="not the same protocol.*projection_lr"):
        comparisons.recipe_comparison(root, "mixed", opts=opts, baseline_grid="small2")


def test_wide_arm_loss_curves_read_both_log_places_and_pair_the_other_grid(tmp_path):
    """concat_arm_logs keeps a grid's concat arms (flux2, not norm_mean or lumina2), reads a log committed in
    the run folder or left in <run>/train/, and adds the other grid's runs of the same (encoder, strategy,
    seed) only: 2 seeds x 3 logged steps in each grid -> 12 rows; the running median is hand-computed."""
    root = tmp_path / "runs"
    write_runs(root, "recipes_width", passed=PASSED, common=PROTOCOL)
    write_runs(root, "recipes", passed=PASSED, common=PROTOCOL)
    assert comparisons.concat_arm_logs(root, "recipes_width", "recipes").empty  # no run keeps a log yet
    losses = [0.3, 0.1, 0.2]
    for grid, where in (("recipes_width", "train"), ("recipes", "")):
        for run in (root / grid).iterdir():
            if run.is_dir():
                (run / where).mkdir(exist_ok=True)
                lines = [{"step": 10 * (i + 1), "loss": v, "grad_norm": 1.0} for i, v in enumerate(losses)]
                (run / where / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    logs = comparisons.concat_arm_logs(root, "recipes_width", "recipes")
    assert len(logs) == 12 and set(logs["strategy"]) == {"recipe:flux2"}
    assert logs.groupby("grid").size().to_dict() == {"recipes": 6, "recipes_width": 6}
    assert len(comparisons.concat_arm_logs(root, "recipes_width")) == 6
    fig, data = plots.loss_curves(logs, window=2)
    one = data[(data["run_id"] == data["run_id"].iloc[0]) & (data["grid"] == "recipes")].sort_values("step")
    assert one["loss_median"].tolist() == pytest.approx([0.3, 0.2, 0.15])  # medians of [.3], [.3,.1], [.1,.2]
    assert len(fig.axes) == 1


def test_a_declared_arm_not_landed_is_a_pending_call_of_the_family(runs):
    """A partial grid is called as its whole family: the declared arm hunyuan has no run, so each tier gets
    a "not run" row with p = 1 in Holm's correction (4 landed calls + 2 pending = 6); the baseline, declared
    too, is no call."""
    opts = stats.Options(n_boot=100)
    declared = {("gemma3-270m", s) for s in ("norm_mean", "recipe:flux2", "recipe:lumina2", "recipe:hunyuan")}
    full = comparisons.recipe_comparison(runs, "recipes", opts=opts)
    table = comparisons.recipe_comparison(runs, "recipes", opts=opts, pending=declared)
    assert len(table) == len(full) + 2 and full["p_holm"].notna().sum() == 4
    assert table["p_holm"].notna().sum() == 6
    waiting = table[table["recipe"] == "recipe:hunyuan"]
    assert waiting["verdict"].tolist() == ["not run", "not run"] and (waiting["p_holm"] == 1).all()
    assert waiting["n_seeds"].tolist() == [0, 0] and waiting["score"].isna().all()
    assert calls.family_note(table, "recipes").count("(6 calls)") == 1
    assert calls.declared_arms("grids", "recipes_width") == {
        (e, f"recipe:{r}"): 1
        for e in ("gemma3-270m", "smollm2-135m")
        for r in ("cosmos2.5", "ltx2", "ltx2.3")
    }
    # with the seeds each arm owes: a first-pass recipe 1, the top three 3; small3's 12 arms 3 each
    recipes = calls.declared_arms("grids", "recipes")
    assert recipes[("gemma3-270m", "recipe:lumina2")] == 1 and recipes[("gemma3-270m", "recipe:sana")] == 3
    assert sorted(calls.declared_arms("grids", "small3").values()) == [3] * 12
    assert calls.declared_arms("grids", "no_such_grid") == {}
