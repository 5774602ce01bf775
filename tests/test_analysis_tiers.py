"""The analysis on both benchmark tiers, over synthetic run folders written as the run notebook writes them.

Design (hand-computed numbers): 2 encoders x 2 strategies x 2 seeds; both seeds of an arm score alike.
GenEval-style tier: 8 prompts, 3 for single_object and 1 for each other task; an arm passes every prompt
of the tasks in PASSED and none other. So gemma3-270m norm_mean has task means (1, 1, 1, 0, 0, 0): overall
1/2 by GenEval's rule, where the mean over prompts would be 5/8; gemma3-270m last has 1/6 (not 3/8).
Every task's difference is constant over its prompts, so the paired overall difference 1/2 - 1/6 = 1/3
has a CI of width 0 (the prompt-mean rule would give 1/4). Held-out tier: 4 prompts (2 attribute,
2 counting), the first k pass; overall = the mean over prompts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import FIGURE_INPUTS, NOTEBOOKS, PASSED, execute_analysis, write_runs

from t2istudy import run_store
from t2istudy.analysis import stats, tables
from t2istudy.scoring.bootstrap import (
    mean_ci_over_seeds_and_prompts,
    mean_of_group_means_ci_over_seeds_and_prompts,
)
from t2istudy.study import pipeline, run_results
from t2istudy.world.shapes_geneval import TASKS


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return write_runs(tmp_path_factory.mktemp("tiers") / "runs")


def _overall(metrics: pd.DataFrame, encoder: str, strategy: str) -> float:
    rows = metrics[
        (metrics.encoder == encoder) & (metrics.strategy == strategy) & (metrics.skill == "overall")
    ]
    return float(rows["mean"].mean())


def test_load_reads_each_tier_with_its_overall_rule(runs):
    scores = run_results.load_scores(runs, "tiers", tier="geneval")
    assert len(scores) == 8 * 8 and set(scores.tier) == {"geneval"}
    assert (scores["skills"] == scores["task"]).all()  # the task stands where the skills do
    metrics = run_results.load_metrics(runs, "tiers", tier="geneval")
    assert set(metrics.skill) == {"overall", *TASKS} and set(metrics.tier) == {"geneval"}
    assert _overall(metrics, "gemma3-270m", "norm_mean") == pytest.approx(1 / 2)  # not 5/8
    assert _overall(metrics, "gemma3-270m", "last") == pytest.approx(1 / 6)  # not 3/8
    fraction = run_results.load_metrics(runs, "tiers", tier="geneval", metric="fraction")
    assert _overall(fraction, "gemma3-270m", "norm_mean") == pytest.approx(0.5 + 0.5 / 2)
    held = run_results.load_metrics(runs, "tiers")  # the default tier: unchanged, prompt mean
    assert set(held.tier) == {"heldout"} and _overall(held, "gemma3-270m", "norm_mean") == pytest.approx(
        3 / 4
    )
    assert len(run_results.load_scores(runs, "tiers")) == 8 * 4


def test_geneval_overall_is_the_mean_of_task_means():
    """Two tasks, means 1 and 0 over 3 and 1 prompts: overall 1/2, where the prompt mean is 3/4."""
    a = pd.DataFrame(
        {
            "seed": 0,
            "id": ["p1", "p2", "p3", "q1"],
            "skills": ["single_object"] * 3 + ["two_object"],
            "score": [1.0, 1.0, 1.0, 0.0],
            "shuffled": 0.0,
            "tier": "geneval",
            "encoder": "e",
            "strategy": "s",
        }
    )
    zero = a.assign(score=0.0)
    diff = stats.arm_difference(a, zero, opts=stats.Options(n_boot=200))
    assert (diff["diff"], diff["ci_low"], diff["ci_high"]) == pytest.approx((0.5, 0.5, 0.5))
    assert stats.arm_difference(a.drop(columns="tier"), zero, opts=stats.Options(n_boot=200))["diff"] == 0.75
    following = stats.prompt_following(a, stats.Options(n_boot=200)).set_index("skill")
    assert following.loc["overall", ["score", "floor", "above_floor"]].tolist() == pytest.approx(
        [0.5, 0, 0.5]
    )


def test_group_bootstrap_is_the_two_level_bootstrap_for_one_group():
    rng = np.random.default_rng(3)
    matrix = rng.random((3, 7))
    assert mean_of_group_means_ci_over_seeds_and_prompts([matrix], 300, 5) == pytest.approx(
        mean_ci_over_seeds_and_prompts(matrix, 300, 5)
    )
    groups = [np.ones((2, 5)), np.zeros((2, 1))]  # constant within each group: a CI of width 0
    assert mean_of_group_means_ci_over_seeds_and_prompts(groups, 100) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="same seeds"):
        mean_of_group_means_ci_over_seeds_and_prompts([np.ones((2, 2)), np.ones((3, 2))])


def test_tables_and_claims_on_the_geneval_tier(runs):
    opts = stats.Options(n_boot=200)
    metrics = run_results.load_metrics(runs, "tiers", tier="geneval")
    scores = run_results.load_scores(runs, "tiers", tier="geneval")
    info = stats.encoder_info(metrics)
    arms = stats.arm_table(metrics, scores, opts)
    row = arms.set_index(["encoder", "strategy", "skill"]).loc[("gemma3-270m", "norm_mean", "overall")]
    assert row[["mean", "ci_low", "ci_high"]].tolist() == pytest.approx([0.5, 0.5, 0.5])
    t1 = tables.table1(arms, opts)
    assert list(t1.columns[1:10]) == ["source", "n_seeds", "overall", *TASKS]  # GenEval's task order
    assert tables.table2(arms).set_index("encoder").loc["gemma3-270m", "norm_mean"] == "0.500 [0.500, 0.500]"
    claims = stats.claims(scores, info, opts).set_index(["a", "b"])
    held = claims.loc[("gemma3-270m norm_mean", "gemma3-270m last")]
    assert held["diff"] == pytest.approx(1 / 3) and held["ci_low"] == pytest.approx(1 / 3)  # not 1/4
    assert held["verdict"] == "held (preliminary: 2 seeds)"
    assert claims.loc[("gemma3-270m norm_mean", "minilm-l6 last"), "diff"] == pytest.approx(1 / 3)
    gains = stats.skill_gains(scores, info, opts).set_index("skill")
    assert gains.loc["overall", "diff"] == pytest.approx(1 / 3) and gains.loc["counting", "diff"] == 1.0
    assert gains.index.tolist() == ["overall", *TASKS]
    held_out = run_results.load_scores(runs, "tiers")
    assert stats.claims(held_out, info, opts).set_index(["a", "b"]).loc[
        ("gemma3-270m norm_mean", "gemma3-270m last"), "diff"
    ] == pytest.approx(0.5)  # held-out tier: (3 - 1) / 4 prompts, as before
    with pytest.raises(ValueError, match="mixes tiers"):
        stats.tier_of(pd.concat([scores, held_out]))


def test_runs_without_the_tier_are_named(tmp_path):
    root = write_runs(tmp_path / "runs", geneval=False)
    with pytest.raises(ValueError, match=r"gemma3-270m__last__seed0.*geneval_per_task > 0"):
        run_results.load_scores(root, "tiers", tier="geneval")
    with pytest.raises(ValueError, match="No complete run of .* has the geneval tier"):
        run_results.load_metrics(root, "tiers", tier="geneval")
    assert len(run_results.load_scores(root, "tiers")) == 8 * 4  # the held-out tier still reads
    shutil.rmtree(root)
    write_runs(root)
    older = root / "tiers" / "minilm-l6__last__seed1"
    (older / "scores_geneval.csv").unlink()
    metrics = json.loads((older / "metrics.json").read_text())
    del metrics["tiers"]["geneval"]  # as a run scored before the tier existed
    run_store.write_json(older / "metrics.json", metrics)
    with pytest.warns(UserWarning, match=r"1 of 8 runs lack the geneval tier.*minilm-l6__last__seed1"):
        scores = run_results.load_scores(root, "tiers", tier="geneval")
    assert scores.run_id.nunique() == 7 and len(scores) == 7 * 8
    with pytest.raises(ValueError, match="Unknown tier"):
        run_results.load_metrics(root, "tiers", tier="genai")


def test_study_runs_the_geneval_analysis_only_for_grids_that_ask_for_it():
    quick = {s.name: s for s in pipeline.default_study(quick=True)}
    table_step, figures = quick["analysis-tables-geneval"], quick["analysis-figures-geneval"]
    assert table_step.params == {
        "grid": "quick",
        "figures_dir": "figures/quick",
        "metric": "score",
        "tier": "geneval",
    }
    assert figures.params["tier"] == "geneval" and figures.out == "analysis/quick/figures-geneval"
    assert "tier" not in quick["analysis-tables"].params  # the held-out steps: as before
    record = [s.name for s in pipeline.default_study(quick=False, grid="small")]
    assert not [name for name in record if "geneval" in name]  # small.yaml's runs predate the tier
    full = {s.name: s for s in pipeline.default_study(quick=False)}  # small2.yaml asks for it
    assert full["analysis-tables-geneval"].params["figures_dir"] == "figures/small2"
    assert tables.tier_dir("figures", "heldout") == Path("figures")
    assert tables.tier_dir("figures", "geneval") == Path("figures/geneval")


@pytest.mark.slow
def test_analysis_notebooks_execute_on_both_tiers(runs, tmp_path):
    figures_dir = tmp_path / "figures"
    execute_analysis(runs, "tiers", figures_dir, tmp_path)
    table_stems = ("table1_last_layer", "table2_strategies", "claims", "skill_gains", "prompt_following")
    figures = ("skill_bars", "scaling", "claims_forest")
    expected = {f"{s}.{e}" for s in table_stems for e in ("csv", "md", "tex")}
    expected |= {f"{s}.{e}" for s in figures for e in ("png", "pdf", "csv")}
    heldout_only = {f"{s}.{e}" for s in ("layer_norms", "probe_vs_diffusion") for e in ("png", "pdf", "csv")}
    assert {p.name for p in figures_dir.iterdir()} == expected | heldout_only | {"geneval"}
    failures = {f"failure_modes.{e}" for e in ("png", "pdf", "csv")}  # read from the judge's detections
    assert {p.name for p in (figures_dir / "geneval").iterdir()} == expected | failures
    shares = pd.read_csv(figures_dir / "geneval" / "failure_modes.csv").set_index(["arm", "task", "failure"])
    assert shares.loc[("minilm-l6 norm_mean", "colors", "pass"), "share"] == 1.0
    assert shares.loc[("minilm-l6 norm_mean", "counting", "empty"), "share"] == 1.0
    claims = pd.read_csv(figures_dir / "geneval" / "claims.csv").set_index(["a", "b"])
    assert claims.loc[("gemma3-270m norm_mean", "gemma3-270m last"), "diff"] == pytest.approx(1 / 3)
    assert "Tier: geneval" in (figures_dir / "geneval" / "claims.md").read_text()
    assert "Tier: heldout" in (figures_dir / "claims.md").read_text()


def test_grid_status_shows_both_tiers(runs, tmp_path):
    from t2istudy.study.grids import load_grid

    path = tmp_path / "tiers.yaml"
    path.write_text(
        f"name: tiers\nnotebook: {NOTEBOOKS / 'run.ipynb'}\n"
        "axes:\n  encoder: [gemma3-270m]\n  strategy: [norm_mean, last]\n  seed: [0, 1]\n"
    )
    status = run_results.grid_status(load_grid(path), runs).set_index("run_id")
    assert status["overall"].tolist() == pytest.approx([0.75, 0.75, 0.25, 0.25])  # held-out: prompt mean
    assert status["geneval"].tolist() == pytest.approx([0.5, 0.5, 1 / 6, 1 / 6])  # mean of task means


def test_a_grid_sampled_under_two_noise_rules_is_refused_with_the_resample_command(tmp_path):
    """Runs recorded without a rule count as "shared"; one arm re-sampled "per_prompt" beside them makes the
    grid's arms incomparable, and loading it names both groups and `t2istudy grid resample`."""
    root = write_runs(tmp_path / "runs", extras={("gemma3-270m", "last"): {"sample_noise": "per_prompt"}})
    with pytest.raises(
        ValueError,
        match=r"different noise rules \(per_prompt: gemma3-270m__last__seed0, "
        r"gemma3-270m__last__seed1; shared: .*t2istudy grid resample",
    ):
        run_results.load_metrics(root, "tiers")
    same = write_runs(tmp_path / "same")  # every run without the key: one rule, loads
    assert set(run_results.load_metrics(same, "tiers")["sample_noise"]) == {"shared"}


def test_grids_compared_across_are_refused_under_two_noise_rules(tmp_path):
    """Each grid is one rule, but upsampled runs re-sampled per prompt against as-written runs still drawn
    under the shared rule are not paired by noise: the cross-grid comparison names both and the fix."""
    from t2istudy.analysis.comparisons import upsampling_effect

    per_prompt = {arm: {"sample_noise": "per_prompt"} for arm in PASSED}
    root = write_runs(tmp_path / "runs", "upsampled", extras=per_prompt)
    write_runs(root, "asis")  # no rule recorded: shared
    with pytest.raises(ValueError, match=r"per_prompt: upsampled; shared: asis.*t2istudy grid resample"):
        upsampling_effect(root, "upsampled", "asis")
    write_runs(root, "asis2", extras=per_prompt)
    run_results.check_same_noise_rule(
        run_results.load_metrics(root, "upsampled"), run_results.load_metrics(root, "asis2")
    )


def test_geneval_overall_leaves_the_extra_task_out():
    """A run scored with the extra task (``single_object_colour_named``, reported beside GenEval's six) has
    the overall of its six task means only, as its own summary: here task means (1, 0, 0, 0, 0, 0) and the
    extra task 1, so overall 1/6 (with the extra task it would be 2/7); against an arm passing nothing the
    difference is 1/6, with a CI of width 0 (every prompt of a task differs alike)."""
    rows = []
    for seed in (0, 1):
        for task in (*TASKS, "single_object_colour_named"):
            for k in range(2):
                passed = task in ("single_object", "single_object_colour_named")
                rows += [
                    {"id": f"{task}-{k}", "seed": seed, "skills": task, "tier": "geneval", "strategy": "s",
                     "encoder": arm, "run_id": f"{arm}-{seed}", "score": float(passed and arm == "a")}
                    for arm in ("a", "b")
                ]  # fmt: skip
    scores = pd.DataFrame(rows)
    a, b = scores[scores.encoder == "a"], scores[scores.encoder == "b"]
    diff = stats.arm_difference(a, b, "overall")
    assert diff["diff"] == pytest.approx(1 / 6)
    assert diff["ci_low"] == pytest.approx(1 / 6) and diff["ci_high"] == pytest.approx(1 / 6)
    assert len(stats.split(stats._matrix(a, "overall"), a, "overall")) == len(TASKS)


def test_protocol_effect_pairs_each_arm_with_the_grid_it_replaces(tmp_path):
    """small3 against small2, by hand: gemma3-270m norm_mean passes two_object, position and colour
    attribution under the new protocol (and the 4th held-out prompt) where the old one passed two_object
    only, so its binding mean goes 1/3 -> 1 (+2/3), its GenEval overall 1/2 -> 5/6 (+1/3: GenEval's six
    tasks, (1, 1, 1, 0, 1, 1) against (1, 1, 1, 0, 0, 0)) and its held-out overall 3/4 -> 1 (+1/4, one
    prompt of four). On the GenEval-style tier every seed and prompt of a task moves alike, so the CIs have
    width 0 and the calls hold. gemma3-270m last is unchanged (0). The
    minilm arms the new grid declares have not landed: "not run", p = 1, still counted in Holm's m (12)."""
    from t2istudy.analysis import calls
    from t2istudy.analysis.comparisons import PROTOCOL_CALLS, protocol_effect

    new = {
        ("gemma3-270m", "norm_mean"): (
            {"single_object", "two_object", "counting", "position", "color_attr"},
            4,
        ),
        ("gemma3-270m", "last"): PASSED[("gemma3-270m", "last")],
    }
    root = write_runs(tmp_path / "runs", "new", passed=new)
    write_runs(root, "old")
    table = protocol_effect(
        root, "new", "old", opts=stats.Options(n_boot=200, n_boot_test=2000), pending=set(PASSED)
    )
    assert len(table) == len(PASSED) * len(PROTOCOL_CALLS) == 12
    assert table["p_holm"].notna().sum() == 12  # the pending calls count in the family
    rows = table.set_index(["encoder", "strategy", "tier", "skill"])
    norm = rows.loc[("gemma3-270m", "norm_mean")]
    expected = {
        ("geneval", "binding"): (1 / 3, 1.0, 2 / 3),
        ("geneval", "overall"): (1 / 2, 5 / 6, 1 / 3),
        ("heldout", "overall"): (3 / 4, 1.0, 1 / 4),
    }
    for call, (control, treated, diff) in expected.items():
        row = norm.loc[call]
        assert (row["control"], row["treated"], row["diff"]) == pytest.approx((control, treated, diff))
        if call[0] == "geneval":
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((diff, diff))
            assert row["verdict"] == "held (preliminary: 2 seeds)"
        else:  # one prompt of four moves: resampling prompts spans 0 to 3/4
            assert row["ci_low"] <= diff <= row["ci_high"] and row["ci_high"] - row["ci_low"] > 0.25
    assert (rows.loc[("gemma3-270m", "last"), "diff"] == 0).all()
    assert norm.loc[("geneval", "binding"), "pairs"] == ";".join(
        f"new/gemma3-270m__norm_mean__seed{s}+old/gemma3-270m__norm_mean__seed{s}" for s in (0, 1)
    )  # each side's grid named: the two grids' runs share their ids
    waiting = rows.loc["minilm-l6"]
    assert (waiting["verdict"] == "not run").all() and (waiting["p"] == 1).all()
    assert "protocol" in calls.FAMILIES


def test_the_tables_notebook_writes_the_protocol_comparison(tmp_path):
    """notebooks/analysis_tables.ipynb with ``baseline_grid``: protocol_effect.{csv,md} on the tier it was
    executed for, its caption naming the family and its size (3 calls for each of the 4 arms)."""
    import warnings

    from t2istudy.study import runner

    root = write_runs(tmp_path / "runs", "new")
    write_runs(root, "old")
    figures = tmp_path / "figures"
    params = {"runs_dir": str(root), "grid": "new", "figures_dir": str(figures), "baseline_grid": "old"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.execute_notebook(NOTEBOOKS / "analysis_tables.ipynb", tmp_path / "nb", params)
    assert result.state == "done", result.error
    table = pd.read_csv(figures / "protocol_effect.csv")
    assert set(table["skill"]) == {"overall"} and len(table) == 4  # the held-out tier's rows only
    assert (table["diff"] == 0).all()  # the same runs on both sides
    assert "(12 calls)" in (figures / "protocol_effect.md").read_text()
    figure_params = {**params, "tier": "geneval", **FIGURE_INPUTS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.execute_notebook(
            NOTEBOOKS / "analysis_figures.ipynb", tmp_path / "fig", figure_params
        )
    assert result.state == "done", result.error
    drawn = pd.read_csv(figures / "geneval" / "protocol_forest.csv")  # the figure's numbers beside it
    assert sorted(set(drawn["skill"])) == ["binding", "overall"] and len(drawn) == 8
    assert (figures / "geneval" / "protocol_forest.png").exists()
    assert not (
        figures / "geneval" / "protocol_effect.csv"
    ).exists()  # the tables notebook's name: not overwritten
