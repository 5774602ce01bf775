"""The binding levers of issue 36: the pool options change the pool by their declared share (known counts),
a flow-matching run resumed equals an uninterrupted one bit for bit, the flow sampler is exact on an
oracle denoiser, guidance over an interval is CFG where it applies and the conditional prediction
elsewhere, and the GenEval-style tier's colour-named single object leaves GenEval's prompts and overall
unchanged."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import build_tiny_cache, tiny_train_options
from test_sample import NULL, WordText

from t2istudy.diffusion import objectives
from t2istudy.diffusion.checkpoint import final_weights
from t2istudy.diffusion.model import get_preset
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.diffusion.sample import sample
from t2istudy.diffusion.train import diffusion_loss, train
from t2istudy.diffusion.train_folder import read_train_log
from t2istudy.scoring.summaries import summarize_geneval
from t2istudy.world.shapes import PALETTE, ShapesWorld
from t2istudy.world.shapes_geneval import EXTRA_TASKS, TASKS, make_geneval_tier

PRESET = get_preset("cpu-tiny")


# ---- data levers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.0, 0.5, 0.8])
def test_two_object_share_gives_that_many_two_object_scenes(share):
    _, _, scenes = ShapesWorld(seed=3, two_object_share=share).batch(200, np.random.default_rng(3), 32)
    counts = [len(s.objects) for s in scenes]
    assert counts.count(2) == round(share * 200)  # 0, 100, 160
    assert set(counts) - {2} <= {1, 3, 4} and (share == 0.8 or {1, 3, 4} <= set(counts))


def test_default_pool_has_a_quarter_of_two_object_scenes_and_is_unchanged():
    _, captions, scenes = ShapesWorld(seed=3).batch(400, np.random.default_rng(3), 32)
    _, again, _ = ShapesWorld(seed=3, two_object_share=None).batch(400, np.random.default_rng(3), 32)
    assert captions == again
    assert 70 <= sum(len(s.objects) == 2 for s in scenes) <= 130  # uniform over 1..4 objects


def test_named_captions_keep_the_scenes_and_name_every_object_with_its_colour():
    rng = np.random.default_rng
    _, plain, scenes = ShapesWorld(seed=5).batch(300, rng(5), 32)
    _, named, scenes_named = ShapesWorld(seed=5, named_captions=True).batch(300, rng(5), 32)
    assert [s.to_dict() for s in scenes] == [s.to_dict() for s in scenes_named]  # the same scenes
    skill = ("every ", "all of them", "all ", "one large", " not ", "more ", "fewer ", ", and no ", "one ")
    changed = [i for i, (a, b) in enumerate(zip(plain, named, strict=True)) if a != b]
    assert changed and all(any(w in plain[i] for w in skill) for i in changed)  # only skill wordings went
    for text, scene in zip(named, scenes, strict=True):
        words = text.replace(",", " ").split()
        assert " not " not in text and "every" not in words and "no" not in words
        assert all(o.color in words and o.shape in text for o in scene.objects), text


# ---- flow matching ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return build_tiny_cache(tmp_path_factory.mktemp("cache"))


def test_flow_matching_run_resumed_is_bitwise_identical(cache_dir, tmp_path):
    kw = dict(use_ema=True, prediction_type="flow", timestep_sampling="logit_normal", logit_mean=0.5)
    full = train(tiny_train_options(cache_dir, tmp_path / "full", **kw))
    part = train(tiny_train_options(cache_dir, tmp_path / "part", stop_after_steps=3, **kw))
    train(tiny_train_options(cache_dir, tmp_path / "part", resume_from_checkpoint="latest", **kw))
    for which in ("final", "raw"):
        a, b = final_weights(full, which), final_weights(part, which)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_train_log(full) == read_train_log(part) and len(read_train_log(full)) == 6


def test_flow_refuses_min_snr_and_draws_logit_normal_levels():
    with pytest.raises(ValueError, match="pass --snr_gamma 0 with --prediction_type flow"):
        resolve_options(TrainOptions(preset="cpu-latent-v", prediction_type="flow"))
    draw = objectives.timestep_drawer("flow", "logit_normal", 1.0, 1.0, 1000)
    t = draw(torch.Generator().manual_seed(0), 20000)
    assert t.dtype == torch.float32 and 0 < float(t.min()) and float(t.max()) < 1000
    assert float(torch.logit(t / 1000).mean()) == pytest.approx(1.0, abs=0.03)  # the declared location
    assert objectives.timestep_drawer("v_prediction", "uniform", 0.0, 1.0, 1000) is None  # today's draw
    ddpm = objectives.timestep_drawer("v_prediction", "logit_normal", 1.0, 1.0, 1000)
    t = ddpm(torch.Generator().manual_seed(0), 20000)
    assert t.dtype == torch.int64 and float((t >= 500).float().mean()) == pytest.approx(0.841, abs=0.01)


def test_flow_loss_and_noising_by_hand():
    sched = objectives.flow_scheduler(PRESET)
    x0, noise = torch.full((2, 1, 2, 2), 0.5), torch.full((2, 1, 2, 2), -1.0)
    t = torch.tensor([250.0, 750.0])
    noisy = objectives.add_noise(sched, x0, noise, t, "flow")
    assert noisy[:, 0, 0, 0].tolist() == [0.75 * 0.5 - 0.25, 0.25 * 0.5 - 0.75]
    pred = torch.zeros_like(x0)  # target noise - x0 = -1.5 everywhere: MSE 2.25
    assert float(diffusion_loss(pred, x0, noise, t, sched, "flow", None)) == 2.25


def test_flow_sampler_is_exact_on_an_oracle_denoiser():
    """The oracle velocity (x - x0) / s carries every Euler step exactly along the straight line to x0."""
    x0 = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1

    class Oracle(torch.nn.Module):
        def forward(self, x, t, features, mask):
            s = (t.float() / 1000).view(-1, 1, 1, 1)
            return (x - x0) / s

    kw = dict(text=WordText(), null=NULL, preset=PRESET, prediction_type="flow", guidance_scale=3.0)
    for steps in (1, 7, 25):
        image = sample(Oracle(), ["a"], [0], steps=steps, **kw)[0]
        target = ((x0[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
        assert np.abs(image.astype(float) - target).max() <= 1, steps
    with pytest.raises(ValueError, match="flow Euler scheduler, not 'dpm\\+\\+'"):
        sample(
            Oracle(),
            ["a"],
            text=WordText(),
            null=NULL,
            preset=PRESET,
            prediction_type="flow",
            sampler="dpm++",
        )


# ---- guidance interval ------------------------------------------------------------------------------------


def test_guidance_interval_guides_only_inside_it():
    """The unconditional prediction is 0 and the conditional one P, so a guided step predicts sP: an interval
    no step's sigma lies in gives the unguided image, one holding every step plain CFG, a middle one neither."""
    pattern = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    class Linear(torch.nn.Module):
        def forward(self, x, t, features, mask):
            return features[:, 0, 0].view(-1, 1, 1, 1) / 100 * pattern

    def images(**options):
        kw = dict(text=WordText(), null=NULL, preset=PRESET, steps=6)
        return np.stack(sample(Linear(), ["a red circle", "two"], [0], **kw, **options)).astype(int)

    cfg = images(guidance_scale=4.0)
    assert np.array_equal(images(guidance_scale=4.0, guidance_interval=(0.0, float("inf"))), cfg)
    assert np.array_equal(
        images(guidance_scale=4.0, guidance_interval=(1e6, 1e7)), images(guidance_scale=1.0)
    )
    middle = images(guidance_scale=4.0, guidance_interval=(0.3, 5.0))
    assert not np.array_equal(middle, cfg) and not np.array_equal(middle, images(guidance_scale=1.0))
    with pytest.raises(ValueError, match="needs lo < hi"):
        images(guidance_scale=4.0, guidance_interval=(5.0, 0.3))


# ---- the GenEval-style tier's colour-named single object -------------------------------------------------


def test_colour_named_single_object_changes_no_geneval_prompt_and_stays_out_of_overall():
    tier = make_geneval_tier(20)
    six = make_geneval_tier(20, extra_tasks=())
    assert tier.groupby("task").size().to_dict() == dict.fromkeys((*TASKS, *EXTRA_TASKS), 20)
    assert tier.iloc[: len(six)]["prompt"].tolist() == six["prompt"].tolist()
    named = tier[tier["task"] == "single_object_colour_named"]
    assert all(any(f" {c} " in p for c in PALETTE) for p in named["prompt"])
    scores = tier.assign(score=(tier["task"] == "single_object_colour_named").astype(float))
    summary = summarize_geneval(scores)
    assert summary.loc["overall", "mean"] == 0.0 and summary.loc["overall", "n"] == 120
    assert summary.loc["single_object_colour_named", "mean"] == 1.0
    assert summary.drop(index="single_object_colour_named").equals(summarize_geneval(scores.iloc[: len(six)]))
    assert isinstance(summary, pd.DataFrame)


# ---- the harness against the study grid's own runs ------------------------------------------------------


REPO = Path(__file__).resolve().parents[1]


def load_harness(monkeypatch):
    """benchmarks/binding.py as a module (a script, not a package module)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("binding_harness", REPO / "benchmarks" / "binding.py")
    harness = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "binding_harness", harness)  # its dataclasses look themselves up there
    spec.loader.exec_module(harness)
    return harness


def test_harness_reference_row_reads_a_grid_run_on_the_harness_prompts(monkeypatch):
    """`benchmarks/binding.py --reference runs/small2`: the committed small2 run of gemma3-270m norm_mean,
    seed 0, on the tier's 50 prompts per task gives the per-task verdicts of its scores_geneval.csv and the
    overall its metrics.json recorded (the mean of the six task means), and the commit it trained from
    (params.json's, clean; not the dirty one its later re-scoring recorded in metrics.json); a --per_task the
    run was not judged on is refused, not silently compared on fewer prompts."""
    import json

    harness, repo = load_harness(monkeypatch), REPO
    args = SimpleNamespace(encoder="gemma3-270m", strategy="norm_mean", per_task=50, preset="cpu-latent-v")
    row = harness.reference_row(repo / "runs" / "small2", 0, args)
    assert (row["geneval_two_object"], row["geneval_position"], row["geneval_color_attr"]) == (
        0.12,
        0.06,
        0.32,
    )
    metrics = json.loads((repo / "runs/small2/gemma3-270m__norm_mean__seed0/metrics.json").read_text())
    assert row["geneval_overall"] == pytest.approx(metrics["tiers"]["geneval"]["overall"]["mean"])
    assert row["steps"] == 3000 and row["arm"] == "small2 grid run"
    assert (row["git_commit"][:7], row["git_dirty"]) == ("f03717d", False)
    with pytest.raises(ValueError, match="other GenEval-style prompts"):
        harness.reference_row(repo / "runs" / "small2", 0, SimpleNamespace(**{**vars(args), "per_task": 60}))


def test_harness_failure_table_adds_up_and_its_pass_share_is_the_verdict(monkeypatch):
    """`<name>-failures.csv` of the committed full-budget invocation: per arm and binding task the reasons'
    shares add up to 1, and the `pass` share is the task's verdict over both seeds' prompts (the table's
    per-seed verdicts averaged: both seeds judge the same 50 prompts a task); the reference grid run counts
    the prompts the arms were judged on (50 a task and seed, not its tier's other draws)."""
    harness = load_harness(monkeypatch)
    table = pd.read_csv(REPO / "figures" / "binding" / "full-data.csv")
    args = SimpleNamespace(encoder="gemma3-270m", strategy="norm_mean", root=str(REPO / "runs" / "binding"),
                           reference=str(REPO / "runs" / "small2"))  # fmt: skip
    failures = harness.failure_table(table, args)
    per_task = failures.groupby(["arm", "task"])
    assert np.allclose(per_task["share"].sum(), 1.0, atol=1e-3)
    assert (per_task["images"].sum() == 100).all()  # 50 prompts x 2 seeds, reference included
    passed = failures[failures["failure"] == "pass"].set_index(["arm", "task"])["share"]
    for arm, rows in table.groupby("arm"):
        for task in ("two_object", "position", "color_attr"):
            assert passed[(arm, task)] == pytest.approx(rows[f"geneval_{task}"].mean(), abs=1e-4)


def test_combined_reference_comparisons_are_one_family_with_holm(monkeypatch, tmp_path):
    """Hand-computed Holm over three comparisons against the same study runs (p 0.07, 0.9, 0.01: the
    smallest x3, the middle x2, the largest x1, kept non-decreasing); an invocation without one is skipped."""
    harness = load_harness(monkeypatch)
    for name, arm, p in (("a", "two50c25", 0.07), ("b", "dit", 0.9), ("c", "six", 0.01)):
        pd.DataFrame({"arm": [arm], "steps": [3000], "binding_mean_diff": [0.05], "p": [p]}).to_csv(
            tmp_path / f"{name}-vs-reference.csv", index=False
        )
    paired = harness.combined_against_reference(tmp_path, ["a", "b", "c", "no-reference"]).set_index("arm")
    assert paired["p_holm"].to_dict() == pytest.approx({"two50c25": 0.14, "dit": 0.9, "six": 0.03})
    assert harness.combined_against_reference(tmp_path, ["no-reference"]).empty


def test_harness_tables_say_which_commit_trained_their_runs():
    """The harness's markdown ends with the commits its runs trained from: a clean table names its commit,
    one dirty run of three is counted, and runs from before the ladder recorded its commit are said so."""
    from t2istudy.reports.binding_tables import provenance_line

    clean = pd.DataFrame({"git_commit": ["abcdef0123", "abcdef0123"], "git_dirty": [False, False]})
    assert provenance_line(clean) == "Trained from: abcdef0 (a clean tree).\n"
    mixed = pd.DataFrame({"git_commit": ["abcdef0123", "1234567890", None], "git_dirty": [False, True, None]})
    assert provenance_line(mixed) == (
        "Trained from: 1234567, abcdef0 (1 of 2 runs from a dirty tree; 1 run not recorded).\n"
    )
    old = pd.read_csv(REPO / "figures" / "binding" / "full-data.csv")  # trained before the columns existed
    assert provenance_line(old).startswith("Trained from: not recorded")


def scores(values: dict[str, float]) -> pd.DataFrame:
    """A judged GenEval-style table: prompt id -> score, the task read from the id's prefix."""
    return pd.DataFrame(
        {"id": list(values), "task": [i.rsplit("-", 1)[0] for i in values], "score": list(values.values())}
    )


def test_paired_binding_difference_by_hand():
    """Seed 0 gains one of two two-object prompts and the position prompt, seed 1 nothing: the task means of
    the differences are 1/4, 1/2 and 0, so the binding mean moves by 1/4; a single-object prompt and a
    prompt only one side was judged on are left out (3 binding ids + 1 = 4 compared)."""
    from t2istudy.scoring.paired_binding import binding_difference

    zeros = {"two_object-0": 0, "two_object-1": 0, "position-0": 0, "color_attr-0": 0, "single_object-0": 0}
    ours = [scores({**zeros, "two_object-0": 1, "position-0": 1, "single_object-0": 1}), scores(zeros)]
    theirs = [scores({**zeros, "color_attr-9": 1}), scores({**zeros, "color_attr-9": 1})]
    found = binding_difference(ours, theirs, n_boot=2000)
    assert found["binding_mean_diff"] == pytest.approx(0.25) and found["prompts"] == 4
    assert found["ci_low"] <= 0.25 <= found["ci_high"]
    with pytest.raises(ValueError, match="one per seed"):
        binding_difference(ours, theirs[:1])


def test_harness_arms_against_one_arm_at_equal_steps(monkeypatch, tmp_path):
    """--versus baseline: each other arm at the baseline's steps and seeds is paired with it (one Holm
    family); an arm at steps the baseline never ran is not compared, and an unknown arm names the choices."""
    harness = load_harness(monkeypatch)
    zeros = {"two_object-0": 0, "position-0": 0, "color_attr-0": 0}
    runs = {("baseline", 6000): zeros, ("data", 6000): {**zeros, "two_object-0": 1}, ("data", 3000): zeros}
    rows = []
    for (arm, steps), values in runs.items():
        for seed in (0, 1):
            rung = harness.rung_dir(tmp_path / f"{arm}-{steps}-s{seed}", steps)
            rung.mkdir(parents=True)
            scores(values).to_csv(rung / "scores_geneval.csv", index=False)
            rows.append({"arm": arm, "steps": steps, "seed": seed, "sampling": "preset"})
    table = pd.DataFrame(rows)
    paired = harness.against_arm(table, "baseline", SimpleNamespace(root=str(tmp_path)))
    assert paired[["arm", "steps", "seeds"]].values.tolist() == [["data", 6000, "0,1"]]
    assert paired.loc[0, "binding_mean_diff"] == pytest.approx(1 / 3, abs=1e-4)
    # one comparison: Holm leaves its p as it is; every (seed, prompt) difference agrees, so p is small
    assert paired.loc[0, "p_holm"] == paired.loc[0, "p"] < 0.05
    with pytest.raises(SystemExit, match="name one of"):
        harness.against_arm(table, "nope", SimpleNamespace(root=str(tmp_path)))
