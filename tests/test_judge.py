"""The pixel judge: validation figures, independently drawn images, detection details, bad input."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from t2istudy.scoring.judge import degrade, detect, judge, validate
from t2istudy.world.shapes import Obj, Scene, render
from t2istudy.world.shapes_benchmark import make_benchmark


@pytest.fixture(scope="module")
def bench():
    return make_benchmark(50, seed=0)


def overall(table, condition, kind):
    row = table[(table.condition == condition) & (table.kind == kind) & (table.skill == "all")]
    return row.iloc[0]


def test_validation_ground_truth_and_hard_negatives(bench):
    table = validate(bench, noise_levels=(), blur_levels=(), resolution=32)
    pos, neg = overall(table, "clean", "positive"), overall(table, "clean", "negative")
    assert pos.n == 400 and neg.n == 400  # every benchmark item has a hard negative
    assert pos.accuracy >= 0.99  # measured 1.000
    assert neg.accept_rate <= 0.02  # measured 0.000
    per_skill = table[(table.skill != "all") & (table.kind == "positive")]
    assert len(per_skill) == 8 and (per_skill.accuracy >= 0.98).all()


def test_validation_under_noise_and_blur(bench):
    small = bench.groupby(bench["skills"].map(lambda s: s[0])).head(15)
    table = validate(small, noise_levels=(20.0,), blur_levels=(1.0,), resolution=32, seed=1)
    # measured on 400 prompts: noise 20 -> 0.998, blur 1.0 -> 1.000, negatives accepted 0.000
    assert overall(table, "noise 20", "positive").accuracy >= 0.95
    assert overall(table, "blur 1", "positive").accuracy >= 0.95
    assert overall(table, "noise 20", "negative").accept_rate <= 0.02
    assert overall(table, "blur 1", "negative").accept_rate <= 0.02


def test_resolution_64(bench):
    rows = bench.groupby(bench["skills"].map(lambda s: s[0])).head(5)
    assert all(judge(render(r.scene, 64), r.spec)[0] for r in rows.itertuples())


def draw_independently(rng, side):
    """Shapes drawn with plain PIL (aliased, off-palette colours, equilateral triangles, both ways up)."""
    colors = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
    backgrounds = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
    background = list(backgrounds)[rng.integers(3)]
    image = Image.new("RGB", (side, side), backgrounds[background])
    draw = ImageDraw.Draw(image)
    placed, truth = [], []
    for _ in range(200):
        if len(truth) == int(rng.integers(1, 4)) or len(truth) == 3:
            break
        r = rng.uniform(0.12, 0.2) * side
        x, y = rng.uniform(r + 1, side - r - 1, 2)
        if any(abs(x - a) < r + b + 3 and abs(y - c) < r + b + 3 for a, c, b in placed):
            continue
        placed.append((x, y, r))
        shape, color = ["circle", "square", "triangle"][rng.integers(3)], list(colors)[rng.integers(4)]
        if shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colors[color])
        elif shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=colors[color])
        else:
            h = r * np.sqrt(3) / 2
            up = rng.random() < 0.5
            apex, base = (y - h, y + h) if up else (y + h, y - h)
            draw.polygon([(x, apex), (x + r, base), (x - r, base)], fill=colors[color])
        truth.append((color, shape))
    return np.asarray(image), background, sorted(truth)


def test_independently_drawn_images():
    rng = np.random.default_rng(7)
    correct = total = 0
    for side in (32, 64):
        for _ in range(60):
            image, background, truth = draw_independently(rng, side)
            found_bg, objects = detect(image)
            correct += found_bg == background and sorted((o.color, o.shape) for o in objects) == truth
            total += 1
    assert correct / total >= 0.99  # measured 400/400 on another seed


def test_detect_measures_position_and_size():
    scene = Scene(
        "white", [Obj("square", "blue", 0.125, 0.25, 0.75), Obj("circle", "red", 0.1875, 0.625, 0.3125)]
    )
    background, objects = detect(render(scene, 32))
    assert background == "white"
    by_color = {o.color: o for o in objects}
    blue, red = by_color["blue"], by_color["red"]
    assert (blue.shape, blue.x, blue.y, blue.extent) == ("square", 0.25, 0.75, 0.125)  # box 4..12 x 20..28
    assert (red.shape, red.x, red.y) == ("circle", 0.625, 0.3125)
    assert red.extent == pytest.approx(0.1875, abs=1 / 32)


def test_verdicts_and_fraction():
    scene = Scene(
        "black", [Obj("triangle", "yellow", 0.2, 0.3, 0.5), Obj("circle", "green", 0.13, 0.75, 0.5)]
    )
    spec = {
        "constraints": [
            {"type": "background", "color": "black"},
            {"type": "count", "color": "yellow", "shape": "triangle", "op": "==", "n": 1},
            {"type": "relation", "rel": "left_of", "a": {"color": "green"}, "b": {"color": "yellow"}},
            {"type": "relation", "rel": "larger", "a": {"color": "yellow"}, "b": {"color": "green"}},
        ]
    }
    assert judge(render(scene), spec) == (False, 0.75)
    spec["constraints"][2]["rel"] = "right_of"
    assert judge(render(scene), spec) == (True, 1.0)


def test_degrade_and_inputs():
    rng = np.random.default_rng(0)
    image = render(Scene("gray", [Obj("square", "red", 0.2, 0.5, 0.5)]))
    assert np.array_equal(degrade(image, rng), image)
    noisy = degrade(image, rng, noise=20.0)
    assert 15 < np.std(noisy.astype(float) - image) < 25
    assert judge(Image.fromarray(image), {"constraints": [{"type": "all", "color": "red"}]}) == (True, 1.0)
    assert judge(image / 255.0, {"constraints": [{"type": "all", "color": "red"}]}) == (True, 1.0)
    with pytest.raises(ValueError, match="RGB image"):
        detect(np.zeros((32, 32)))
    with pytest.raises(ValueError, match="square image"):
        detect(np.zeros((32, 48, 3)))
    with pytest.raises(ValueError, match="NaN"):
        detect(np.full((32, 32, 3), np.nan))
