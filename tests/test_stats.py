"""Layer statistics against hand-computed values; chunked encoder statistics equal one-shot ones."""

import math

import pytest
import torch

from t2istudy.figure_files import save_figure
from t2istudy.text.encoders import LayerStates, load_encoder
from t2istudy.text.plots_layers import plot_layer_norms, plot_layer_similarity
from t2istudy.text.stats import (
    encoder_layer_stats,
    layer_norm_stats,
    layer_similarity,
    load_prompts,
    norm_spread,
    token_norms,
)

# Two states, two prompts, two token slots, width 2. Prompt 1 has one real token; its padding slot
# holds a huge vector that must never enter any statistic.
HIDDEN = torch.tensor(
    [
        [[[3.0, 4.0], [0.0, 1.0]], [[1.0, 0.0], [100.0, 100.0]]],
        [[[6.0, 8.0], [0.0, 2.0]], [[0.0, 3.0], [100.0, 100.0]]],
    ]
)
MASK = torch.tensor([[True, True], [True, False]])
STATES = LayerStates(hidden=HIDDEN, mask=MASK, ids=torch.zeros(2, 2, dtype=torch.long), n_truncated=0)


def row(table, layer, norm="none", tokens="all"):
    sel = table[(table.layer == layer) & (table.norm == norm) & (table.tokens == tokens)]
    assert len(sel) == 1
    return sel.iloc[0].to_dict()


def test_token_norms_skip_padding_and_flag_first_tokens():
    norms, first = token_norms(STATES)
    assert norms.tolist() == [[5.0, 1.0, 1.0], [10.0, 2.0, 3.0]]  # order: p0 t0, p0 t1, p1 t0
    assert first.tolist() == [True, False, True]
    l2, _ = token_norms(STATES, "l2")
    torch.testing.assert_close(l2, torch.ones(2, 3))


def test_layer_norm_stats_by_hand():
    table = layer_norm_stats(STATES, encoder="toy", percentiles=(50,))
    assert set(table.columns) >= {
        "encoder",
        "layer",
        "depth",
        "norm",
        "tokens",
        "n_tokens",
        "mean",
        "std",
        "p50",
    }
    assert len(table) == 5 * 2 * 2  # norms x token sets x layers
    r = row(table, 0)
    assert (r["n_tokens"], r["mean"], r["min"], r["max"], r["p50"]) == (
        3,
        pytest.approx(7 / 3),
        1.0,
        5.0,
        1.0,
    )
    assert r["std"] == pytest.approx(math.sqrt(48 / 9))  # unbiased: ((8/3)^2 + 2 (4/3)^2) / 2
    r = row(table, 0, tokens="no_first")
    assert (r["n_tokens"], r["mean"], r["std"]) == (1, 1.0, 0.0)
    r = row(table, 1)
    assert (r["mean"], r["depth"]) == (pytest.approx(5.0), 1.0)
    assert row(table, 1, tokens="no_first")["mean"] == 2.0
    # After a normalization every token has the same norm: sqrt(width) for rms, ~sqrt(2) for layernorm.
    assert row(table, 1, norm="rms")["mean"] == pytest.approx(math.sqrt(2), rel=1e-5)
    assert row(table, 0, norm="layernorm")["max"] == pytest.approx(math.sqrt(2), rel=1e-4)
    assert row(table, 0, norm="l2")["mean"] == pytest.approx(1.0)


def test_norm_spread_by_hand():
    spread = norm_spread(layer_norm_stats(STATES, encoder="toy"))
    assert spread.to_dict("records") == [
        {"encoder": "toy", "min_mean_norm": 1.0, "max_mean_norm": 2.0, "ratio": 2.0, "argmax_layer": 1}
    ]
    with pytest.raises(ValueError, match="No rows with norm='rms'"):
        norm_spread(layer_norm_stats(STATES, norms=("none",)), norm="rms")


def test_layer_similarity_by_hand():
    # Without first tokens only p0 t1 remains: [0,1] vs [0,2] -> cosine 1.
    sim = layer_similarity(STATES, encoder="toy")
    assert sim.cosine.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    # With them: cos([3,4],[6,8]) = 1, cos([0,1],[0,2]) = 1, cos([1,0],[0,3]) = 0 -> mean 2/3.
    sim = layer_similarity(STATES, exclude_first=False)
    matrix = sim.pivot(index="layer_a", columns="layer_b", values="cosine")
    assert matrix.to_numpy().flatten().tolist() == pytest.approx([1.0, 2 / 3, 2 / 3, 1.0])
    assert sim.n_tokens.unique().tolist() == [3]


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm-l6")


PROMPTS = ["a red cube", "two cats on a mat", "a photo of three green triangles", "a dog", "blue sky"]


def test_chunked_encoder_stats_equal_one_shot(minilm):
    stats, sim = encoder_layer_stats(minilm, PROMPTS, chunk_size=2, norms=("none", "layernorm"))
    one_shot = layer_norm_stats(minilm.encode(PROMPTS), encoder="minilm-l6", norms=("none", "layernorm"))
    cols = ["n_tokens", "mean", "std", "min", "max", "p5", "p50", "p95"]
    assert stats[["layer", "norm", "tokens"]].equals(one_shot[["layer", "norm", "tokens"]])
    torch.testing.assert_close(
        torch.tensor(stats[cols].to_numpy()), torch.tensor(one_shot[cols].to_numpy()), rtol=1e-4, atol=1e-4
    )
    expected = layer_similarity(minilm.encode(PROMPTS), encoder="minilm-l6")
    torch.testing.assert_close(torch.tensor(sim.cosine.to_numpy()), torch.tensor(expected.cosine.to_numpy()))
    assert len(sim) == 7 * 7 and sim.n_tokens.iloc[0] == expected.n_tokens.iloc[0]
    with pytest.raises(ValueError, match="prompt list is empty"):
        encoder_layer_stats(minilm, [])


def test_plots_write_png_pdf_csv(tmp_path):
    stats = layer_norm_stats(STATES, encoder="toy")
    sim = layer_similarity(STATES, encoder="toy")
    paths = save_figure(plot_layer_norms(stats), tmp_path, "layer_norms", stats)
    paths += save_figure(plot_layer_similarity(sim), tmp_path, "layer_similarity", sim)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"{s}.{e}" for s in ("layer_norms", "layer_similarity") for e in ("png", "pdf", "csv")
    )
    assert all(p.stat().st_size > 0 for p in paths)
    assert (
        (tmp_path / "layer_norms.csv")
        .read_text()
        .splitlines()[0]
        .startswith("encoder,layer,depth,norm,tokens")
    )
    # A rerun writes the same bytes (no PDF creation date), so re-executing a notebook leaves git clean.
    first = {p: p.read_bytes() for p in paths}
    save_figure(plot_layer_norms(stats), tmp_path, "layer_norms", stats)
    save_figure(plot_layer_similarity(sim), tmp_path, "layer_similarity", sim)
    assert all(p.read_bytes() == first[p] for p in paths)


def test_load_prompts_sources(tmp_path):
    shipped = load_prompts("genai-bench")
    assert len(shipped) == 527
    assert load_prompts("genai-bench", 3) == shipped[:3]
    (tmp_path / "p.txt").write_text("a red cube\n\n two cats \n")
    assert load_prompts(tmp_path / "p.txt") == ["a red cube", "two cats"]
    (tmp_path / "p.csv").write_text("prompt,x\nsky,1\nsea,2\n")
    assert load_prompts(str(tmp_path / "p.csv"), 1) == ["sky"]
    (tmp_path / "bad.csv").write_text("text\nsky\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_prompts(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="is not 'genai-bench'"):
        load_prompts(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="positive integer"):
        load_prompts("genai-bench", 0)
