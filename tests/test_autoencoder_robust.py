"""The shapes autoencoder on scenes another renderer drew (issue 36): jittered colours, other sizes,
Lanczos edges (``tests/independent_render.py``, written apart from every renderer in the package)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from independent_render import draw_independent

from t2istudy.diffusion.autoencoder import (
    RobustAutoencoderRecipe,
    get_or_train,
    get_recipe,
    reconstruct,
    released_dir,
    scene_batch,
    varied_render,
)
from t2istudy.diffusion.data import to_tensor
from t2istudy.scoring.judge import judge
from t2istudy.world.shapes import PALETTE, Obj, Scene, render
from t2istudy.world.shapes_geneval import TASKS, make_geneval_tier

ROBUST = "shapes-f2c4r"


def independent_tier(n_per_task: int = 40, seed: int = 5):
    """GenEval-style scenes and specs (six tasks), each drawn by the independent renderer (uint8)."""
    tier = make_geneval_tier(n_per_task, seed=seed)
    tier = tier[tier.task.isin(TASKS)].reset_index(
        drop=True
    )  # GenEval's six (the colour-named extra left out)
    rng = np.random.default_rng(seed)
    return tier, np.stack([draw_independent(scene, rng) for scene in tier.scene])


def round_trip_read_right(recipe: str, tier, images: np.ndarray) -> np.ndarray:
    vae = AutoencoderKL.from_pretrained(get_or_train(recipe, progress=False)).eval()
    x = torch.stack([to_tensor(im) for im in images])
    recon = ((reconstruct(vae, x) + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return np.array([judge(im, spec)[0] for im, spec in zip(recon, tier.spec, strict=True)])


def test_the_older_recipes_keep_their_hashes_and_release():
    """The robust recipe is a subclass: shapes-f2c4's fields, folder name and release are unchanged."""
    assert get_recipe("shapes-f2c4").key() == "shapes-f2c4-8e8174dd7f"
    assert released_dir("shapes-f2c4") is not None
    assert isinstance(get_recipe(ROBUST), RobustAutoencoderRecipe)
    assert get_recipe(ROBUST).key() != get_recipe("shapes-f2c4").key()


def test_varied_render_moves_colours_and_edges_but_keeps_the_scene():
    scene = Scene("white", [Obj("square", "green", 0.2, 0.5, 0.5)])
    recipe = get_recipe(ROBUST)
    exact = render(scene, 32)
    draws = [varied_render(scene, np.random.default_rng(k), recipe) for k in range(40)]
    centres = np.array([d[16, 16] for d in draws], dtype=int)
    assert np.abs(centres - np.array(PALETTE["green"])).max() <= recipe.colour_jitter
    assert len({tuple(c) for c in centres}) > 10  # the colour moves from draw to draw
    assert any(not np.array_equal(d, exact) for d in draws)
    for d in draws:  # still a green square on white for the judge
        assert judge(
            d, {"constraints": [{"type": "count", "color": "green", "shape": "square", "op": "==", "n": 1}]}
        )[0]


def test_robust_scene_batch_is_a_pure_function_of_the_step():
    recipe = dataclasses.replace(get_recipe(ROBUST), batch_size=6)
    assert torch.equal(scene_batch(recipe, 3), scene_batch(recipe, 3))
    assert not torch.equal(scene_batch(recipe, 3), scene_batch(recipe, 4))


def test_the_independent_renderer_draws_scenes_the_judge_reads():
    """The test's scenes are fair: the judge reads the independently drawn originals right."""
    tier, images = independent_tier(20, seed=5)
    assert len(images) == 120
    passed = [judge(im, spec)[0] for im, spec in zip(images, tier.spec, strict=True)]
    assert np.mean(passed) == 1.0
    assert not np.array_equal(images[0], render(tier.scene.iloc[0], 32))


def test_the_robust_autoencoder_ships_as_a_release_of_its_recipe():
    released = released_dir(ROBUST)
    if released is None:  # it ships only once it meets the >= 99% target (docs/training.md)
        pytest.skip("shapes-f2c4r has no release in t2istudy/data/autoencoders/")
    summary = json.loads((released / "summary.json").read_text())
    assert summary["recipe"] == json.loads(json.dumps(dataclasses.asdict(get_recipe(ROBUST))))


@pytest.mark.slow
def test_robust_autoencoder_round_trip_on_independently_drawn_scenes():
    """>= 99% of 240 independently drawn GenEval-style scenes are read right after the round trip."""
    tier, images = independent_tier(40, seed=5)
    passed = round_trip_read_right(ROBUST, tier, images)
    assert passed.mean() >= 0.99, (passed.sum(), len(passed))


if (
    __name__ == "__main__"
):  # the measurement: python tests/test_autoencoder_robust.py shapes-f2c4 shapes-f2c4r
    import sys

    torch.set_num_threads(1)
    scenes, drawn = independent_tier(40, seed=5)
    for name in sys.argv[1:] or ["shapes-f2c4", ROBUST]:
        read = round_trip_read_right(name, scenes, drawn)
        misses = [
            f"{scenes.task[i]}: {scenes.prompt[i]} ({scenes.scene[i].background})"
            for i in np.flatnonzero(~read)
        ]
        print(f"{name}: {read.sum()} of {len(read)} read right ({read.mean():.3f})", *misses, sep="\n  ")
