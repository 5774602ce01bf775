"""Probe: hand-computed facts and metrics, controls on synthetic representations, determinism, notebook."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from t2istudy.probe import layerwise as P
from t2istudy.probe import report as R
from t2istudy.probe import targets as T
from t2istudy.world import shapes

FAST = P.ProbeOptions(steps=150, batch_size=32, lr=5e-3, threads=1, n_boot=200)


# ---------------------------------------------------------------------------------------------------
# Facts a caption determines (hand-derived from the specs)


def _count(color, shape, n, op="=="):
    return {"type": "count", "color": color, "shape": shape, "op": op, "n": n}


def test_spec_facts_negation_fixes_shapes_not_colours():
    # "a blue triangle and a square that is not red": the square may be blue, green or yellow
    spec = {
        "constraints": [
            _count("blue", "triangle", 1),
            _count(None, "square", 1),
            _count("red", "square", 0),
            _count(None, None, 2),
        ]
    }
    facts = T.spec_facts(spec)
    assert facts["count_square"] == 1 and facts["count_triangle"] == 1 and facts["count_circle"] == 0
    assert facts["count_red"] == 0 and facts["n_objects"] == 2 and facts["count_blue_triangle"] == 1
    assert "count_blue" not in facts and "count_green" not in facts and "count_green_square" not in facts


def test_spec_facts_relations_and_exact_descriptions():
    spec = {
        "constraints": [
            _count("red", "circle", 1),
            _count("blue", "square", 1),
            _count(None, None, 2),
            {
                "type": "relation",
                "rel": "right_of",
                "a": {"color": "red", "shape": "circle"},
                "b": {"color": "blue", "shape": "square"},
            },
            {"type": "background", "color": "gray"},
        ]
    }
    facts = T.spec_facts(spec)
    # the blue square is the left object; every other kind is absent
    assert (facts["left_color"], facts["left_shape"], facts["background"]) == ("blue", "square", "gray")
    assert "top_color" not in facts and "larger_color" not in facts
    assert sum(facts[f] for f in T.PAIR_FACTS) == 2 and facts["count_green_triangle"] == 0
    more = {
        "constraints": [
            {
                "type": "more",
                "a": {"color": "red", "shape": "circle"},
                "b": {"color": "blue", "shape": "square"},
            },
            _count("blue", "square", 1, ">="),
            _count(None, None, 3),
        ]
    }
    facts = T.spec_facts(more)  # 3 objects, red circles > blue squares >= 1 -> exactly 2 and 1
    assert (facts["more_color"], facts["count_red_circle"], facts["count_blue_square"]) == ("red", 2, 1)


# ---------------------------------------------------------------------------------------------------
# Targets, per-skill exact accuracy, chance (hand-computed)


def _tiny_targets():
    facts = [{"a": 0, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1}, {"a": 2, "b": "y"}]
    return T.Targets.from_facts(
        facts, {"one": ["a"], "both": ["a", "b"]}, tags=[("one", "both")] * 3 + [("one",)]
    )


def test_targets_skill_correct_and_chance_by_hand():
    t = _tiny_targets()
    assert t.names == ["a", "b"] and t.classes == [["0", "1", "2"], ["x", "y"]]
    assert t.values.tolist() == [[0, 0], [1, 1], [1, -1], [2, 1]]
    pred = np.array([[0, 1], [1, 1], [1, 0], [0, 1]])  # row 0 wrong on b, row 2's b is not stated
    out = T.skill_correct(pred, t, np.arange(4))
    assert out["one"][0].tolist() == [True] * 4 and out["one"][1].tolist() == [True, True, True, False]
    assert out["both"][0].tolist() == [True, True, True, False]  # row 3 is not tagged "both"
    assert out["both"][1][:3].tolist() == [False, True, True]
    # train rows 0-2: modes a=1, b=x (tie x/y -> first); on all rows: one = 2/4, both = rows 1,2 -> 1/3
    ch = T.chance(t, np.arange(3), np.arange(4))
    assert ch["one"] == pytest.approx(0.5) and ch["both"] == pytest.approx(1 / 3)
    # ceiling: row 3's a = 2 never occurs in training rows 0-2, so no head can predict it
    ceil = T.ceiling(t, np.arange(3), np.arange(4))
    assert ceil["one"] == pytest.approx(0.75) and ceil["both"] == pytest.approx(1.0)
    assert t.subset(["one"]).names == ["a"]
    with pytest.raises(ValueError, match="Unknown probe skills"):
        t.subset(["nope"])


# ---------------------------------------------------------------------------------------------------
# Synthetic representations: controls and determinism


def _synthetic(n=400, tokens=6, width=16, layers=3, seed=0):
    """Layer 2 states spell out the facts (one-hot on fixed tokens); layers 0-1 are noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 3, n), rng.integers(0, 2, n)
    facts = [{"count": int(a[i]), "bind": int(b[i])} for i in range(n)]
    targets = T.Targets.from_facts(facts, {"counting": ["count"], "attribute": ["bind"]})
    gen = torch.Generator().manual_seed(seed)
    hidden = 0.1 * torch.randn(layers, n, tokens, width, generator=gen)
    hidden[:2] += torch.randn(2, n, tokens, width, generator=gen)
    hidden[-1, :, 0, :3] += 3 * torch.nn.functional.one_hot(torch.as_tensor(a), 3)
    hidden[-1, :, 1, 3:5] += 3 * torch.nn.functional.one_hot(torch.as_tensor(b), 2)
    mask = torch.ones(n, tokens, dtype=torch.bool)
    mask[::2, -2:] = False  # padded prompts

    def encode(prompts):
        rows = torch.as_tensor([int(p) for p in prompts])
        return SimpleNamespace(hidden=hidden[:, rows], mask=mask[rows])

    features = P.featurize(encode, [str(i) for i in range(n)], ["layers", "last", "mean"], chunk=150)
    return features, targets, np.arange(300), np.arange(300, n)


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic()


def test_featurize_names_shapes_and_padding(synthetic):
    features, *_ = synthetic
    assert features.requested == ["layer:0", "layer:1", "layer:2", "last", "mean"]
    assert tuple(features.stack.shape) == (400, 6, 3, 16) and features.stack.dtype == torch.float16
    assert tuple(features.single["mean"].shape) == (400, 6, 16)
    assert not features.stack[0, -2:].any() and features.stack[1, -2:].any()  # padding zeroed
    assert torch.equal(features.stack[:, :, 2], features.single["last"])  # last == layer:2, both LayerNorm'd
    x, mask = features.batch(["layer:0", "mean"], np.array([0, 2]))
    assert tuple(x.shape) == (2, 2, 4, 16) and mask.tolist() == [[True] * 4] * 2  # trimmed to 4 tokens


@pytest.mark.slow
def test_informative_near_100_noise_and_shuffled_near_chance(synthetic):
    features, targets, train, test = synthetic
    table = P.train_probes(
        features, targets, train, test, representations=["layer:0", "layer:2"], seeds=[0], options=FAST
    )
    acc = table.groupby(["representation", "skill"]).correct.mean()
    chance = T.chance(targets, train, test)
    assert acc["layer:2", "counting"] >= 0.97 and acc["layer:2", "attribute"] >= 0.97
    for skill in ("counting", "attribute"):  # pure noise carries nothing
        assert abs(acc["layer:0", skill] - chance[skill]) < 0.15
    shuffled = P.train_probes(
        features, targets, train, test, representations=["layer:2"], seeds=[0, 1], options=FAST, shuffle=True
    )
    assert set(shuffled.control) == {"shuffled"}
    for skill, got in shuffled.groupby("skill").correct.mean().items():
        assert abs(got - chance[skill]) < 0.12, (skill, got, chance[skill])


def test_same_seed_same_numbers_and_members_are_independent(synthetic):
    features, targets, train, test = synthetic
    opts = P.ProbeOptions(steps=40, batch_size=32, threads=1)
    one = P.train_probes(
        features, targets, train, test, representations=["layer:2", "last", "mean"], seeds=[3], options=opts
    )
    two = P.train_probes(
        features, targets, train, test, representations=["layer:2", "last", "mean"], seeds=[3], options=opts
    )
    pd.testing.assert_frame_equal(one, two)
    # identical inputs at the same seed -> identical probes, whatever else is in the ensemble
    a = one[one.representation == "layer:2"].correct.to_numpy()
    assert np.array_equal(a, one[one.representation == "last"].correct.to_numpy())
    alone = P.train_probes(
        features, targets, train, test, representations=["layer:2"], seeds=[3], options=opts
    )
    assert np.array_equal(a, alone.correct.to_numpy())


def test_summarize_accuracy_seed_spread_and_ci():
    table = pd.DataFrame(
        {
            "encoder": "e",
            "control": "none",
            "representation": "layer:1",
            "skill": "s",
            "seed": [0] * 4 + [1] * 4,
            "prompt": [0, 1, 2, 3] * 2,
            "correct": [1, 1, 0, 0, 1, 1, 1, 0],
        }
    )
    row = P.summarize_accuracy(table, pd.Series({"s": 0.25}), n_boot=500).iloc[0]
    assert (row.accuracy, row.seed_min, row.seed_max, row.seed_std) == (0.625, 0.5, 0.75, 0.125)
    assert (row.n, row.seeds, row.layer, row.chance) == (4, 2, 1.0, 0.25)
    assert 0.0 <= row.ci_low <= 0.625 <= row.ci_high <= 1.0


def test_bad_input_is_named(synthetic):
    features, targets, train, test = synthetic
    with pytest.raises(ValueError, match="share prompts"):
        P.train_probes(features, targets, train, train[:10], options=FAST)
    with pytest.raises(ValueError, match="not featurized"):
        P.train_probes(features, targets, train, test, representations=["norm_mean"], options=FAST)
    with pytest.raises(ValueError, match="hidden states"):
        P.expand_representations(["layer:7"], 3)
    with pytest.raises(ValueError, match="Unknown strategy kind"):
        P.expand_representations(["avg"], 3)
    assert P.expand_representations(["layers/3"], 7) == ["layer:0", "layer:3", "layer:6"]
    with pytest.raises(ValueError, match="every k-th"):
        P.expand_representations(["layers/0"], 7)
    assert P.expand_representations(["layers", "layer:-1", "norm_mean[layernorm]"], 2) == [
        "layer:0",
        "layer:1",
        "norm_mean",
    ]


# ---------------------------------------------------------------------------------------------------
# The shapes-world dataset and the diffusion relation


def test_probe_dataset_split_is_held_out():
    table, targets, train, test = T.probe_dataset(n_train=80, n_eval=40, seed=0)
    assert len(test) == 40 and 70 <= len(train) <= 80
    assert not set(table.prompt[train]) & set(table.prompt[test])
    assert set(targets.groups) == set(T.SKILL_FACTS)
    held_facts = {f"count_{c}_{s}" for c, s in shapes.DEFAULT_HOLDOUT.pairs}
    assert not held_facts & set(targets.names) and len(targets.names) == 26  # 9 pairs + 4 + 3 + n + 9 others
    # every benchmark prompt is built on a held-out pair, count or relation; no training prompt states one
    held = [f"{c} {s}" for c, s in shapes.DEFAULT_HOLDOUT.pairs]
    assert not any(h in p for p in table.prompt[train] for h in held)
    for skill, (applicable, _) in T.skill_correct(targets.values[test], targets, test).items():
        assert applicable.sum() >= 5, skill


def test_relate_to_diffusion_rank_correlation():
    summary = pd.DataFrame(
        {
            "encoder": "e",
            "control": "none",
            "representation": ["last", "norm_mean", "layer:3", "last"],
            "skill": ["counting", "counting", "counting", "spatial"],
            "accuracy": [0.9, 0.5, 0.7, 0.2],
        }
    )
    runs = pd.DataFrame(  # as runs.load_metrics gives it: two seeds of 'last', an 'overall' row
        {
            "encoder": "e",
            "strategy": ["last", "last", "norm_mean[layernorm]", "layer:3", "last", "last"],
            "skill": ["counting", "counting", "counting", "counting", "spatial", "overall"],
            "mean": [0.3, 0.5, 0.1, 0.3, 0.05, 0.9],
        }
    )
    joined, stats = R.relate_to_diffusion(summary, runs)
    assert len(joined) == 4 and stats.n == 4 and stats.rho == pytest.approx(1.0)
    assert joined.set_index(["representation", "skill"]).score["last", "counting"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="columns"):
        R.relate_to_diffusion(summary, runs, score="score")


def test_recipe_probe_table_names_recipes_and_diffs_by_hand():
    # recipe:paper is norm_mean and recipe:ltx2 is concat[minmax]; layer:3 is no recipe and drops out
    summary = pd.DataFrame(
        {
            "encoder": ["a", "a", "a", "a", "a", "b", "b", "a"],
            "control": ["none"] * 7 + ["shuffled"],
            "representation": ["norm_mean", "norm_mean", "concat[minmax]", "concat[minmax]", "layer:3"]
            + ["norm_mean", "concat[minmax]", "norm_mean"],
            "skill": [
                "counting",
                "spatial",
                "counting",
                "spatial",
                "counting",
                "counting",
                "counting",
                "counting",
            ],
            "accuracy": [0.6, 0.2, 0.9, 0.5, 1.0, 0.3, 0.1, 0.0],
            "seed_std": [0.1, 0.3, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0],
            "seeds": 3,
        }
    )
    table = R.recipe_probe_table(summary).set_index(["encoder", "recipe"])
    assert sorted(table.index) == [("a", "ltx2"), ("a", "paper"), ("b", "ltx2"), ("b", "paper")]
    assert table.accuracy["a", "paper"] == pytest.approx(0.4)  # (0.6 + 0.2) / 2
    assert table.accuracy["a", "ltx2"] == pytest.approx(0.7)
    assert table.diff_vs_paper["a", "ltx2"] == pytest.approx(0.3)
    assert table.diff_vs_paper["b", "ltx2"] == pytest.approx(-0.2)
    assert table.seed_std["a", "paper"] == pytest.approx(0.2)
    assert table["rank"]["a", "ltx2"] == 1 and table["rank"]["b", "paper"] == 1
    assert table.strategy["a", "ltx2"] == "concat[minmax]"
    fig, data = R.plot_recipe_probe(table.reset_index())
    baselines = sorted(line.get_xdata()[0] for line in fig.axes[0].lines if line.get_linestyle() == "--")
    assert len(data) == 4 and baselines == pytest.approx([0.3, 0.4])  # recipe:paper's line per encoder
    with pytest.raises(ValueError, match="recipe:paper"):
        R.recipe_probe_table(summary[summary.representation == "layer:3"])


# ---------------------------------------------------------------------------------------------------
# The notebook on a small budget (a real encoder: minilm-l6 loads in seconds)


@pytest.mark.slow
def test_notebook_executes_on_a_small_budget(tmp_path):
    papermill = pytest.importorskip("papermill")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "figures"
    papermill.execute_notebook(
        str(root / "notebooks" / "probe.ipynb"),
        str(tmp_path / "probe.ipynb"),
        parameters={
            "encoders": ["minilm-l6"],
            "representations": ["layers", "last", "norm_mean"],
            "random_init": [],
            "seeds": [0],
            "steps": 20,
            "n_train": 64,
            "n_eval": 32,
            "n_boot": 50,
            "out_dir": str(out),
            "resume_dir": str(tmp_path / "groups"),
        },
        cwd=str(root / "notebooks"),
        kernel_name="python3",
        progress_bar=False,
    )
    summary = pd.read_csv(out / "probe_all.csv")
    # 7 states + last + norm_mean, plus the shuffled controls (last, norm_mean), for each of 8 skills
    assert (
        len(summary[summary.control == "none"]) == 9 * 8
        and len(summary[summary.control == "shuffled"]) == 2 * 8
    )
    assert (out / "probe_minilm-l6.png").stat().st_size > 0 and (out / "probe_minilm-l6.pdf").exists()
    assert len(list((tmp_path / "groups").glob("minilm-l6__plain__*.json"))) == 1  # the one group, kept


def test_save_figures_keeps_dotted_encoder_names(tmp_path):
    """A sweep summary (smollm2-135m, 2 skills, from a real sweep) renamed to a dotted encoder name."""
    summary = pd.read_csv(Path(__file__).parent / "fixtures" / "probe_layers.csv").assign(
        encoder="qwen2.5-0.5b"
    )
    written = R.save_figures(summary, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "probe_all.csv",
        "probe_qwen2.5-0.5b.csv",
        "probe_qwen2.5-0.5b.pdf",
        "probe_qwen2.5-0.5b.png",
    ]
    assert sorted(p.name for p in written) == names
    assert pd.read_csv(tmp_path / "probe_qwen2.5-0.5b.csv").shape == summary.shape
    first = {p: p.read_bytes() for p in written}
    R.save_figures(summary, tmp_path)
    assert [p.name for p in written if p.read_bytes() != first[p]] == []  # a rerun writes the same bytes
