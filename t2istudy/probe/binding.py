"""Binding probe on SEEN compositions: does the conditioning say which colour goes with which object?

The layer-wise probe (``probe.layerwise``) tests binding on held-out colour-shape pairs only, where every
representation sits near chance. That leaves open which side loses binding in the diffusion runs (two
objects 0.17, colour attribution 0.19 on seen compositions): the text representation, or the generator.
This probe asks the text side alone, on prompts worded like the training captions
(``shapes.caption`` on two-object scenes), built from colour-shape pairs the training stream shows:

- **colour**: "a red circle and a yellow triangle" -> the colour of the circle, of the triangle. Only
  *swap-balanced* compositions are used ({yellow circle, red triangle} is in the data too, and both
  orders of naming), so the words present (a bag of words) and their order leave the answer at 50%:
  only a representation that binds each colour to its own noun can pass.
- **position**: "a red circle to the left of a blue square" or "... to the right of ..." -> the shape of
  the left object (both naming orders, both relation words: again 50% from the words alone).

Three readers of each representation, each what a U-Net's conditioning path could use:

- ``sequence``: learned queries attending over every token, then an MLP (``layerwise.Probe``, as
  cross-attention plus a projection reads the sequence);
- ``mean``: the masked mean over tokens, then an MLP (one pooled vector);
- ``token``: a linear read-out of the object noun's own state ("circle" after "red"), per object in
  naming order (the first noun sees only its own colour in a causal encoder; the second sees both).

``layer:0`` (token embeddings: a bag of words plus position) is the built-in control: chance on binding
by construction. Every representation is LayerNorm'd per token (no affine), as in the layer-wise probe.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from t2istudy.probe.layerwise import Probe, ProbeOptions, summarize_accuracy
from t2istudy.text.aggregation import aggregate
from t2istudy.world.shapes import (
    DEFAULT_HOLDOUT,
    PALETTE,
    SHAPES,
    SIZES,
    Holdout,
    Obj,
    Scene,
    caption,
    pick,
    place,
    relation_holds,
)

COLOURS = tuple(PALETTE)
COLOUR_HEADS = tuple(f"colour_{s}" for s in SHAPES)  # the colour of the circle / square / triangle
READERS = ("sequence", "mean", "token")
DEFAULT_REPRESENTATIONS = ("layer:0", "mid", "last", "norm_mean")  # "mid": the middle hidden state

States = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]  # prompts -> hidden [L,B,T,D], mask [B,T]
Offsets = Callable[[str], list[tuple[int, int]]]  # prompt -> character span of each token (as encoded)


# ----------------------------------------------------------------------------------------------------
# Prompts


def balanced_compositions(holdout: Holdout = DEFAULT_HOLDOUT) -> list[tuple[tuple[str, str], ...]]:
    """Two-object compositions ((colour, shape), (colour, shape)) of distinct shapes and colours whose swap
    (each shape with the other's colour) is allowed too: the words then never decide the binding."""
    allowed = set(holdout.allowed_pairs())
    out = []
    for i, s1 in enumerate(SHAPES):
        for s2 in SHAPES[i + 1 :]:
            for c1 in COLOURS:
                for c2 in COLOURS:
                    pairs = {(c1, s1), (c2, s2), (c2, s1), (c1, s2)}
                    if c1 != c2 and pairs <= allowed:
                        out.append(((c1, s1), (c2, s2)))
    return out


def _named_order(text: str) -> list[str]:
    """The shapes in the order the caption names them."""
    return [m.group(1) for m in re.finditer(r"\b(circle|square|triangle)\b", text)]


def binding_prompts(
    n_colour: int = 1600, n_position: int = 800, seed: int = 0, holdout: Holdout = DEFAULT_HOLDOUT
) -> pd.DataFrame:
    """Unique training-style captions with the binding facts they fix.

    Columns: ``prompt``, ``task`` ("colour" / "position"), ``first`` / ``second`` (the shapes in naming
    order), ``colour_<shape>`` (colour index of that shape, -1 when absent or for position prompts) and
    ``left_shape`` (shape index of the left object, -1 for colour prompts).
    """
    rng = np.random.default_rng(seed)
    compositions = balanced_compositions(holdout)
    if not compositions:
        raise ValueError("The holdout leaves no swap-balanced two-object composition; hold out fewer pairs.")
    rows: dict[str, dict] = {}

    def add(text: str, task: str, objs: list[Obj], left: str | None) -> None:
        order = _named_order(text)
        colours = {o.shape: o.color for o in objs}
        if len(order) != 2 or set(order) != set(colours):
            return  # a wording that does not name both objects once each
        if any(f"{colours[s]} {s}" not in text for s in order):
            return  # a colour not written next to its noun (never in these captions; kept as a guard)
        row = {"prompt": text, "task": task, "first": order[0], "second": order[1]}
        for shape, head in zip(SHAPES, COLOUR_HEADS, strict=True):
            row[head] = COLOURS.index(colours[shape]) if task == "colour" and shape in colours else -1
        row["left_shape"] = SHAPES.index(left) if left is not None else -1
        rows.setdefault(text, row)

    tries = 0
    while sum(r["task"] == "colour" for r in rows.values()) < n_colour:
        tries += 1
        if tries > 50 * n_colour:
            raise RuntimeError(f"Only found {len(rows)} distinct colour prompts; ask for fewer (n_colour).")
        (c1, s1), (c2, s2) = compositions[int(rng.integers(len(compositions)))]
        if rng.random() < 0.5:  # which colour goes with which shape: both bindings equally often
            c1, c2 = c2, c1
        items = [(s1, c1, SIZES[pick(rng, tuple(SIZES))]), (s2, c2, SIZES[pick(rng, tuple(SIZES))])]
        objs = place(rng, items)
        scene = Scene(pick(rng, ("white", "black", "gray")), objs)
        add(caption(scene, rng, holdout), "colour", objs, None)

    def side_by_side(objs: list[Obj]) -> bool:
        a, b = objs
        left_right = relation_holds("left_of", a, b) or relation_holds("right_of", a, b)
        return left_right and not (relation_holds("above", a, b) or relation_holds("below", a, b))

    pairs = holdout.allowed_pairs()
    tries = 0
    while sum(r["task"] == "position" for r in rows.values()) < n_position:
        tries += 1
        if tries > 50 * n_position:
            raise RuntimeError(f"Only found {len(rows)} distinct prompts; ask for fewer (n_position).")
        (c1, s1), (c2, s2) = (pairs[int(i)] for i in rng.choice(len(pairs), 2, replace=False))
        if s1 == s2:
            continue
        size = SIZES[pick(rng, tuple(SIZES))]  # equal sizes: "larger" is never the stated relation
        objs = place(rng, [(s1, c1, size), (s2, c2, size)], predicate=side_by_side)
        text = caption(Scene(pick(rng, ("white", "black", "gray")), objs), rng, holdout, p_relation=1.0)
        if " left of " in text or " right of " in text:
            left = min(objs, key=lambda o: o.x).shape
            add(text, "position", objs, left)
    return pd.DataFrame(list(rows.values()))


# ----------------------------------------------------------------------------------------------------
# Features


def noun_positions(prompts: Sequence[str], first: Sequence[str], second: Sequence[str], offsets: Offsets):
    """Token index of each prompt's first and second named noun ([N, 2]): the token holding its last
    character (the noun's last sub-token, where a causal encoder has read the whole word)."""
    out = np.zeros((len(prompts), 2), dtype=np.int64)
    for i, (text, nouns) in enumerate(zip(prompts, zip(first, second, strict=True), strict=True)):
        spans = offsets(text)
        for j, noun in enumerate(nouns):
            end = re.search(rf"\b{noun}\b", text).end()
            hits = [t for t, (s, e) in enumerate(spans) if s < end <= e]
            if not hits:
                raise ValueError(
                    f"No token of {text!r} covers the end of {noun!r}; check the offsets function."
                )
            out[i, j] = hits[-1]
    return out


SCALES = ("layernorm", "rms")


def featurize(
    states: States,
    prompts: Sequence[str],
    representations: Sequence[str],
    chunk: int = 128,
    scale: str = "layernorm",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every representation of every prompt with padding zeroed (float16 [N, T, D]), and the mask [N, T].

    ``scale="layernorm"``: each token LayerNorm'd (no affine), as the layer-wise probe does; ``"rms"``: one
    factor per representation bringing the RMS over every real token to 1, as the study's conditioner
    does (``input_scale="rms"``), i.e. what its projection receives. ``mid`` is the middle hidden state
    (``layer:<num_states // 2>``)."""
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}; use one of {', '.join(SCALES)}.")
    parts: dict[str, list[torch.Tensor]] = {r: [] for r in representations}
    squares = dict.fromkeys(representations, 0.0)
    masks = []
    for start in range(0, len(prompts), chunk):
        hidden, mask = states(list(prompts[start : start + chunk]))
        hidden, mask = hidden.float(), mask.bool()
        masks.append(mask)
        for rep in representations:
            name = f"layer:{hidden.shape[0] // 2}" if rep == "mid" else rep
            x = aggregate(hidden, mask, name)
            if scale == "layernorm":
                x = F.layer_norm(x, x.shape[-1:])
            x = x * mask[..., None]
            squares[rep] += float(x.double().pow(2).sum())
            parts[rep].append(x if scale == "rms" else x.half())  # raw states can exceed float16
    width = max(m.shape[1] for m in masks)
    mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks])
    feats = {}
    for rep, ps in parts.items():
        x = torch.cat([F.pad(p, (0, 0, 0, width - p.shape[1])) for p in ps])
        if scale == "rms":
            x = (x / math.sqrt(squares[rep] / (int(mask.sum()) * x.shape[-1]))).half()
        feats[rep] = x
    return feats, mask


# ----------------------------------------------------------------------------------------------------
# Readers and their training


class MeanReader(nn.Module):
    """The masked mean over tokens, then an MLP (what one pooled vector keeps)."""

    def __init__(self, width: int, n_classes: Sequence[int], hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, sum(n_classes)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].float()
        return self.mlp((x * m).sum(1) / m.sum(1).clamp(min=1))


class TokenReader(nn.Module):
    """A linear read-out of one token's state (the object noun's)."""

    def __init__(self, width: int, n_classes: Sequence[int]):
        super().__init__()
        self.linear = nn.Linear(width, sum(n_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(x)


def _reader(kind: str, width: int, n_classes: Sequence[int], opts: ProbeOptions, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "sequence":
            return Probe(width, n_classes, opts.queries, opts.hidden)
        if kind == "mean":
            return MeanReader(width, n_classes, opts.hidden)
        if kind == "token":
            return TokenReader(width, n_classes)
    raise ValueError(f"Unknown reader {kind!r}; use one of {', '.join(READERS)}.")


def _fit_predict(
    model: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    n_classes: Sequence[int],
    opts: ProbeOptions,
    seed: int,
) -> np.ndarray:
    """AdamW with warmup + cosine on minibatches of ``train`` rows (ignoring targets of -1), then the
    argmax class per head on ``test`` rows [n_test, heads]."""
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    warm = max(1, int(opts.warmup * opts.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / opts.steps))),
    )
    rng = np.random.default_rng([seed, 7])
    yt = torch.tensor(y)

    def logits(rows: np.ndarray) -> torch.Tensor:
        rows_t = torch.as_tensor(rows)
        return model(x[rows_t].float(), None if mask is None else mask[rows_t])

    model.train()
    for _ in range(opts.steps):
        rows = train[rng.choice(len(train), size=min(opts.batch_size, len(train)), replace=False)]
        out = logits(rows).split(list(n_classes), dim=-1)
        loss = sum(
            F.cross_entropy(part, yt[rows, k], ignore_index=-1, reduction="sum")
            / (yt[rows, k] >= 0).sum().clamp(min=1)
            for k, part in enumerate(out)
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        out = logits(test).split(list(n_classes), dim=-1)
    return torch.stack([part.argmax(-1) for part in out], dim=-1).numpy()


def _split(n: int, seed: int, test_share: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, 3]).permutation(n)
    cut = int(round(n * (1 - test_share)))
    return np.sort(order[:cut]), np.sort(order[cut:])


def probe_binding(
    feats: dict[str, torch.Tensor],
    mask: torch.Tensor,
    data: pd.DataFrame,
    nouns: np.ndarray,
    *,
    encoder: str = "",
    seeds: Sequence[int] = (0, 1, 2),
    options: ProbeOptions | None = None,
    data_seed: int = 0,
) -> pd.DataFrame:
    """Per-item correctness of every (representation, reader, task) at every seed on held-out prompts.

    Columns: encoder, representation, reader, task, order (first / second named object; "all" for
    position), seed, prompt (row of ``data``), correct, chance (the training majority's answer right).
    """
    opts = options or ProbeOptions(steps=600)
    frames = []
    for task in ("colour", "position"):
        rows = np.flatnonzero(data.task.to_numpy() == task)
        if len(rows) < 8:
            raise ValueError(f"The {task} task has {len(rows)} prompts; give binding_prompts at least 8.")
        train, test = (rows[i] for i in _split(len(rows), data_seed))
        heads = list(COLOUR_HEADS) if task == "colour" else ["left_shape"]
        n_classes = [len(COLOURS)] * 3 if task == "colour" else [len(SHAPES)]
        y = data[heads].to_numpy(dtype=np.int64)
        for rep, x in feats.items():
            for reader in READERS:
                if reader == "token" and task != "colour":
                    continue  # a noun's own state is asked for its colour only
                for seed in seeds:
                    classes = [len(COLOURS)] if reader == "token" else n_classes
                    model = _reader(reader, x.shape[-1], classes, opts, seed)
                    if reader == "token":
                        frames.append(
                            _token_rows(model, x, data, nouns, train, test, opts, seed).assign(
                                representation=rep, seed=seed
                            )
                        )
                        continue
                    pred = _fit_predict(model, x, mask, y, train, test, n_classes, opts, seed)
                    frames.append(
                        _sequence_rows(pred, data, y, heads, train, test, task).assign(
                            representation=rep, reader=reader, seed=seed
                        )
                    )
    table = pd.concat(frames, ignore_index=True)
    table["encoder"] = encoder
    cols = ["encoder", "representation", "reader", "task", "order", "seed", "prompt", "correct", "chance"]
    return table[cols]


def _sequence_rows(pred, data, y, heads, train, test, task) -> pd.DataFrame:
    """One row per (test prompt, asked object): the colour of each named shape, or the left shape."""
    majority = [np.bincount(y[train, k][y[train, k] >= 0]).argmax() for k in range(len(heads))]
    out = []
    for j, row in enumerate(test):
        if task == "position":
            out.append(("all", row, pred[j, 0] == y[row, 0], majority[0] == y[row, 0]))
            continue
        for order in ("first", "second"):
            k = SHAPES.index(data[order].iat[row])
            out.append((order, row, pred[j, k] == y[row, k], majority[k] == y[row, k]))
    frame = pd.DataFrame(out, columns=["order", "prompt", "correct", "chance"])
    return frame.assign(task=task)


def _token_rows(model, x, data, nouns, train, test, opts, seed) -> pd.DataFrame:
    """A linear read-out of each noun's own state for its colour: trained on both nouns of the training
    prompts, scored per naming order (the chance column: the training majority colour of that shape)."""
    colour = np.stack(
        [data.apply(lambda r, o=o: r[f"colour_{r[o]}"], axis=1).to_numpy() for o in ("first", "second")], 1
    )
    shape = np.stack([data[o].map(SHAPES.index).to_numpy() for o in ("first", "second")], 1)
    idx = torch.as_tensor(np.arange(len(data)))[:, None]
    tokens = x[idx, torch.as_tensor(nouns)]  # [N, 2, D]
    flat = tokens.reshape(-1, tokens.shape[-1])
    y = colour.reshape(-1, 1).astype(np.int64)
    flat_train = np.concatenate([2 * train, 2 * train + 1])
    flat_test = np.concatenate([2 * test, 2 * test + 1])
    pred = _fit_predict(model, flat, None, y, flat_train, flat_test, [len(COLOURS)], opts, seed)[:, 0]
    majority = {
        s: np.bincount(colour[train][shape[train] == s], minlength=len(COLOURS)).argmax()
        for s in range(len(SHAPES))
    }
    row, order = flat_test // 2, flat_test % 2
    truth = colour[row, order]
    return pd.DataFrame(
        {
            "reader": "token",
            "task": "colour",
            "order": np.where(order == 0, "first", "second"),
            "prompt": row,
            "correct": pred == truth,
            "chance": [majority[s] == t for s, t in zip(shape[row, order], truth, strict=True)],
        }
    )


def summarize(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Accuracy per (encoder, representation, reader, task, order): mean over seeds, the seed range, a
    bootstrap CI over prompts of the seed-averaged correctness (``layerwise.summarize_accuracy``, with the
    reader as its control and task/order as its skill), and the chance (majority-answer) rate."""
    keyed = table.assign(control=table.reader, skill=table.task + "/" + table.order)
    out = summarize_accuracy(keyed, n_boot=n_boot, seed=seed)
    out[["task", "order"]] = out.skill.str.split("/", expand=True)
    chance = keyed.groupby(["encoder", "control", "representation", "skill"], sort=False)["chance"].mean()
    out["chance"] = chance.loc[
        list(zip(out.encoder, out.control, out.representation, out.skill, strict=True))
    ].to_numpy()
    cols = [
        "encoder",
        "representation",
        "reader",
        "task",
        "order",
        "n",
        "seeds",
        "accuracy",
        "ci_low",
        "ci_high",
        "seed_min",
        "seed_max",
        "chance",
    ]
    return out.rename(columns={"control": "reader"})[cols]


# ----------------------------------------------------------------------------------------------------
# A real encoder, end to end


@dataclass
class EncoderTiming:
    encoder: str
    prompts: int
    encode_s: float
    probe_s: float
    load_1min: float


def hf_offsets(tokenizer) -> Offsets:
    """Character spans of the tokens a (fast) tokenizer gives a prompt, special tokens included."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("The binding probe needs a fast tokenizer (offsets); this encoder's is not.")
    return lambda text: [tuple(s) for s in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]


def run_encoder(
    encoder,
    data: pd.DataFrame,
    representations: Sequence[str] = DEFAULT_REPRESENTATIONS,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    options: ProbeOptions | None = None,
    scale: str = "layernorm",
) -> tuple[pd.DataFrame, EncoderTiming]:
    """Encode ``data``'s prompts with a ``FrozenEncoder`` and probe them; the per-item table and timing.
    The noun positions come from the same tokenizer with offsets (special tokens included, as encoded).
    A ``scale`` other than the layer-wise probe's per-token LayerNorm labels the encoder ``name[scale]``."""
    label = encoder.name + ("" if scale == "layernorm" else f"[{scale}]")
    t0 = time.perf_counter()

    def states(batch: list[str]):
        s = encoder.encode(batch)
        return s.hidden, s.mask

    feats, mask = featurize(states, list(data.prompt), representations, scale=scale)
    offsets = hf_offsets(encoder.tokenizer)
    nouns = noun_positions(list(data.prompt), list(data["first"]), list(data["second"]), offsets)
    t1 = time.perf_counter()
    table = probe_binding(feats, mask, data, nouns, encoder=label, seeds=seeds, options=options)
    timing = EncoderTiming(label, len(data), t1 - t0, time.perf_counter() - t1, os.getloadavg()[0])
    return table, timing
