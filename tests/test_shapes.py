"""The shapes world: rendering, specs, held-out compositions, captions, benchmark shape and determinism."""

import json
import re

import numpy as np
import pytest

from t2istudy.world.genai_bench import SKILLS
from t2istudy.world.shapes import (
    BACKGROUNDS,
    COVERED_SKILLS,
    DEFAULT_HOLDOUT,
    PALETTE,
    SIZES,
    Holdout,
    Obj,
    Scene,
    ShapesWorld,
    check_constraints,
    render,
    scene_facts,
    scene_satisfies,
    validate_spec,
)
from t2istudy.world.shapes_benchmark import (
    benchmark_from_json,
    benchmark_to_json,
    hard_negative,
    load_benchmark,
    make_benchmark,
    save_benchmark,
)


@pytest.fixture(scope="module")
def bench():
    return make_benchmark(50, seed=0)


@pytest.fixture(scope="module")
def training():
    world = ShapesWorld(seed=0)
    rng = np.random.default_rng(123)
    return [world.sample(rng) for _ in range(3000)]


def test_render_pixels_hand_checked():
    scene = Scene("black", [Obj("square", "red", 0.25, 0.5, 0.5)])  # box 8..24 at 32 px
    image = render(scene, 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image[8:24, 8:24] == PALETTE["red"]).all()
    assert (image[:8] == 0).all() and (image[24:] == 0).all()
    assert int((image == PALETTE["red"]).all(-1).sum()) == 16 * 16
    circle = render(Scene("white", [Obj("circle", "blue", 0.25, 0.5, 0.5)]), 64)
    inside = (circle == PALETTE["blue"]).all(-1).sum()
    assert abs(inside - np.pi * 16**2) < 0.06 * np.pi * 16**2  # disc of radius 16 px, soft rim aside
    assert render(Scene(), 64).shape == (64, 64, 3)


def test_bad_names_are_named():
    with pytest.raises(ValueError, match="purple"):
        Obj("circle", "purple", 0.1, 0.5, 0.5)
    with pytest.raises(ValueError, match="hexagon"):
        Obj("hexagon", "red", 0.1, 0.5, 0.5)
    with pytest.raises(ValueError, match="background"):
        Scene("pink")
    with pytest.raises(ValueError, match="constraint 1 has unknown type 'size'"):
        validate_spec({"constraints": [{"type": "all", "color": "red"}, {"type": "size"}]})


def test_constraints_hand_made_scene():
    red_left = Obj("circle", "red", 0.13, 0.2, 0.5)
    blue_right = Obj("square", "blue", 0.2, 0.7, 0.3)
    scene = Scene("gray", [red_left, blue_right])
    spec = {
        "constraints": [
            {"type": "background", "color": "gray"},
            {"type": "count", "color": "red", "shape": None, "op": "==", "n": 1},
            {"type": "count", "color": None, "shape": None, "op": "==", "n": 3},
            {"type": "relation", "rel": "left_of", "a": {"color": "red"}, "b": {"color": "blue"}},
            {"type": "relation", "rel": "above", "a": {"color": "red"}, "b": {"color": "blue"}},
            {"type": "relation", "rel": "larger", "a": {"shape": "square"}, "b": {"shape": "circle"}},
            {"type": "more", "a": {"color": "blue"}, "b": {"color": "green"}},
            {"type": "all", "color": "red", "shape": None},
            {"type": "relation", "rel": "left_of", "a": {"color": "red"}, "b": {"color": "red"}},
        ]
    }
    validate_spec(spec)
    assert check_constraints(scene.background, scene.objects, spec) == [
        True,
        True,
        False,
        True,
        False,
        True,
        True,
        False,
        False,
    ]


def test_scene_facts():
    scene = Scene("white", [Obj("triangle", "green", 0.13, 0.8, 0.2), Obj("circle", "red", 0.2, 0.3, 0.7)])
    facts = scene_facts(scene)
    assert facts["background"] == "white" and facts["n_objects"] == 2
    assert facts["count_red"] == 1 and facts["count_blue"] == 0 and facts["count_triangle"] == 1
    assert facts["count_green_triangle"] == 1 and facts["count_red_triangle"] == 0
    assert facts["left_color"] == "red" and facts["left_shape"] == "circle"
    assert facts["top_color"] == "green" and facts["larger_color"] == "red"
    assert len(facts) == 2 + len(PALETTE) + 3 + len(PALETTE) * 3 + 4
    assert scene_facts(Scene())["left_color"] == "none"


def held_out_patterns(holdout: Holdout) -> list[re.Pattern]:
    number = {1: "(a|one|1)", 2: "(two|2|a pair of)", 3: "(three|3)", 4: "(four|4)"}
    pats = [re.compile(rf"\b{c} {s}s?\b") for c, s in holdout.pairs]
    pats += [re.compile(rf"\b{number[n]} (small |large )?\w+ {s}s\b") for n, s in holdout.counts]
    words = {
        "left_of": "left of",
        "right_of": "right of",
        "above": "(above|over)",
        "below": "(below|under|beneath)",
    }
    inverse = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}
    for a, rel, b in holdout.relations:
        pats.append(
            re.compile(rf"\b{a} \w+ (to the |on the )?{words[rel]} (a|another) (small |large )?{b}\b")
        )
        pats.append(
            re.compile(
                rf"\b{b} \w+ (to the |on the )?{words[inverse[rel]]} (a|another) (small |large )?{a}\b"
            )
        )
    return pats


def test_training_never_contains_a_held_out_composition(training):
    patterns = held_out_patterns(DEFAULT_HOLDOUT)
    for scene, text in training:
        assert not DEFAULT_HOLDOUT.scene_violations(scene), text
        assert not any(p.search(text) for p in patterns), text
    # the patterns do catch held-out text, and every held-out pair/colour still appears in other kinds
    assert patterns[0].search("two blue triangles on white")
    assert any(p.search("a red circle to the left of a blue square") for p in patterns)
    seen = {(o.color, o.shape) for scene, _ in training for o in scene.objects}
    assert seen == set(DEFAULT_HOLDOUT.allowed_pairs())
    assert {o.color for s, _ in training for o in s.objects} == set(PALETTE)


def test_captions_are_true_and_varied(training):
    texts = [t for _, t in training]
    assert len(set(texts)) > 0.7 * len(texts)
    for phrase in (
        "a pair of",
        " on a ",
        "against a",
        "to the left of",
        "all of them",
        "and no ",
        "every shape is",
        "that is not",
        "more ",
        "fewer ",
        "one large and one small",
    ):
        assert any(phrase in t for t in texts), phrase
    for scene, text in training[:500]:  # the colours named are the colours present, the background if named
        positive = re.sub(r"(no \w+ shapes|that is not \w+)", "", text)
        named = {c for c in PALETTE if re.search(rf"\b{c}\b", positive)}
        assert named <= {o.color for o in scene.objects} | set(BACKGROUNDS), text
        for bg in BACKGROUNDS:
            if f"{bg} background" in text or f"on {bg}" in text:
                assert scene.background == bg, text


def test_batch_shapes_and_determinism():
    images, captions, scenes = ShapesWorld(seed=3).batch(6, np.random.default_rng(5), resolution=32)
    again, captions2, _ = ShapesWorld(seed=3).batch(6, np.random.default_rng(5), resolution=32)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and captions == captions2 and len(scenes) == 6
    assert all(1 <= len(s.objects) <= 4 for s in scenes)


def test_benchmark_table(bench):
    assert list(bench.columns) == ["id", "prompt", "skills", "spec", "scene"]
    assert len(bench) == 50 * len(COVERED_SKILLS) and bench["id"].is_unique
    primary = bench["skills"].map(lambda s: s[0])
    assert primary.value_counts().to_dict() == dict.fromkeys(COVERED_SKILLS, 50)
    assert all(set(s) <= set(SKILLS) for s in bench["skills"])
    for row in bench.itertuples():
        validate_spec(row.spec, row.id)
        json.dumps(row.spec)
        assert scene_satisfies(row.scene, row.spec), row.prompt
        assert 1 <= len(row.scene.objects) <= 4
        assert row.prompt.count("  ") == 0
    for skill in COVERED_SKILLS:  # prompts are distinct within a skill
        assert bench.loc[primary == skill, "prompt"].is_unique


def test_benchmark_is_built_on_held_out_compositions(bench):
    patterns = held_out_patterns(DEFAULT_HOLDOUT)
    for row in bench.itertuples():
        held = DEFAULT_HOLDOUT.scene_violations(row.scene) or any(p.search(row.prompt) for p in patterns)
        assert held, row.prompt


def test_benchmark_deterministic_and_nested(bench):
    again = make_benchmark(50, seed=0)
    assert again["prompt"].tolist() == bench["prompt"].tolist()
    assert [s.to_dict() for s in again["scene"]] == [s.to_dict() for s in bench["scene"]]
    small = make_benchmark(10, seed=0)
    assert set(small["prompt"]) <= set(bench["prompt"])
    assert make_benchmark(10, seed=1)["prompt"].tolist() != small["prompt"].tolist()
    big = make_benchmark(125, seed=0)  # ~1,000 paired prompts for the study
    assert len(big) == 1000


def test_benchmark_json_round_trip_and_errors(bench):
    back = benchmark_from_json(benchmark_to_json(bench.head(20)))
    assert back["prompt"].tolist() == bench["prompt"].head(20).tolist()
    assert back["spec"].tolist() == bench["spec"].head(20).tolist()
    assert back["skills"].tolist() == bench["skills"].head(20).tolist()
    with pytest.raises(ValueError, match="not valid JSON"):
        benchmark_from_json("{oops")
    broken = json.loads(benchmark_to_json(bench.head(3)))
    broken[2]["spec"]["constraints"][0]["type"] = "weird"
    with pytest.raises(ValueError, match=r"item 2 \(attribute-0003\).*unknown type 'weird'"):
        benchmark_from_json(json.dumps(broken))


def test_benchmark_file(bench, tmp_path):
    path = save_benchmark(bench.head(8), tmp_path / "bench.json")
    assert load_benchmark(path)["id"].tolist() == bench["id"].head(8).tolist()
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_benchmark(tmp_path / "missing.json")
    path.write_text('[{"id": "x1", "prompt": "p"}]')
    with pytest.raises(ValueError, match=r"bench.json item 0 \(x1\): needs keys"):
        load_benchmark(path)


def test_hard_negatives_break_the_spec_minimally(bench):
    rng = np.random.default_rng(0)
    for row in bench.itertuples():
        neg = hard_negative(row.scene, row.spec, rng, row.skills[0])
        assert neg is not None and not scene_satisfies(neg, row.spec), row.prompt
        assert abs(len(neg.objects) - len(row.scene.objects)) <= 1
    # counting negatives are counts off by one; sizes stay the world's two sizes
    counting = bench[bench["skills"].map(lambda s: s[0] == "counting")]
    for row in counting.head(10).itertuples():
        neg = hard_negative(row.scene, row.spec, rng, "counting")
        assert abs(len(neg.objects) - len(row.scene.objects)) == 1
        assert {o.size for o in neg.objects} <= set(SIZES.values())


def test_advanced_wordings_in_training_are_true(training):
    def count(scene, color, shape):
        return sum(o.color == color and o.shape == shape for o in scene.objects)

    checked = 0
    for scene, text in training:
        if m := re.search(r"\b(more|fewer) (\w+) (\w+)s than (\w+) (\w+)s", text):
            a, b = count(scene, m[2], m[3]), count(scene, m[4], m[5])
            assert (a > b) if m[1] == "more" else (a < b), text
        elif m := re.search(r"\ba (\w+) that is not (\w+)", text):
            assert len(scene.objects) == 1 and scene.objects[0].shape == m[1], text
            assert scene.objects[0].color != m[2], text
        elif m := re.search(r"every shape is a (\w+) (\w+)", text):
            assert all((o.color, o.shape) == (m[1], m[2]) for o in scene.objects), text
        elif m := re.search(r"and no (\w+) shapes", text):
            assert all(o.color != m[1] for o in scene.objects), text
        else:
            continue
        checked += 1
    assert checked > 300


def test_colourless_captions_name_the_shapes_only_and_leave_the_default_stream_alone():
    from t2istudy.diffusion.data import shapes_pool
    from t2istudy.text.cache import caption_hash

    # p_colourless=0 draws nothing extra: the study's training pool is the one its caches were built from
    assert caption_hash(shapes_pool(8192, 0, 32).captions) == "7c84e8cad467e602"
    _, default, _ = ShapesWorld(seed=3).batch(50, np.random.default_rng(5))
    assert ShapesWorld(seed=3, p_colourless=0.0).batch(50, np.random.default_rng(5))[1] == default
    _, texts, scenes = ShapesWorld(seed=3, p_colourless=1.0).batch(300, np.random.default_rng(5))
    for scene, text in zip(scenes, texts, strict=True):
        assert not any(re.search(rf"\b{c}\b", text) for c in PALETTE), text
        assert all(re.search(rf"\b{o.shape}s?\b", text) for o in scene.objects), text
    assert any(" above " in t or " left of " in t or " below " in t for t in texts)  # relations stay
    _, some, _ = ShapesWorld(seed=3, p_colourless=0.25).batch(400, np.random.default_rng(5))
    share = np.mean([not any(re.search(rf"\b{c}\b", t) for c in PALETTE) for t in some])
    assert 0.18 < share < 0.32
    with pytest.raises(ValueError, match="p_colourless=1.5 must be in 0..1"):
        ShapesWorld(p_colourless=1.5)
