"""Scorer interface, GenAI-Bench per-skill aggregation, bootstrap summaries, paired differences, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from t2istudy.scoring.scorers import get_scorer, shuffled_pairing
from t2istudy.scoring.summaries import paired_difference, summarize
from t2istudy.world.genai_bench import load_genai_bench, skill_means
from t2istudy.world.shapes import Obj, Scene, render
from t2istudy.world.shapes_benchmark import make_benchmark


@pytest.fixture
def hand_table():
    # basic skills: attribute, scene, spatial; advanced: counting, negation
    return pd.DataFrame(
        {
            "id": ["p1", "p2", "p3", "p4", "p5", "p6"],
            "prompt": ["a", "b", "c", "d", "e", "f"],
            "skills": [
                ("attribute",),
                ("attribute", "spatial"),
                ("spatial", "counting"),
                ("counting",),
                ("counting", "negation"),
                ("scene",),
            ],
            "score": [1.0, 0.0, 1.0, 0.0, 0.5, 1.0],
        }
    )


def test_genai_bench_aggregation_hand_computed(hand_table):
    means = skill_means(hand_table)
    assert means.loc["attribute", "mean"] == 0.5 and means.loc["attribute", "n"] == 2
    assert means.loc["spatial", "mean"] == 0.5
    assert means.loc["scene", "mean"] == 1.0
    assert means.loc["counting", "mean"] == pytest.approx(1.5 / 3)
    assert means.loc["negation", "mean"] == 0.5
    # basic = mean over p1, p2, p3, p6 (any basic tag) = 3/4, not the mean of skill means (2/3)
    assert means.loc["basic", "n"] == 4 and means.loc["basic", "mean"] == 0.75
    # advanced = mean over p3, p4, p5 = 1.5/3
    assert means.loc["advanced", "n"] == 3 and means.loc["advanced", "mean"] == pytest.approx(0.5)
    assert means.loc["overall", "mean"] == pytest.approx(3.5 / 6)
    assert list(means.index) == [
        "attribute",
        "scene",
        "spatial",
        "counting",
        "negation",
        "basic",
        "advanced",
        "overall",
    ]


def test_summarize_cis(hand_table):
    summary = summarize(hand_table, n_boot=2000, seed=0)
    assert summary.loc["basic", "mean"] == 0.75
    assert summary.loc["scene", "ci_low"] == summary.loc["scene", "ci_high"] == 1.0  # one prompt, no spread
    assert (summary["ci_low"] <= summary["mean"]).all() and (summary["mean"] <= summary["ci_high"]).all()
    assert summary.loc["overall", "ci_low"] >= 0.0 and summary.loc["overall", "ci_high"] <= 1.0
    assert summary.equals(summarize(hand_table, n_boot=2000, seed=0))  # deterministic for a seed
    # a large sample: the bootstrap CI of a Bernoulli(0.3) mean is close to +-1.96 * sqrt(p(1-p)/n)
    rng = np.random.default_rng(1)
    big = pd.DataFrame({"id": range(2000), "prompt": "x", "skills": [("counting",)] * 2000})
    big["score"] = (rng.random(2000) < 0.3).astype(float)
    row = summarize(big, n_boot=2000).loc["counting"]
    half = 1.96 * np.sqrt(row["mean"] * (1 - row["mean"]) / 2000)
    assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * half, rel=0.1)


def test_paired_difference(hand_table):
    other = hand_table.sample(frac=1.0, random_state=0).copy()  # another order: pairing is by id
    other["score"] = other["id"].map({"p1": 0.0, "p2": 0.0, "p3": 1.0, "p4": 0.0, "p5": 0.0, "p6": 1.0})
    diff = paired_difference(hand_table, other, n_boot=2000)
    assert diff.loc["attribute", "diff"] == 0.5 and diff.loc["attribute", "mean_b"] == 0.0
    assert diff.loc["counting", "diff"] == pytest.approx(0.5 / 3)
    assert (
        diff.loc["spatial", "diff"] == 0.0
        and diff.loc["spatial", "ci_low"] == diff.loc["spatial", "ci_high"] == 0.0
    )
    assert diff.loc["overall", "diff"] == pytest.approx(1.5 / 6)
    # same prompts, one differing by 1 in 6: every resample has diff >= 0
    assert diff.loc["overall", "ci_low"] >= 0.0
    same = paired_difference(hand_table, hand_table)
    assert (same["diff"] == 0).all() and (same["p_boot"] == 1.0).all()
    with pytest.raises(ValueError, match="different prompts"):
        paired_difference(hand_table, hand_table.iloc[:5])


def test_unknown_skill_tag_names_the_prompt(hand_table):
    hand_table.loc[3, "skills"] = ("counting", "juggling")
    with pytest.raises(ValueError, match="Prompt 'p4': unknown skill tag 'juggling'"):
        summarize(hand_table)


def test_genai_bench_loader_still_works(tmp_path):
    table = load_genai_bench()
    assert len(table) == 527 and table["id"].iloc[0] == "00001"
    image_file = tmp_path / "genai_image.json"
    image_file.write_text(
        json.dumps({f"{i:05d}": {"id": f"{i:05d}", "prompt": f"p{i}"} for i in range(1, 5)})
    )
    (tmp_path / "genai_skills.json").write_text(json.dumps({"counting": [0, 2], "attribute": [2, 3]}))
    table = load_genai_bench(tmp_path)
    assert table["skills"].tolist() == [("counting",), (), ("counting", "attribute"), ("attribute",)]
    table["score"] = [1.0, 0.0, 0.0, 1.0]
    means = skill_means(table)
    assert means.loc["counting", "mean"] == 0.5 and means.loc["basic", "n"] == 2
    assert means.loc["overall", "n"] == 4  # prompts without tags still count overall
    (tmp_path / "genai_skills.json").write_text(json.dumps({"counting": [7]}))
    with pytest.raises(ValueError, match="prompt index 7"):
        load_genai_bench(tmp_path)


@pytest.fixture(scope="module")
def small_bench():
    bench = make_benchmark(6, seed=0)
    return bench.groupby(bench["skills"].map(lambda s: s[0])).head(2).reset_index(drop=True)


def test_judge_scorer_table(small_bench, tmp_path):
    images = [render(s) for s in small_bench["scene"]]
    images[0] = render(Scene("white", [Obj("circle", "yellow", 0.2, 0.5, 0.5)]))  # a wrong image
    paths = []
    for i, image in enumerate(images):  # file paths work too
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    scorer = get_scorer("judge")
    table = scorer.score(paths, small_bench)
    assert table["id"].tolist() == small_bench["id"].tolist()
    assert table["score"].tolist() == [0.0] + [1.0] * (len(small_bench) - 1)
    assert 0.0 <= table["fraction"].iloc[0] < 1.0 and (table["fraction"].iloc[1:] == 1.0).all()
    assert table["detected"].iloc[0] == "yellow circle"
    summary = summarize(table)
    assert summary.loc["overall", "mean"] == pytest.approx(1 - 1 / len(small_bench))


def test_scorer_bad_input_is_named(small_bench, tmp_path):
    images = [render(s) for s in small_bench["scene"]]
    scorer = get_scorer("judge")
    with pytest.raises(ValueError, match=f"Got {len(images) - 1} images for {len(images)} prompts"):
        scorer.score(images[:-1], small_bench)
    wrong = list(images)
    wrong[3] = render(small_bench["scene"][3], 64)
    with pytest.raises(ValueError, match=f"prompt '{small_bench['id'][3]}': size 64x64, expected 32x32"):
        scorer.score(wrong, small_bench)
    with pytest.raises(ValueError, match="expected 64x64"):
        get_scorer("judge", resolution=64).score(images, small_bench)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"prompt '{small_bench['id'][1]}': cannot read"):
        scorer.score([images[0], broken, *images[2:]], small_bench)
    bad_spec = small_bench.copy()
    bad_spec.at[2, "spec"] = {"constraints": [{"type": "count", "color": "teal", "op": "==", "n": 1}]}
    with pytest.raises(ValueError, match=f"prompt '{small_bench['id'][2]}'.*unknown colour 'teal'"):
        scorer.score(images, bad_spec)
    with pytest.raises(ValueError, match="needs a 'spec' column"):
        scorer.score(images, small_bench.drop(columns="spec"))
    with pytest.raises(ValueError, match="Unknown scorer 'clip'"):
        get_scorer("clip")


def test_shuffled_pairing_stays_within_the_skill_and_uses_every_image_once():
    bench = make_benchmark(n_per_skill=5)
    other = shuffled_pairing(bench)
    assert (other != np.arange(len(bench))).all()  # nobody is judged on its own image
    assert sorted(other) == list(range(len(bench)))  # every image stands in exactly once
    tags = bench["skills"].to_numpy()
    shared = pd.Series(tags).map(pd.Series(tags).value_counts()) > 1  # tag sets held by 2+ prompts
    assert (tags[other][shared] == tags[shared]).all()
    assert (shuffled_pairing(bench) == other).all()  # fixed: every arm gets the same pairing
    lone = pd.DataFrame({"id": ["a", "b"], "prompt": ["x", "y"], "skills": [("scene",), ("counting",)]})
    assert shuffled_pairing(lone).tolist() == [1, 0]  # single-prompt tag sets are pooled


def test_judge_shuffled_control_judges_each_prompt_on_its_stand_in_image():
    scenes = [
        Scene("gray", [Obj("circle", "red", 0.25, 0.5, 0.5)]),
        Scene("gray", [Obj("square", "blue", 0.25, 0.5, 0.5)]),
    ]
    red_circle = {"color": "red", "shape": "circle", "op": "=="}
    spec = [  # prompt 0: "one red circle on gray"; prompt 1: "no red circle"
        {"constraints": [{"type": "background", "color": "gray"}, {"type": "count", **red_circle, "n": 1}]},
        {"constraints": [{"type": "count", **red_circle, "n": 0}]},
    ]
    bench = pd.DataFrame(
        {"id": ["p0", "p1"], "prompt": ["a", "b"], "skills": [("negation",)] * 2, "spec": spec}
    )
    table = get_scorer("judge").score([render(s) for s in scenes], bench)
    assert table["score"].tolist() == [1.0, 1.0]
    # p0 judged on the blue square: background holds, the count does not; p1 on the red circle: fails.
    assert table["fraction_shuffled"].tolist() == [0.5, 0.0]
    assert table["score_shuffled"].tolist() == [0.0, 0.0]
    assert "fraction_shuffled" not in get_scorer("judge", shuffled_control=False).score(
        [render(s) for s in scenes], bench
    )
