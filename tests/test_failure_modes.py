"""Failure reasons of GenEval-style prompts: hand-built detections get the reason a reader would give."""

import pandas as pd
import pytest

from t2istudy.scoring.failure_modes import FAILURES, classify, failure_mode, failure_shares, parse_detected
from t2istudy.world.shapes_geneval import make_geneval_tier


def count(color, shape, n, op=">="):
    return {"type": "count", "color": color, "shape": shape, "op": op, "n": n}


TOTAL2 = count(None, None, 2, "==")
COLOR_ATTR = [count("red", "circle", 1), count("blue", "square", 1), TOTAL2]  # a red circle and a blue square
POSITION = [
    {
        "type": "relation",
        "rel": "left_of",
        "a": {"color": None, "shape": "circle"},
        "b": {"color": None, "shape": "square"},
    },
    TOTAL2,
]
COUNTING = [count(None, "triangle", 3, "=="), count(None, None, 3, "==")]


@pytest.mark.parametrize(
    ("constraints", "detected", "reason"),
    [
        (COLOR_ATTR, "", "empty"),
        (COLOR_ATTR, "red circle", "too few"),
        (COLOR_ATTR, "red circle, blue square, blue square", "too many"),
        (COLOR_ATTR, "red circle, blue triangle", "wrong shapes"),
        (COLOR_ATTR, "red circle, red square", "colour leak"),  # the binding failure: one colour for both
        (COLOR_ATTR, "blue circle, red square", "colours swapped"),
        (COLOR_ATTR, "green circle, blue square", "wrong colours"),
        (POSITION, "green circle, red square", "relation"),  # the right pair, so it failed on where
        (POSITION, "green circle, red triangle", "wrong shapes"),
        (COUNTING, "red triangle, blue triangle", "too few"),
        (COUNTING, "red triangle, blue triangle, red circle", "wrong shapes"),
        ([count("yellow", "circle", 1), count(None, None, 1, "==")], "blue circle", "wrong colours"),
        (COLOR_ATTR, "red circle, blue square", "other"),  # judged failed, yet the detections satisfy it
    ],
)
def test_each_failure_reason(constraints, detected, reason) -> None:
    assert failure_mode(constraints, parse_detected(detected), passed=False) == reason


def test_a_passed_image_is_pass_whatever_was_detected() -> None:
    assert failure_mode(COLOR_ATTR, [], passed=True) == "pass"


def test_parse_detected_reads_the_judge_format_and_refuses_garbage() -> None:
    assert parse_detected("red circle, blue square") == [("red", "circle"), ("blue", "square")]
    assert parse_detected(float("nan")) == [] == parse_detected("")
    with pytest.raises(ValueError, match="expected 'colour shape'"):
        parse_detected("circle")


def test_the_ground_truth_scenes_leave_no_reason_but_position_needs_its_relation() -> None:
    """A ground-truth scene's objects satisfy every count, shape and colour: judged failed, only 'other' (or,
    for position, 'relation', the one constraint detections do not show) can be left."""
    tier = make_geneval_tier(n_per_task=5)
    for row in tier.itertuples():
        detected = [(o.color, o.shape) for o in row.scene.objects]
        expected = "relation" if row.task == "position" else "other"
        assert failure_mode(row.spec["constraints"], detected, passed=False) == expected, row.prompt


def test_classify_and_shares_on_a_scored_table() -> None:
    tier = make_geneval_tier(n_per_task=2)
    scores = tier[["id", "prompt", "task"]].assign(
        score=0.0, detected="", geneval_per_task=2, encoder="e", strategy="s"
    )
    scores.loc[0, ["score", "detected"]] = [1.0, "red circle"]
    scores.loc[1, "detected"] = "red circle, red circle"  # single object: too many
    shares = failure_shares(classify(scores))
    single = shares[shares["task"] == "single_object"].set_index("failure")
    assert single.loc["pass", "share"] == 0.5 and single.loc["too many", "share"] == 0.5
    assert single["images"].sum() == 2 and list(single.index) == list(FAILURES)
    assert shares.groupby("task")["share"].sum().round(9).eq(1.0).all()
    assert shares[shares["task"] == "two_object"].set_index("failure").loc["empty", "share"] == 1.0


def test_classify_refuses_scores_from_another_tier() -> None:
    scores = pd.DataFrame(
        {"id": ["single_object-0001"], "prompt": ["a photo of a hexagon"], "score": [0.0], "detected": [""]}
    )
    with pytest.raises(ValueError, match="tier's generator changed"):
        classify(scores)
    with pytest.raises(ValueError, match="not in the GenEval-style tier"):
        classify(scores.assign(id="single_object-0099", geneval_per_task=2))


def test_failure_plot_has_one_panel_per_task_and_bars_that_fill_it() -> None:
    from t2istudy.analysis.plots import failure_plot

    tier = make_geneval_tier(n_per_task=2)
    scores = tier[["id", "prompt", "task"]].assign(
        score=0.0, detected="red circle", geneval_per_task=2, encoder="e", strategy="s"
    )
    fig, data = failure_plot(failure_shares(classify(scores)))
    axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in axes] == list(make_geneval_tier(1)["task"])
    widths = [sum(patch.get_width() for patch in ax.patches) for ax in axes]
    assert widths == pytest.approx([1.0] * len(axes))  # each arm's segments add up to all of its images
    assert set(data["arm"]) == {"e s"}
