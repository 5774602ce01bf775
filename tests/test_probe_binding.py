"""The binding probe on seen compositions: near 1 when features bind, near chance when they do not."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from t2istudy.probe import binding
from t2istudy.probe.layerwise import ProbeOptions
from t2istudy.world.shapes import DEFAULT_HOLDOUT, PALETTE, SHAPES

WIDTH = 48


def _vectors(seed: int, names: list[str]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(WIDTH, generator=g) for n in names}


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def synthetic_encoder(binds: bool):
    """Whitespace tokens, one random vector per word (a bag of words, no position). With ``binds`` each
    noun's state also holds a vector for its (preceding colour, shape) pair, as a causal encoder could."""
    vocab: dict[str, torch.Tensor] = {}
    pair = _vectors(1, [f"{c} {s}" for c in PALETTE for s in SHAPES])

    def word(w: str) -> torch.Tensor:
        if w not in vocab:
            vocab[w] = _vectors(abs(hash(w)) % 10_000, [w])[w]
        return vocab[w]

    def states(prompts: list[str]):
        tokens = [_words(p) for p in prompts]
        length = max(len(t) for t in tokens)
        hidden = torch.zeros(2, len(prompts), length, WIDTH)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool)
        for i, toks in enumerate(tokens):
            colour = None
            for j, (w, _, _) in enumerate(toks):
                w = w.strip(",")
                hidden[:, i, j] = word(w)
                if w in PALETTE:
                    colour = w
                if binds and w in SHAPES and colour is not None:
                    hidden[:, i, j] += 2 * pair[f"{colour} {w}"]
                mask[i, j] = True
        return hidden, mask

    return states, lambda text: [(s, e) for _, s, e in _words(text)]


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return binding.binding_prompts(n_colour=240, n_position=40, seed=0)


def _summary(data: pd.DataFrame, binds: bool) -> pd.DataFrame:
    states, offsets = synthetic_encoder(binds)
    feats, mask = binding.featurize(states, list(data.prompt), ["last"])
    nouns = binding.noun_positions(list(data.prompt), list(data["first"]), list(data["second"]), offsets)
    table = binding.probe_binding(
        feats, mask, data, nouns, encoder="synthetic", seeds=[0], options=ProbeOptions(steps=300)
    )
    return binding.summarize(table, n_boot=100).set_index(["reader", "task", "order"])


def test_prompts_are_swap_balanced_and_name_each_pair_adjacently(data):
    comps = binding.balanced_compositions(DEFAULT_HOLDOUT)
    allowed = set(DEFAULT_HOLDOUT.allowed_pairs())
    assert len(comps) == 6  # two colours fit both shapes of each shape pair under the default holdout
    for (c1, s1), (c2, s2) in comps:
        assert {(c1, s2), (c2, s1)} <= allowed
    colour = data[data.task == "colour"]
    for text, first, second in zip(colour.prompt, colour["first"], colour["second"], strict=True):
        assert re.findall(r"circle|square|triangle", text) == [first, second]
    # each bag of words occurs with both bindings: the colour of the circle is not fixed by the words
    named = r"(?<!no )\b(red|green|blue|yellow)\b"  # "..., and no green shapes" names no object's colour
    bags = colour.assign(bag=colour.prompt.map(lambda t: frozenset(re.findall(named, t))))
    circle = bags[bags.colour_circle >= 0]
    assert (circle.groupby("bag").colour_circle.nunique() == 2).all()
    position = data[data.task == "position"]
    assert set(position.left_shape) <= {0, 1, 2} and (colour[["left_shape"]] == -1).all().all()


def test_noun_positions_point_at_the_noun_tokens(data):
    _, offsets = synthetic_encoder(True)
    nouns = binding.noun_positions(list(data.prompt), list(data["first"]), list(data["second"]), offsets)
    for text, (i, j), first, second in zip(data.prompt, nouns, data["first"], data["second"], strict=True):
        words = text.split()
        assert words[i].strip(",") == first and words[j].strip(",") == second


def test_binding_features_are_read_and_a_bag_of_words_is_at_chance(data):
    bound, bag = _summary(data, binds=True), _summary(data, binds=False)
    for reader in ("sequence", "mean", "token"):
        for order in ("first", "second"):
            key = (reader, "colour", order)
            assert bound.loc[key, "accuracy"] >= 0.95, (key, bound.loc[key, "accuracy"])
            assert bag.loc[key, "accuracy"] <= 0.70, (key, bag.loc[key, "accuracy"])
            assert 0.35 <= bag.loc[key, "chance"] <= 0.65


def test_summary_counts_one_row_per_asked_object(data):
    states, offsets = synthetic_encoder(True)
    feats, mask = binding.featurize(states, list(data.prompt), ["last"])
    nouns = binding.noun_positions(list(data.prompt), list(data["first"]), list(data["second"]), offsets)
    table = binding.probe_binding(feats, mask, data, nouns, seeds=[0, 1], options=ProbeOptions(steps=5))
    n_colour, n_position = (data.task == "colour").sum(), (data.task == "position").sum()
    test_colour, test_position = n_colour - round(n_colour * 0.75), n_position - round(n_position * 0.75)
    counts = table.groupby(["reader", "task"]).size()
    assert counts[("sequence", "colour")] == 2 * 2 * test_colour  # two seeds, two objects a prompt
    assert counts[("token", "colour")] == 2 * 2 * test_colour
    assert counts[("mean", "position")] == 2 * test_position
    assert ("token", "position") not in counts
    assert np.isin(table.order.unique(), ["first", "second", "all"]).all()


def test_rms_scale_is_one_dataset_wide_factor_and_layernorm_is_per_token(data):
    states, _ = synthetic_encoder(True)
    prompts = list(data.prompt[:50])
    hidden, mask = states(prompts)
    ln, m = binding.featurize(states, prompts, ["last"], chunk=16)
    rms, _ = binding.featurize(states, prompts, ["last"], chunk=16, scale="rms")
    real = rms["last"].float()[m]
    assert real.pow(2).mean().item() == pytest.approx(1.0, rel=1e-3)
    raw = hidden[-1][: m.shape[0], : m.shape[1]][m]
    ratio = real / raw  # one factor for every token and channel
    assert ratio.std().item() < 1e-2 * ratio.mean().item()
    assert ln["last"].float()[m].mean(-1).abs().max().item() < 1e-2
    with pytest.raises(ValueError, match="Unknown scale"):
        binding.featurize(states, prompts, ["last"], scale="none")
