"""Aggregation strategies against hand-computed values, and the strategy grammar."""

import math

import pytest
import torch

from t2istudy.text.aggregation import (
    Aggregator,
    Strategy,
    aggregate,
    normalize,
    output_width,
    parse_strategy,
    selected_states,
)

# Three states (embedding + 2 blocks), one prompt, two tokens (the second is padding), width 2.
H = torch.tensor(
    [
        [[[1.0, 3.0], [0.0, 0.0]]],
        [[[2.0, 2.0], [5.0, 5.0]]],
        [[[0.0, 4.0], [1.0, -1.0]]],
    ]
)
MASK = torch.tensor([[True, False]])
LN1 = 1 / math.sqrt(1 + 1e-5)  # layernorm of [1, 3] = [-LN1, LN1] (mean 2, biased var 1)
LN4 = 2 / math.sqrt(4 + 1e-5)  # layernorm of [0, 4] = [-LN4, LN4] (mean 2, biased var 4)


def run(strategy: str) -> torch.Tensor:
    return aggregate(H, MASK, strategy)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-6)


def test_last_and_layer_pick_one_state_and_zero_padding():
    close(run("last"), [[[0.0, 4.0], [0.0, 0.0]]])
    close(run("layer:0"), [[[1.0, 3.0], [0.0, 0.0]]])
    close(run("layer:-2"), [[[2.0, 2.0], [0.0, 0.0]]])
    close(run("layer:1"), run("layer:-2").tolist())


def test_mean_is_plain_average_and_no_mask_keeps_padding():
    close(run("mean"), [[[1.0, 3.0], [0.0, 0.0]]])
    close(run("mean[no_mask]"), [[[1.0, 3.0], [2.0, 4.0 / 3.0]]])


def test_norm_mean_layernorm_by_hand():
    # Token 0: layernorm([1,3]) = [-LN1, LN1]; layernorm([2,2]) = [0, 0]; layernorm([0,4]) = [-LN4, LN4].
    v = (LN1 + 0.0 + LN4) / 3
    close(run("norm_mean"), [[[-v, v], [0.0, 0.0]]])
    close(run("norm_mean[layernorm]"), run("norm_mean").tolist())


def test_norm_mean_other_normalizations_by_hand():
    s2 = 1 / (math.sqrt(2) + 1e-6)  # standardize [1,3]: unbiased std sqrt(2); [0,4]: std 2*sqrt(2)
    s4 = 2 / (2 * math.sqrt(2) + 1e-6)
    close(run("norm_mean[standardize]"), [[[-(s2 + s4) / 3, (s2 + s4) / 3], [0.0, 0.0]]])
    r1, r2, r3 = 1 / math.sqrt(5 + 1e-6), 1 / math.sqrt(4 + 1e-6), 1 / math.sqrt(8 + 1e-6)
    close(run("norm_mean[rms]"), [[[(r1 + 2 * r2) / 3, (3 * r1 + 2 * r2 + 4 * r3) / 3], [0.0, 0.0]]])
    a, b = 1 / math.sqrt(10), 1 / math.sqrt(2)
    close(run("norm_mean[l2]"), [[[(a + b) / 3, (3 * a + b + 1) / 3], [0.0, 0.0]]])


def test_layer_selection_options():
    close(run("norm_mean[no_embed]"), [[[-LN4 / 2, LN4 / 2], [0.0, 0.0]]])
    close(run("norm_mean[layers=0:1]"), [[[-LN1, LN1], [0.0, 0.0]]])
    close(run("mean[layers=-2:]"), [[[1.0, 3.0], [0.0, 0.0]]])
    close(run("mean[no_embed,layers=0:2]"), [[[2.0, 2.0], [0.0, 0.0]]])
    assert selected_states("norm_mean[no_embed]", 3) == [1, 2]
    assert selected_states("mean[layers=-6:]", 19) == [13, 14, 15, 16, 17, 18]
    assert selected_states("layer:-1", 19) == [18]


def test_concat_and_learned_shapes_and_values():
    concat = run("concat")
    assert concat.shape == (1, 2, 6)
    close(concat, [[[-LN1, LN1, 0.0, 0.0, -LN4, LN4], [0.0] * 6]])
    learned = run("learned")
    assert learned.shape == (1, 2, 3, 2)
    close(learned[0, 0], [[-LN1, LN1], [0.0, 0.0], [-LN4, LN4]])
    assert learned[0, 1].abs().sum() == 0
    close(run("concat[none,no_embed]"), [[[2.0, 2.0, 0.0, 4.0], [0.0] * 4]])


def test_output_width():
    assert output_width("last", 19, 640) == 640
    assert output_width("norm_mean", 19, 640) == 640
    assert output_width("concat", 19, 640) == 19 * 640
    assert output_width("concat[no_embed]", 19, 640) == 18 * 640
    assert output_width("concat[layers=4:12]", 19, 640) == 8 * 640
    assert output_width("learned", 19, 640) == 640


CANONICAL = [
    "last",
    "layer:-2",
    "layer:0",
    "mean",
    "norm_mean",
    "concat",
    "learned",
    "norm_mean[standardize,no_embed]",
    "norm_mean[rms,layers=4:12]",
    "norm_mean[l2,no_embed,layers=-6:,no_mask]",
    "mean[no_mask]",
    "concat[none]",
    "learned[standardize,no_embed]",
    "last[rms]",
]


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_names_round_trip(name):
    strategy = parse_strategy(name)
    assert str(strategy) == name
    assert parse_strategy(str(strategy)) == strategy


def test_non_canonical_spellings_normalize():
    assert str(parse_strategy("norm_mean[layernorm]")) == "norm_mean"
    assert str(parse_strategy("layer:+3")) == "layer:3"
    assert str(parse_strategy(" norm_mean[no_embed, standardize] ")) == "norm_mean[standardize,no_embed]"
    assert parse_strategy("mean") == Strategy("mean")
    assert parse_strategy(Strategy("last")) == Strategy("last")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("foo", "Unknown strategy kind 'foo'"),
        ("layer", "needs an index"),
        ("last:3", "only 'layer' takes an index"),
        ("mean[rms]", "use 'norm_mean[rms]'"),
        ("norm_mean[none]", "use 'mean' for raw states"),
        ("norm_mean[fast]", "Unknown option 'fast'"),
        ("norm_mean[l2,rms]", "sets 'norm' twice"),
        ("last[no_embed]", "uses a single state"),
        ("norm_mean[layers=a:b]", "bounds must be integers"),
        ("norm_mean[layers=4]", "takes a slice"),
        ("norm_mean[,]", "empty option"),
        ("norm_mean[rms", "Cannot parse"),
        (3, "must be a string"),
    ],
)
def test_bad_strategy_strings(bad, message):
    with pytest.raises(ValueError) as err:
        parse_strategy(bad)
    assert message in str(err.value)


def test_layer_out_of_range_states_valid_range():
    with pytest.raises(ValueError, match=r"-3 <= k <= 2"):
        run("layer:3")
    with pytest.raises(ValueError, match=r"-3 <= k <= 2"):
        run("layer:-4")
    with pytest.raises(ValueError, match="selects no layers"):
        run("norm_mean[layers=5:9]")
    with pytest.raises(ValueError, match="selects no layers"):
        run("mean[no_embed,layers=0:1]")


def test_aggregator_streaming_equals_stacked_and_checks_order():
    torch.manual_seed(0)
    hidden = torch.randn(7, 3, 5, 16) * torch.logspace(0, 4, 7)[:, None, None, None]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    for name in CANONICAL:
        agg = Aggregator(name, 7)
        for i in range(7):
            agg.add(i, hidden[i].clone())
        torch.testing.assert_close(agg.result(mask), aggregate(hidden, mask, name), rtol=0, atol=1e-5)
    agg = Aggregator("mean", 7)
    agg.add(2, hidden[2])
    with pytest.raises(RuntimeError, match="feed states in order"):
        agg.add(1, hidden[1])
    with pytest.raises(RuntimeError, match="never arrived"):
        agg.result(mask)


def test_aggregate_does_not_modify_input_and_checks_shapes():
    before = H.clone()
    run("norm_mean")
    run("mean")
    assert torch.equal(H, before)
    with pytest.raises(ValueError, match=r"\[layers, batch, tokens, width\]"):
        aggregate(H[0], MASK, "last")
    with pytest.raises(ValueError, match="does not match"):
        aggregate(H, torch.ones(2, 2, dtype=torch.bool), "last")


def test_normalize_matches_torch_layer_norm_and_rejects_unknown():
    x = torch.randn(4, 9) * 100
    torch.testing.assert_close(normalize(x, "layernorm"), torch.nn.LayerNorm(9, elementwise_affine=False)(x))
    torch.testing.assert_close(normalize(x, "l2").norm(dim=-1), torch.ones(4))
    with pytest.raises(ValueError, match="Unknown normalization"):
        normalize(x, "batchnorm")
