"""The layer-norm explorer without a browser: every control driven from Python, the numbers behind
every view checked by hand, and the cache's promise that a control change reruns no LLM."""

import json
import math
from pathlib import Path

import pytest
import torch

from t2istudy.text.encoders import LayerStates, load_encoder
from t2istudy.text.explore import (
    EncodingCache,
    LayerExplorer,
    PromptEncoding,
    Settings,
    compute_views,
    heatmap_data,
    norm_curves,
    pool,
    similarity_matrix,
    strategies_for,
    strategy_norms,
)
from t2istudy.text.massive import (
    PooledTokens,
    aggregate_shares,
    channel_share,
    massive_channels,
    pool_states,
    top_channels,
)

ROOT = Path(__file__).resolve().parents[1]


class WordTokenizer:
    """Whitespace tokenizer with a growing vocabulary (enough of the HF interface for the explorer)."""

    def __init__(self):
        self.words: list[str] = []

    def ids(self, text: str) -> list[int]:
        for word in text.split():
            if word not in self.words:
                self.words.append(word)
        return [self.words.index(w) for w in text.split()]

    def convert_ids_to_tokens(self, ids):
        return [self.words[i] for i in ids]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


class WordEncoder:
    """A hand-set 'LLM': word w in layer l is (l + 1) * base(w); a prompt's first token also carries
    channel 0 at 1000 * (l + 1) (a massive activation on the attention sink)."""

    def __init__(self, name: str = "words", num_states: int = 3, width: int = 6):
        self.name, self.num_states, self.width = name, num_states, width
        self.tokenizer = WordTokenizer()
        self.calls = 0

    def base(self, token_id: int) -> torch.Tensor:
        return torch.randn(self.width, generator=torch.Generator().manual_seed(token_id))

    def encode(self, prompts, batch_size=32, progress=False) -> LayerStates:
        self.calls += 1
        ids = [self.tokenizer.ids(p) for p in prompts]
        length = max(len(i) for i in ids)
        hidden = torch.zeros(self.num_states, len(prompts), length, self.width)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        padded = torch.zeros(len(prompts), length, dtype=torch.long)
        for row, token_ids in enumerate(ids):
            for pos, token_id in enumerate(token_ids):
                for layer in range(self.num_states):
                    hidden[layer, row, pos] = (layer + 1) * self.base(token_id)
                    if pos == 0:
                        hidden[layer, row, pos, 0] = 1000.0 * (layer + 1)
            mask[row, : len(token_ids)] = True
            padded[row, : len(token_ids)] = torch.tensor(token_ids)
        return LayerStates(hidden=hidden, mask=mask, ids=padded, n_truncated=0)


def word_cache(**encoders) -> EncodingCache:
    known = {"words": WordEncoder(), **encoders}

    def load(name):
        if name not in known:
            raise ValueError(f"Unknown encoder {name!r}: not a registry name and no such path.")
        return known[name]

    return EncodingCache(load=load)


def pooled_of(hidden: torch.Tensor, labels=None, first=None) -> PooledTokens:
    n = hidden.shape[1]
    first = torch.tensor([i == 0 for i in range(n)]) if first is None else first
    return PooledTokens(hidden, labels or [f"t{i}" for i in range(n)], first, torch.arange(n), torch.zeros(n))


# -- the numbers behind the views, by hand -------------------------------------------------------------
def test_top_channels_of_a_hand_built_tensor():
    hidden = torch.ones(2, 3, 5)  # 2 layers, 3 tokens, 5 channels; every channel 1 unless set
    hidden[0, 0, 3] = -400.0  # layer 0: channel 3 massive (negative) on the first token
    hidden[0, 2, 1] = 8.0
    hidden[1, 1, 4] = 50.0  # layer 1: channel 4 on tokens 1 and 2
    hidden[1, 2, 4] = 30.0
    table = top_channels(pooled_of(hidden, ["<s>", "cat", "."]), k=2)
    assert table["layer"].tolist() == [0, 0, 1, 1] and table["rank"].tolist() == [1, 2, 1, 2]
    assert table["channel"].tolist()[:3] == [3, 1, 4]
    row = table.iloc[0]
    assert (row.magnitude, row.median_channel, row.relative, row.value) == (400.0, 1.0, 400.0, -400.0)
    assert (row.peak_token, row.peak_position, row.carriers, row.first_share) == ("<s>", 0, 1, 1.0)
    assert row.carrier_tokens == "'<s>' x1"
    row = table.iloc[2]  # 30 >= 0.5 * 50: both tokens carry channel 4
    assert (row.relative, row.carriers, row.first_share) == (50.0, 2, 0.0)
    assert row.carrier_tokens == "'cat' x1; '.' x1"
    assert massive_channels(table, min_relative=100) == [3]
    assert massive_channels(table, min_relative=10) == [3, 4]
    with pytest.raises(ValueError, match="positive integer"):
        top_channels(pooled_of(hidden), k=0)


def test_normalizations_give_hand_computed_token_norms():
    hidden = torch.tensor([[[3.0, 4.0]], [[6.0, 8.0]]])  # 2 layers, 1 token [3, 4] then [6, 8]
    pooled = pooled_of(hidden)
    expected = {
        "none": [5.0, 10.0],
        "l2": [1.0, 1.0],
        "rms": [math.sqrt(2), math.sqrt(2)],  # x / sqrt(mean x^2)
        "standardize": [1.0, 1.0],  # (x - mean) / unbiased std: +-1/sqrt(2)
        "layernorm": [math.sqrt(2) * 0.5 / math.sqrt(0.25 + 1e-5), math.sqrt(2) * 1 / math.sqrt(1 + 1e-5)],
    }
    for norm, values in expected.items():
        assert heatmap_data(pooled, norm)[pooled.labels[0]].tolist() == pytest.approx(values, rel=1e-5), norm
    curves = norm_curves(pooled, "l2")
    assert curves["before_mean"].tolist() == pytest.approx([5.0, 10.0])
    assert curves["after_mean"].tolist() == pytest.approx([1.0, 1.0])


def test_curves_similarity_and_strategy_norms_by_hand():
    hidden = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 2.0]],  # layer 0: tokens a, b
            [[3.0, 0.0], [0.0, -4.0]],  # layer 1: a same direction, b opposite
            [[0.0, 5.0], [6.0, 0.0]],  # layer 2: both orthogonal to layer 0
        ]
    )
    pooled = pooled_of(hidden, ["a", "b"], first=torch.tensor([False, False]))
    curves = norm_curves(pooled, "none")
    assert curves["before_mean"].tolist() == pytest.approx([1.5, 3.5, 5.5])
    assert curves["before_max"].tolist() == pytest.approx([2.0, 4.0, 6.0])
    sim = similarity_matrix(pooled, "none").to_numpy()
    assert sim[0].tolist() == pytest.approx([1.0, 0.0, 0.0])  # (1 + 1) / 2, then (1 - 1) / 2, 0
    assert sim[1, 2] == pytest.approx(0.0) and sim.diagonal().tolist() == pytest.approx([1, 1, 1])
    norms = strategy_norms(pooled, ["last", "layer:1", "mean", "norm_mean[l2]"])
    assert norms.loc["last"].tolist() == pytest.approx([5.0, 6.0])
    assert norms.loc["layer:1"].tolist() == pytest.approx([3.0, 4.0])
    # mean of a: (1+3+0, 0+0+5)/3 = (4/3, 5/3); of b: (6, -2)/3
    assert norms.loc["mean"].tolist() == pytest.approx([math.hypot(4, 5) / 3, math.hypot(6, 2) / 3])
    # unit vectors: a (1,0),(1,0),(0,1) -> (2/3, 1/3); b (0,1),(0,-1),(1,0) -> (1/3, 0)
    assert norms.loc["norm_mean[l2]"].tolist() == pytest.approx([math.hypot(2, 1) / 3, 1 / 3])
    assert strategies_for(3, 1, "rms") == ["last", "layer:1", "mean", "norm_mean", "norm_mean[rms]"]
    assert strategies_for(3, 1, "layernorm") == ["last", "layer:1", "mean", "norm_mean"]


def test_channel_shares_of_mean_and_norm_mean_by_hand():
    hidden = torch.tensor([[[3.0, 4.0]], [[0.0, 1.0]]])  # 2 layers, 1 token, 2 channels
    assert channel_share(torch.tensor([[3.0, 4.0]]), [0]).tolist() == pytest.approx([9 / 25])
    shares = aggregate_shares(pooled_of(hidden, first=torch.tensor([False])), [0])
    assert shares["tokens"].tolist() == ["all", "no_first"] * 2
    shares = shares[shares["tokens"] == "all"].set_index("strategy")
    assert shares.loc["mean", "share"] == pytest.approx(1.5**2 / (1.5**2 + 2.5**2))  # mean (1.5, 2.5)
    # layernorm of (3, 4) and of (0, 1) is ~(-1, 1) both: the mean keeps an even split
    assert shares.loc["norm_mean", "share"] == pytest.approx(0.5)
    assert shares.loc["mean", "chance"] == 0.5 and shares.loc["mean", "norm"] == pytest.approx(
        math.hypot(1.5, 2.5)
    )


def test_pool_labels_positions_and_first_token_out():
    a = PromptEncoding(torch.arange(2 * 3 * 1.0).reshape(2, 3, 1), ["<s>", "a", "cat"])
    b = PromptEncoding(torch.zeros(2, 2, 1), ["<s>", "dog"])
    pooled = pool([a, b])
    assert pooled.labels == ["<s>@0", "a@1", "cat@2", "<s>@1.0", "dog@1.1"]
    assert pooled.first.tolist() == [True, False, False, True, False]
    out = pool([a, b], include_first=False)
    assert out.labels == ["a@1", "cat@2", "dog@1.1"] and out.hidden.shape == (2, 3, 1)
    assert out.hidden[1, :, 0].tolist() == [4.0, 5.0, 0.0]
    with pytest.raises(ValueError, match="single token"):
        pool([PromptEncoding(torch.zeros(2, 1, 1), ["<s>"])], include_first=False)
    with pytest.raises(ValueError, match="at least one prompt"):
        pool([])


def test_settings_refuse_unknown_choices():
    with pytest.raises(ValueError, match="layernorm"):
        Settings(norm="batchnorm").check()
    with pytest.raises(ValueError, match="log"):
        LayerExplorer(["a b"], "words", scale="cubic", cache=word_cache())


# -- the widget, driven from Python --------------------------------------------------------------------
def test_every_control_redraws_from_the_cache():
    cache = word_cache()
    explorer = LayerExplorer(["the cat sat", "a dog"], "words", norm="none", top_k=2, cache=cache)
    encoder = cache.encoders["words"]
    assert encoder.calls == 1 and cache.encoder_calls == 1
    assert (
        bytes(explorer.image.value).startswith(b"\x89PNG")
        and "encoder calls so far: 1" in explorer.status.value
    )
    assert explorer.layer.max == 2 and explorer.layer.value == 2  # layer -1 = the last of 3 states
    views = explorer.views()
    heat = views["heatmap"]
    assert list(heat.columns) == ["the@0", "cat@1", "sat@2", "a@1.0", "dog@1.1"]
    assert heat.loc[2, "cat@1"] == pytest.approx(3 * float(encoder.base(1).norm()), rel=1e-5)
    assert heat.loc[0, "the@0"] > 999.0  # the massive channel on the first token
    assert views["channels"].query("rank == 1")["channel"].tolist() == [0, 0, 0]

    png = explorer.image.value
    explorer.norm.value = "l2"
    assert explorer.views()["heatmap"].to_numpy() == pytest.approx(1.0)
    explorer.first_token.value = False
    views = explorer.views()
    assert list(views["heatmap"].columns) == ["cat@1", "sat@2", "dog@1.1"]
    assert views["channels"].query("rank == 1")["first_share"].tolist() == [0.0, 0.0, 0.0]
    explorer.scale.value = "linear"
    explorer.layer.value = 1
    assert list(explorer.views()["strategies"].index) == [
        "last",
        "layer:1",
        "mean",
        "norm_mean",
        "norm_mean[l2]",
    ]
    assert "layer 1" in explorer.table.value
    explorer.top_k.value = 3
    assert explorer.views()["channels"].groupby("layer").size().tolist() == [3, 3, 3]
    assert explorer.image.value != png and explorer.settings().scale == "linear"
    assert encoder.calls == 1 and cache.encoder_calls == 1  # six control changes, no encoder call

    explorer.prompts.value = "the cat sat\na red cube"  # one new prompt: one call, for that prompt only
    assert encoder.calls == 2 and len(cache.encodings) == 3
    explorer.prompts.value = "a dog"  # seen before
    assert encoder.calls == 2 and list(explorer.views()["heatmap"].columns) == ["dog@1"]


def test_encoder_control_loads_another_encoder_and_reports_bad_ones():
    cache = word_cache(deep=WordEncoder("deep", num_states=5, width=4))
    explorer = LayerExplorer(["the cat"], "words", cache=cache)
    explorer.encoder.value = "deep"
    assert explorer.layer.max == 4 and explorer.layer.value == 4
    assert explorer.views()["heatmap"].shape == (5, 2) and cache.encoders["deep"].calls == 1
    explorer.encoder.value = "words"
    assert explorer.layer.max == 2 and cache.encoders["words"].calls == 1  # cached: no second call
    png = explorer.image.value
    explorer.encoder.value = "/no/such/model"
    assert "Unknown encoder" in explorer.status.value and explorer.image.value == b""  # not the old figure
    explorer.encoder.value = "words"
    assert explorer.image.value == png
    explorer.encoder.value = "words"
    explorer.prompts.value = "   "
    assert "at least one prompt" in explorer.status.value


def test_compute_views_shapes():
    encoder = WordEncoder(num_states=4, width=5)
    pooled = pool_states(encoder.encode(["x y z"]), encoder.tokenizer)
    assert pooled.labels == ["x", "y", "z"]
    views = compute_views(pooled, Settings(encoder="words", layer=-2, top_k=3))
    assert views["heatmap"].shape == (4, 3) and views["similarity"].shape == (4, 4)
    assert len(views["channels"]) == 4 * 3 and views["strategies"].index[1] == "layer:2"


# -- a real encoder ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm-l6")


def test_heatmap_rows_equal_encode_norms_on_a_real_encoder(minilm):
    prompts = ["two red circles left of a blue square", "a dog"]
    cache = EncodingCache(load=lambda name: minilm)
    explorer = LayerExplorer(prompts, "minilm-l6", norm="none", cache=cache)
    states = minilm.encode(prompts)
    heat = explorer.views()["heatmap"]
    expected = states.hidden[:, states.mask].norm(dim=-1)  # [L, real tokens of both prompts]
    for layer in (0, 3, 6):
        assert heat.loc[layer].tolist() == pytest.approx(expected[layer].tolist(), rel=1e-4)
    assert heat.columns[0] == "[CLS]@0" and heat.columns[-1] == "[SEP]@1.3"
    explorer.norm.value = "layernorm"
    explorer.first_token.value = False
    assert cache.encoder_calls == 1


def test_notebooks_are_thin_and_without_outputs():
    for name in ("explore_layers.ipynb", "massive_activations.ipynb"):
        notebook = json.loads((ROOT / "notebooks" / name).read_text())
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), name
