"""The small latent presets: the GenEval-style tier, its summary, the autoencoder and the latent cache.

Values are checked, not just run: every ground-truth scene passes its spec and a hard negative of each
task fails; overall is the mean of the task means; cached latents equal on-the-fly ones; a resumed
latent run equals an uninterrupted one bit for bit.
"""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import AutoencoderKL
from helpers import FakeEncoder, tiny_train_options

from t2istudy.diffusion.autoencoder import (
    RECIPES,
    build_autoencoder,
    get_or_train,
    get_recipe,
    reconstruct,
    released_dir,
)
from t2istudy.diffusion.checkpoint import final_weights
from t2istudy.diffusion.data import shapes_pool, to_tensor
from t2istudy.diffusion.latents import LatentCache, LatentPairs, sample_latents
from t2istudy.diffusion.options import TrainOptions
from t2istudy.diffusion.train import train
from t2istudy.diffusion.train_folder import read_train_log
from t2istudy.scoring.judge import judge
from t2istudy.scoring.summaries import summarize_geneval
from t2istudy.text.cache import EmbeddingCache
from t2istudy.world.shapes import render, scene_satisfies
from t2istudy.world.shapes_benchmark import hard_negative, make_benchmark
from t2istudy.world.shapes_geneval import EXTRA_TASKS, TASKS, make_geneval_tier

POOL = 32


# ---- the GenEval-style tier ---------------------------------------------------------------------------------


def test_geneval_tier_truth_passes_and_a_hard_negative_of_each_task_fails():
    tier = make_geneval_tier(n_per_task=20, seed=0)
    assert tier.groupby("task").size().to_dict() == dict.fromkeys((*TASKS, *EXTRA_TASKS), 20)
    assert tier["prompt"].is_unique and all(p.split()[0] in ("a", "an") for p in tier["prompt"])
    rng = np.random.default_rng(0)
    for row in tier.itertuples():
        assert scene_satisfies(row.scene, row.spec), row.prompt
        assert judge(render(row.scene), row.spec)[0], row.prompt  # the judge reads the truth right
    for task in TASKS:
        rows = tier[tier["task"] == task]
        for row in rows.head(5).itertuples():
            negative = hard_negative(row.scene, row.spec, rng, skill=task)
            assert negative is not None and not scene_satisfies(negative, row.spec), row.prompt
            assert not judge(render(negative), row.spec)[0], row.prompt


def test_geneval_tier_uses_seen_compositions_and_geneval_rules():
    tier = make_geneval_tier(n_per_task=30, seed=1)
    held = {("blue", "triangle"), ("red", "square"), ("green", "circle")}
    for row in tier.itertuples():
        for c in row.spec["constraints"]:
            assert (c.get("color"), c.get("shape")) not in held
        assert not any((o.color, o.shape) in held for o in row.scene.objects)
    counting = tier[tier["task"] == "counting"]
    assert {c["op"] for s in counting["spec"] for c in s["constraints"]} == {"=="}  # counting is exact
    for row in tier.itertuples():  # exactly the named objects: clutter never passes by chance
        total = [c for c in row.spec["constraints"] if c["type"] == "count" and c["shape"] is None]
        assert total == [
            {"type": "count", "color": None, "shape": None, "op": "==", "n": len(row.scene.objects)}
        ]
    single = tier[tier["task"] == "single_object"]["spec"].iloc[0]["constraints"]
    assert single[0]["op"] == ">=" and single[0]["color"] is None  # GenEval: the object is there
    assert make_geneval_tier(5, seed=1)["prompt"].tolist() == tier.groupby("task").head(5)["prompt"].tolist()


def test_geneval_overall_is_the_mean_of_the_six_task_means():
    scores = {
        "single_object": [1, 1],
        "two_object": [1, 0, 0, 0],
        "counting": [0, 1],
        "colors": [1, 1, 1, 0],
        "position": [0, 0],
        "color_attr": [0, 0, 0, 1],
    }
    table = pd.DataFrame(
        [
            {"id": f"{t}-{i}", "task": t, "score": float(v)}
            for t, vs in scores.items()
            for i, v in enumerate(vs)
        ]
    )
    summary = summarize_geneval(table, n_boot=200)
    assert summary.loc["two_object", "mean"] == 0.25 and summary.loc["colors", "mean"] == 0.75
    # (1 + 0.25 + 0.5 + 0.75 + 0 + 0.25) / 6, not the prompt mean 8 / 18
    assert summary.loc["overall", "mean"] == pytest.approx(2.75 / 6)
    assert summary.loc["overall", "n"] == 18
    assert summary.loc["overall", "ci_low"] <= 2.75 / 6 <= summary.loc["overall", "ci_high"]
    with pytest.raises(ValueError, match="no 'position' prompts"):
        summarize_geneval(table[table["task"] != "position"])


# ---- autoencoder and latent cache ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """A randomly initialised autoencoder of the tiny recipe's shape, saved as a diffusers folder."""
    path = tmp_path_factory.mktemp("vae") / "vae"
    torch.manual_seed(0)
    vae = build_autoencoder(RECIPES["shapes-tiny"])
    vae.register_to_config(scaling_factor=0.7)
    vae.save_pretrained(path)
    return path


def test_latent_cache_equals_on_the_fly_encoding(tiny_vae, tmp_path, monkeypatch):
    vae = AutoencoderKL.from_pretrained(tiny_vae).eval()
    data = shapes_pool(13, 0, 32)
    cache = LatentCache.get_or_build(tmp_path, vae, data, "pool13", batch_size=5, progress=False)
    assert cache.moments.shape == (13, 8, 16, 16) and cache.meta["scaling_factor"] == 0.7
    for rows in ([0, 1, 2, 3], [12, 4, 7]):
        images = torch.stack([data[i][0] for i in rows])
        with torch.no_grad():
            online = vae.encode(images).latent_dist.sample(generator=torch.Generator().manual_seed(9)) * 0.7
        moments = torch.from_numpy(np.array(cache.moments[rows]))
        cached = sample_latents(moments, torch.Generator().manual_seed(9), 0.7)
        torch.testing.assert_close(cached, online, rtol=0, atol=1e-5)
    calls = []
    monkeypatch.setattr(AutoencoderKL, "encode", lambda *a, **k: calls.append(1))
    again = LatentCache.get_or_build(tmp_path, vae, data, "pool13", batch_size=5, progress=False)
    assert again.path == cache.path and calls == []  # found, not re-encoded
    pairs = LatentPairs(again, data.captions)
    assert pairs[3][1] == data.captions[3] and torch.equal(
        pairs[3][0], torch.from_numpy(np.array(cache.moments[3]))
    )
    with pytest.raises(ValueError, match="holds 13 items but the dataset has 12"):
        LatentPairs(again, data.captions[:12])


def test_truncated_latent_cache_names_the_file_and_the_fix(tiny_vae, tmp_path):
    vae = AutoencoderKL.from_pretrained(tiny_vae).eval()
    cache = LatentCache.get_or_build(tmp_path, vae, shapes_pool(4, 0, 32), "pool4", progress=False)
    data = (cache.path / "moments.npy").read_bytes()
    (cache.path / "moments.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"moments\.npy is unreadable.*delete .* and rerun"):
        LatentCache(cache.path)


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    EmbeddingCache.build(FakeEncoder(), "norm_mean", shapes_pool(POOL, 0, 32).captions, root, progress=False)
    return root


def latent_options(text_cache, vae, out, **kw) -> TrainOptions:
    """The tiny trainer options (tests/helpers.py) on cpu-tiny-latent, this module's pool and the tiny VAE."""
    latent = dict(preset="cpu-tiny-latent", pool_size=POOL, vae_path=str(vae))
    return tiny_train_options(
        text_cache, out, latent_cache_dir=str(out.parent / "latents"), **{**latent, **kw}
    )


def test_latent_run_resumes_bitwise_and_cache_matches_online(text_cache, tiny_vae, tmp_path):
    full = train(latent_options(text_cache, tiny_vae, tmp_path / "full", use_ema=True))
    part = train(latent_options(text_cache, tiny_vae, tmp_path / "part", use_ema=True, stop_after_steps=3))
    train(
        latent_options(text_cache, tiny_vae, tmp_path / "part", use_ema=True, resume_from_checkpoint="latest")
    )
    for which in ("final", "raw"):
        a, b = final_weights(full, which), final_weights(part, which)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_train_log(full) == read_train_log(part)
    # Reading cached moments trains the same model as encoding every batch on the fly.
    online = train(latent_options(text_cache, tiny_vae, tmp_path / "online", latents="online"))
    cached = train(latent_options(text_cache, tiny_vae, tmp_path / "cached", latents="cache"))
    for x, y in zip(read_train_log(online), read_train_log(cached), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)


def test_latents_cache_needs_a_vae_preset(text_cache, tmp_path):
    with pytest.raises(ValueError, match="--latents cache needs a preset with a VAE"):
        train(TrainOptions(preset="cpu-tiny", latents="cache", output_dir=str(tmp_path / "r")))


def test_the_preset_autoencoder_ships_as_a_release_of_its_recipe(tmp_path):
    """The package's released shapes-f2c4 is the current recipe's (a recipe change needs a new release),
    and get_or_train copies it instead of training."""
    released = released_dir("shapes-f2c4")
    assert released is not None, (
        "retrain with get_or_train(..., use_released=False) and copy it to the release"
    )
    summary = json.loads((released / "summary.json").read_text())
    assert summary["recipe"] == json.loads(json.dumps(dataclasses.asdict(get_recipe("shapes-f2c4"))))
    path = get_or_train("shapes-f2c4", root=tmp_path, progress=False)
    assert path.parent == tmp_path
    got = (path / "diffusion_pytorch_model.safetensors").read_bytes()
    assert got == (released / "diffusion_pytorch_model.safetensors").read_bytes()


@pytest.mark.slow
def test_autoencoder_round_trip_is_read_right_by_the_judge():
    """>= 99% of reconstructed ground-truth scenes of both tiers pass their spec (the preset's autoencoder
    as the study uses it: the package's release, or trained once per machine under cache/autoencoders/)."""
    vae = AutoencoderKL.from_pretrained(get_or_train("shapes-f2c4", progress=False)).eval()
    bench = pd.concat([make_geneval_tier(50, seed=3), make_benchmark(25, seed=3)], ignore_index=True)
    images = torch.stack([to_tensor(render(s, 32)) for s in bench["scene"]])
    recon = ((reconstruct(vae, images) + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    passed = [judge(im, spec)[0] for im, spec in zip(recon, bench["spec"], strict=True)]
    assert np.mean(passed) >= 0.99, np.mean(passed)


def test_ladder_climbs_rungs_once_and_draws_both_tiers(text_cache, tiny_vae, tmp_path, monkeypatch):
    from t2istudy.reports import ladder
    from t2istudy.study.tiers import make_tier

    calls = []
    real_train = ladder.train
    monkeypatch.setattr(ladder, "train", lambda opts: calls.append(opts.max_train_steps) or real_train(opts))
    options = latent_options(text_cache, tiny_vae, tmp_path / "unused")
    keep = {
        k: getattr(options, k)
        for k in (
            "pool_size",
            "cache_dir",
            "vae_path",
            "latent_cache_dir",
            "train_batch_size",
            "lr_warmup_steps",
            "checkpointing_steps",
        )
    }
    for tier in ("geneval", "heldout"):  # the tiers' prompts embedded by the fake encoder, as prepare would
        prompts = make_tier(tier, 1)["prompt"].tolist()
        EmbeddingCache.build(FakeEncoder(), "norm_mean", prompts, text_cache, progress=False)
    kw = dict(
        preset="cpu-tiny-latent", encoder="fake-8", sizes={"geneval": 1, "heldout": 1}, train_options=keep
    )
    table = ladder.climb(tmp_path / "lad", [4, 2], **kw)
    assert table["steps"].tolist() == [2, 4] and calls == [2, 4]
    assert (table["train_seconds"].diff().dropna() > 0).all()  # cumulative training time
    from t2istudy.study.provenance import git_state

    assert table[["git_commit", "git_dirty"]].drop_duplicates().values.tolist() == [list(git_state())]
    assert {"geneval_overall", "geneval_color_attr", "heldout_overall", "heldout_attribute"} <= set(
        table.columns
    )
    again = ladder.climb(tmp_path / "lad", [2, 4], **kw)  # finished rungs are skipped, nothing retrains
    assert calls == [2, 4] and again["train_seconds"].tolist() == table["train_seconds"].tolist()
    paths = ladder.plot(ladder.collect([tmp_path / "lad"]), tmp_path / "fig")
    assert sorted(p.name for p in paths) == ["ladder.csv", "ladder.md", "ladder.pdf", "ladder.png"]
    md = (tmp_path / "fig" / "ladder.md").read_text().splitlines()
    assert len(md) == 2 + 2 and md[2].startswith("| lad | 2 |")  # header, rule, one row per rung


def test_a_ladders_lever_preset_is_registered_again_from_its_folder(tmp_path):
    """benchmarks/ladder.py saves a lever as {"base", "changes"}; loading the ladder's weights later needs
    the same preset under the same name, U-Net changes merged into the base's U-Net."""
    import json

    from t2istudy.diffusion.model import PRESETS, get_preset
    from t2istudy.reports import ladder

    folder = tmp_path / "wide"
    folder.mkdir()
    changes = {"prediction_type": "v_prediction", "unet": {"cross_attention_dim": 128}}
    (folder / "preset.json").write_text(json.dumps({"base": "cpu-latent", "changes": changes}))
    try:
        assert ladder.register_saved(folder) == "cpu-latent+wide"
        preset = get_preset("cpu-latent+wide")
        assert preset.prediction_type == "v_prediction" and preset.cross_attention_dim == 128
        assert preset.unet["block_out_channels"] == get_preset("cpu-latent").unet["block_out_channels"]
    finally:
        PRESETS.pop("cpu-latent+wide", None)
    assert ladder.register_saved(tmp_path) is None  # no preset.json: a plain preset's ladder


def test_object_breakdown_counts_verdicts_and_empty_images_per_named_object(tmp_path):
    """Hand-made rung: 3 circle prompts (1 pass, 2 with nothing drawn), 1 square (pass), 2 colours
    prompts for a yellow circle (0 and 1): the breakdown and its Markdown cells are those counts."""
    from t2istudy.reports import ladder

    rung = tmp_path / "runs" / "lad" / "rung-04000"
    rung.mkdir(parents=True)
    pd.DataFrame(
        {
            "prompt": [
                "a photo of a circle",
                "a drawing of one circle",
                "a circle",
                "a photo of a square",
                "a photo of a yellow circle",
                "a drawing of one yellow circle",
                "a circle and a square",
            ],
            "task": ["single_object"] * 4 + ["colors"] * 2 + ["two_object"],
            "score": [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0],
            "n_objects": [1, 0, 0, 1, 0, 1, 2],
        }
    ).to_csv(rung / "scores_geneval.csv", index=False)
    table = pd.DataFrame({"ladder": ["lad"], "steps": [4000], "machine_minutes": [44.1]})
    got = ladder.object_breakdown(table, tmp_path / "runs").set_index(["task", "object"])
    assert got.loc[("single_object", "circle"), ["prompts", "verdict", "empty"]].tolist() == [
        3,
        0.3333,
        0.6667,
    ]
    assert got.loc[("single_object", "square"), ["prompts", "verdict", "empty"]].tolist() == [1, 1.0, 0.0]
    assert got.loc[("colors", "yellow circle"), ["prompts", "verdict", "empty"]].tolist() == [2, 0.5, 0.5]
    assert len(got) == 3  # the two-object prompt is in neither task
    paths = ladder.write_object_breakdown(got.reset_index(), tmp_path / "fig")
    md = paths[1].read_text()
    assert "| lad | 4000 | 0.33 (0.67) | 1.00 (0.00) |" in md and "| lad | 4000 | 0.50 |" in md


def test_ladder_refuses_a_decaying_schedule_over_several_rungs_before_training(tmp_path, monkeypatch):
    """cpu-latent-v decays its rate (cosine) over max_train_steps: a second rung cannot resume the first,
    so the ladder says so before it spends the first rung's minutes; one rung, or a constant rate, is fine."""
    from t2istudy.reports import ladder

    monkeypatch.setattr(ladder, "train", lambda opts: pytest.fail("trained before refusing"))
    with pytest.raises(ValueError, match=r"rungs \[1000, 3000\] under lr_scheduler 'cosine'.*--rungs 3000"):
        ladder.climb(tmp_path / "v", [3000, 1000], preset="cpu-latent-v")
    with pytest.raises(ValueError, match="'cosine'"):  # also the base preset with the lever given
        ladder.check_schedule("cpu-latent", [1000, 2000], {"lr_scheduler": "cosine"})
    assert not (tmp_path / "v" / "train").exists()
    ladder.check_schedule("cpu-latent-v", [3000])  # one rung: nothing resumes
    ladder.check_schedule("cpu-latent", [1000, 2000])  # the preset's constant_with_warmup
    ladder.check_schedule("cpu-latent-v", [1000, 2000], {"lr_scheduler": "constant"})


def test_validation_split_is_training_distribution_and_disjoint_from_both_tiers():
    from t2istudy.study.tiers import make_tier, make_validation_split

    split = make_validation_split(60)
    held = {("blue", "triangle"), ("red", "square"), ("green", "circle")}
    for row in split.itertuples():
        assert scene_satisfies(row.scene, row.spec) and judge(render(row.scene), row.spec)[0], row.prompt
        assert not any((o.color, o.shape) in held for o in row.scene.objects)
    stated = [any(c["type"] == "background" for c in s["constraints"]) for s in split["spec"]]
    assert 0.5 < sum(stated) / len(stated) < 0.9  # captions name the background 70% of the time
    tiers = set(make_tier("geneval", 50)["prompt"]) | set(make_tier("heldout", 125)["prompt"])
    assert not set(split["prompt"]) & tiers
    # A colourless share: those captions name no colour and are judged on shape counts; the others as before.
    mixed = make_validation_split(60, p_colourless=0.5)
    colourless = [
        not any(c in row.prompt for c in ("red", "green", "blue", "yellow")) for row in mixed.itertuples()
    ]
    assert 20 <= sum(colourless) <= 40
    for row, bare in zip(mixed.itertuples(), colourless, strict=True):
        counts = [c for c in row.spec["constraints"] if c["type"] == "count" and c["shape"]]
        assert all((c["color"] is None) == bare for c in counts), row.prompt
        assert scene_satisfies(row.scene, row.spec) and judge(render(row.scene), row.spec)[0], row.prompt
    assert not set(mixed["prompt"]) & tiers
