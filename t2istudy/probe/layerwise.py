"""Layer-wise probe of the conditioning: what each layer and strategy keeps, per benchmark skill.

A diffusion run mixes the text representation with everything the U-Net must learn and costs ~20 min
here; a probe on the *frozen* conditioning sequence isolates the representation and costs seconds.
The question it answers: does layer k (or strategy s) still carry the facts a skill needs?

Pipeline (each step one function, read top to bottom):

    shapes benchmark --probe_targets.probe_dataset--> prompts, Targets (the facts each caption determines)
    captions --featurize--> Features (every layer + strategies, encoded once; probe.features)
             --train_probes--> per-prompt correctness on held-out compositions (per representation, seed)
             --summarize_accuracy--> accuracy per skill with bootstrap CIs over prompts and the spread over seeds
             --probe_report.save_figures / relate_to_diffusion--> figures

Fairness: one model for every representation (per-token LayerNorm without affine, a few learned
queries attending over the tokens, a small MLP with one softmax head per target), the same steps,
batch, lr, init and batch order for every representation at a given seed. LayerNorm removes the input
scale confound (raw layers reach ~1e5), so the probe measures what is *in* the tokens, not how loud.

Probes of the same input shape train together as one ``torch.func`` ensemble (stacked parameters,
``vmap``): AdamW is per element, so this is the same as training each alone, only faster.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from t2istudy.probe.features import (  # noqa: F401  (the probe's public names, as before the split)
    LAYERS,
    Features,
    expand_representations,
    featurize,
    from_stack,
    template_of,
)
from t2istudy.probe.group_store import GroupStore
from t2istudy.probe.targets import Targets, ceiling, chance, probe_dataset, skill_correct
from t2istudy.scoring.bootstrap import mean_ci_over_prompts
from t2istudy.text.encoders import load_encoder

# "concat" and "learned" are supported too; each costs about as much as the whole per-layer sweep.
DEFAULT_REPRESENTATIONS = (LAYERS, "last", "mean", "norm_mean", "norm_mean[no_embed]")


@dataclass
class ProbeOptions:
    """Every probe knob in one place; identical for every representation of a sweep."""

    steps: int = 1500  # the pilot: 600 steps gave a jagged per-layer curve, 1,500 x 3 seeds a stable one
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of steps with a linear lr ramp, then cosine decay
    queries: int = 4  # learned queries attending over the tokens
    hidden: int = 64  # MLP width between the pooled queries and the heads
    max_members: int = 32  # probes trained together in one vmapped ensemble (memory vs speed)
    eval_batch: int = 256
    n_boot: int = 1000  # bootstrap resamples of prompts for the CIs
    threads: int | None = None  # torch threads while training (None = leave as is); 1 wins on a busy CPU


# ----------------------------------------------------------------------------------------------------
# The probe model


class Probe(nn.Module):
    """Learned queries attending over LayerNorm'd tokens, a shared value projection, a small MLP with
    one softmax head per fact (the heads are slices of the last layer's output).

    A learned query needs no key projection: ``q . (W_k x)`` is ``(W_k^T q) . x``, and the value
    projection commutes with the attention-weighted sum, so attending in the input space and projecting
    the pooled vectors is the usual attention pooling at a fraction of the cost. ``layers`` > 0 adds
    softmax weights over stacked states (the ``learned`` strategy).
    """

    def __init__(
        self, width: int, n_classes: Sequence[int], queries: int = 4, hidden: int = 64, layers: int = 0
    ):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(layers)) if layers else None
        self.query = nn.Parameter(torch.randn(width, queries) / math.sqrt(width))
        self.value = nn.Linear(width, hidden)
        self.mlp = nn.Sequential(
            nn.GELU(), nn.Linear(queries * hidden, hidden), nn.GELU(), nn.Linear(hidden, sum(n_classes))
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] (or [B, T, L, D] with layer weights), mask [B, T] -> logits [B, sum(classes)]."""
        if self.layer_logits is not None:
            x = torch.einsum("btld,l->btd", x, self.layer_logits.softmax(0))
            x = F.layer_norm(x, x.shape[-1:])
        scores = (x @ self.query).masked_fill(~mask[..., None], float("-inf"))  # [B, T, Q]
        pooled = torch.einsum("btq,btd->bqd", scores.softmax(dim=1), x)
        return self.mlp(self.value(pooled).flatten(1))


def _init_probe(seed: int, shape: tuple[int, ...], n_classes: Sequence[int], opts: ProbeOptions) -> Probe:
    """Same seed and shape -> same initial weights, whatever else is in the sweep."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers = shape[0] if len(shape) == 2 else 0
        return Probe(shape[-1], n_classes, opts.queries, opts.hidden, layers)


def _loss(logits: torch.Tensor, y: torch.Tensor, n_classes: Sequence[int]) -> torch.Tensor:
    """Sum over members and facts of the mean cross-entropy over prompts that state the fact."""
    total = logits.new_zeros(())
    members = logits.shape[0]
    for k, part in enumerate(logits.split(list(n_classes), dim=-1)):
        target = y[:, k].repeat(members)
        n_valid = (y[:, k] >= 0).sum().clamp(min=1)
        total = (
            total + F.cross_entropy(part.flatten(0, 1), target, ignore_index=-1, reduction="sum") / n_valid
        )
    return total


def _predict(logits: torch.Tensor, n_classes: Sequence[int]) -> torch.Tensor:
    """Argmax class per fact: [R, B, sum(classes)] -> [R, B, K]."""
    return torch.stack([part.argmax(-1) for part in logits.split(list(n_classes), dim=-1)], dim=-1)


def _fit_group(
    features: Features,
    names: list[str],
    targets: Targets,
    train_y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
    opts: ProbeOptions,
) -> np.ndarray:
    """Train one ensemble (one probe per name, same shape) and return test predictions [R, n_test, K]."""
    shape = features.shape_of(names[0])
    probes = [_init_probe(seed, shape, targets.n_classes, opts) for _ in names]
    params, _ = torch.func.stack_module_state(probes)
    base = copy.deepcopy(probes[0]).to("meta")

    def call(p, x, m):
        return torch.func.functional_call(base, p, (x, m))

    forward = torch.vmap(call, in_dims=(0, 0, None))
    optim = torch.optim.AdamW(params.values(), lr=opts.lr, weight_decay=opts.weight_decay)
    warmup = max(1, round(opts.warmup * opts.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warmup, then cosine decay to 0
        optim, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / opts.steps))
    )
    order = np.random.default_rng(seed)  # the same batches for every representation at this seed
    for _ in range(opts.steps):
        rows = order.choice(len(train), size=min(opts.batch_size, len(train)), replace=False)
        logits = forward(params, *features.batch(names, train[rows]))
        loss = _loss(logits, torch.as_tensor(train_y[rows]), targets.n_classes)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
    preds = []
    with torch.no_grad():
        for start in range(0, len(test), opts.eval_batch):
            rows = test[start : start + opts.eval_batch]
            preds.append(_predict(forward(params, *features.batch(names, rows)), targets.n_classes))
    return torch.cat(preds, dim=1).numpy()


def train_probes(
    features: Features,
    targets: Targets,
    train: np.ndarray,
    test: np.ndarray,
    *,
    representations: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    options: ProbeOptions | None = None,
    shuffle: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Train one probe per (representation, seed) on ``train`` rows and score it on ``test`` rows.

    ``shuffle=True`` is the control: each training representation is paired with another prompt's facts
    (a fixed permutation per seed), so the probe can only learn the class priors -> ``chance``.
    Returns one row per (representation, seed, test prompt, applicable skill) with a ``correct`` column.
    """
    opts = options or ProbeOptions()
    train, test = np.asarray(train), np.asarray(test)
    _check_split(features, targets, train, test, opts)
    names = list(representations or features.requested or features.names)
    unknown = [n for n in names if n not in features.names]
    if unknown:
        raise ValueError(f"Representations {unknown} were not featurized; available: {features.names}.")
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        groups.setdefault(features.shape_of(name), []).append(name)
    jobs = [
        (seed, members[i : i + opts.max_members])
        for seed in seeds
        for members in groups.values()
        for i in range(0, len(members), opts.max_members)
    ]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"probe {features.encoder}")
    frames = []
    previous_threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        for seed, members in jobs:
            frames += _run_job(features, targets, train, test, seed, members, opts, shuffle)
    finally:
        torch.set_num_threads(previous_threads)
    order = {n: i for i, n in enumerate(names)}
    table = pd.concat(frames, ignore_index=True)
    table["control"] = "shuffled" if shuffle else "none"
    return table.sort_values(
        ["representation", "seed", "skill", "prompt"],
        key=lambda c: c.map(order) if c.name == "representation" else c,
        kind="stable",
    ).reset_index(drop=True)


def _run_job(features, targets, train, test, seed, members, opts, shuffle) -> list[pd.DataFrame]:
    """One ensemble at one seed -> one frame of per-prompt correctness per (member, skill)."""
    train_y = targets.values[train]
    if shuffle:
        train_y = train_y[np.random.default_rng([seed, 1]).permutation(len(train))]
    pred = _fit_group(features, members, targets, train_y, train, test, seed, opts)
    frames = []
    for r, name in enumerate(members):
        for skill, (applicable, correct) in skill_correct(pred[r], targets, test).items():
            frames.append(
                pd.DataFrame(
                    {
                        "encoder": features.encoder,
                        "representation": name,
                        "seed": seed,
                        "prompt": test[applicable],
                        "skill": skill,
                        "correct": correct[applicable],
                    }
                )
            )
    return frames


def _check_split(
    features: Features, targets: Targets, train: np.ndarray, test: np.ndarray, opts: ProbeOptions
):
    n = len(features.mask)
    if len(targets.values) != n:
        raise ValueError(
            f"Features cover {n} prompts but targets {len(targets.values)}; build both from the same prompts."
        )
    for label, rows in (("train", train), ("test", test)):
        if rows.ndim != 1 or len(rows) == 0 or rows.min() < 0 or rows.max() >= n:
            raise ValueError(f"The {label} rows must be a non-empty 1-D array of prompt indices in [0, {n}).")
    if np.intersect1d(train, test).size:
        raise ValueError("train and test share prompts; the probe must be scored on held-out prompts only.")
    if opts.steps < 1 or opts.batch_size < 1:
        raise ValueError(
            f"ProbeOptions needs steps >= 1 and batch_size >= 1, got {opts.steps} and {opts.batch_size}."
        )


# ----------------------------------------------------------------------------------------------------
# Summaries


def summarize_accuracy(
    table: pd.DataFrame, chance: pd.Series | None = None, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Accuracy per (encoder, control, representation, skill): mean over seeds, the seed spread, and a
    percentile bootstrap CI over prompts of the seed-averaged per-prompt accuracy (+ ``chance``)."""
    rng = np.random.default_rng(seed)
    keys = ["encoder", "control", "representation", "skill"]
    rows = []
    for key, group in table.groupby(keys, sort=False):
        per_seed = group.groupby("seed")["correct"].mean()
        per_prompt = group.groupby("prompt")["correct"].mean().to_numpy(dtype=float)
        if per_prompt.min() == per_prompt.max():  # every resample is the same: the CI is the point
            low = high = per_prompt[0]
        else:
            low, high = mean_ci_over_prompts(per_prompt, rng, n_boot)
        rows.append(
            dict(
                zip(keys, key, strict=True),
                layer=_layer_index(key[2]),
                n=len(per_prompt),
                seeds=len(per_seed),
                accuracy=per_seed.mean(),
                ci_low=low,
                ci_high=high,
                seed_min=per_seed.min(),
                seed_max=per_seed.max(),
                seed_std=per_seed.std(ddof=0),
            )
        )
    out = pd.DataFrame(rows)
    if chance is not None:
        out["chance"] = out.skill.map(chance)
    return out


def _layer_index(name: str) -> float:
    return float(name.split(":")[1]) if from_stack(name) and name != "learned" else float("nan")


# ----------------------------------------------------------------------------------------------------
# The sweep the notebook runs: every encoder, every layer and strategy, the controls


@dataclass
class SweepResult:
    """Per-prompt correctness of every probe, the chance floor per skill, timings, and the prompts."""

    table: pd.DataFrame
    chance: pd.Series
    timings: pd.DataFrame
    prompts: pd.DataFrame
    ceiling: pd.Series | None = None

    def summary(self, n_boot: int = 1000) -> pd.DataFrame:
        out = summarize_accuracy(self.table, self.chance, n_boot=n_boot)
        if self.ceiling is not None:
            out["ceiling"] = out.skill.map(self.ceiling)
        return out


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch threads (None or 0: unchanged), then restore the previous count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sweep(
    encoders: Sequence[str],
    representations: Sequence[str] = DEFAULT_REPRESENTATIONS,
    *,
    skills: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    options: ProbeOptions | None = None,
    n_train: int = 2000,
    n_eval: int = 400,
    data_seed: int = 0,
    shuffled: bool = True,
    random_init: Sequence[str] = (),
    control_representations: Sequence[str] = ("last", "norm_mean"),
    load: Callable[..., object] | None = None,
    progress: bool = True,
    resume_dir: str | Path | None = None,
) -> SweepResult:
    """Probe every representation of every encoder on the same prompts, seeds and budget.

    Controls: ``shuffled`` trains on ``control_representations`` with facts of other prompts (-> chance);
    ``random_init`` lists encoders also probed with random weights of the same shape (same
    representations). minilm-l6 in ``encoders`` is the bidirectional, T5-like reference.
    ``load(name, random_init=...)`` defaults to ``encoders.load_encoder``.
    ``resume_dir``: each finished (encoder, template) group is kept there (``group_store``), and a rerun with
    the same arguments reads it back instead of encoding and probing again (an interrupted sweep resumes).
    """
    if isinstance(encoders, str):
        encoders = [encoders]
    if not encoders:
        raise ValueError("sweep needs at least one encoder, e.g. ['gemma3-270m', 'minilm-l6'].")
    missing = sorted(set(random_init) - set(encoders))
    if missing:
        raise ValueError(
            f"random_init names {missing}, which are not in encoders {list(encoders)}; add them there."
        )
    if load is None:
        load = load_encoder
    opts = options or ProbeOptions()
    prompts, targets, train, test = probe_dataset(n_train, n_eval, seed=data_seed)
    targets = targets.subset(skills)
    tables, timings = [], []
    runs = [(name, False) for name in encoders] + [(name, True) for name in random_init]
    store = GroupStore(resume_dir) if resume_dir is not None else None
    with _torch_threads(opts.threads):  # encoding too: with busy cores, 2 OpenMP threads wait on each other
        for name, random in runs:
            start = time.perf_counter()
            encoder = None  # loaded on the first group not already in the store
            members = list(control_representations) if random else list(representations)
            # the shuffled-facts controls (a random-init encoder is itself the control: none on top)
            controls = list(control_representations) if shuffled and not random else []
            timing = {"encode_s": 0.0, "probe_s": 0.0, "shuffled_s": 0.0}
            stored_s = 0.0  # time the stored groups took when they ran, counted in timing, not spent now
            # One encoder pass per prompt template: a template changes the forward pass, so each template's
            # representations are read from states encoded with it (most sweeps have one group, no template).
            for template in dict.fromkeys(template_of(r) for r in members + controls):
                group = [r for r in members if template_of(r) == template]
                group_controls = [r for r in controls if template_of(r) == template]
                settings = {
                    "encoder": name,
                    "random_init": random,
                    "template": template,
                    "members": group,
                    "controls": group_controls,
                    "seeds": list(seeds),
                    "skills": None if skills is None else list(skills),
                    "n_train": n_train,
                    "n_eval": n_eval,
                    "data_seed": data_seed,
                    # threads and n_boot do not change a probe's predictions
                    "options": {k: v for k, v in vars(opts).items() if k not in ("threads", "n_boot")},
                }
                done = store.load(settings) if store is not None else None
                if done is not None:  # finished in an earlier, interrupted sweep: its table and timings
                    group_table, record = done
                    tables.append(group_table)
                    for k in timing:
                        timing[k] += record["timing"][k]
                    stored_s += sum(record["timing"].values())
                    num_states = record["num_states"]
                    continue
                if encoder is None:
                    encoder = load(name, random_init=random) if random else load(name)
                group_tables = []
                t0 = time.perf_counter()
                features = featurize(
                    lambda batch, encoder=encoder, t=template: (
                        encoder.encode(batch, template=t) if t else encoder.encode(batch)
                    ),
                    list(prompts.prompt),
                    list(dict.fromkeys(group + group_controls)),
                    encoder_name=name,
                    progress=progress,
                )
                t1 = time.perf_counter()
                probe = functools.partial(
                    train_probes, features, targets, train, test, seeds=seeds, options=opts
                )
                if group:  # (a group may hold only the shuffled controls)
                    main = probe(
                        representations=expand_representations(group, features.num_states), progress=progress
                    )
                    if random:
                        main["control"] = "random_init"
                    group_tables.append(main)
                t2 = time.perf_counter()
                if group_controls:
                    names = expand_representations(group_controls, features.num_states)
                    group_tables.append(probe(representations=names, shuffle=True))
                group_timing = {
                    "encode_s": t1 - t0,
                    "probe_s": t2 - t1,
                    "shuffled_s": time.perf_counter() - t2,
                }
                for k in timing:
                    timing[k] += group_timing[k]
                num_states = features.num_states
                tables += group_tables
                if store is not None:
                    store.save(  # (a group always has a table: its members, its controls, or both)
                        settings,
                        pd.concat(group_tables, ignore_index=True),
                        {"timing": group_timing, "num_states": num_states},
                    )
                del features
            del encoder
            timings.append(
                {
                    "encoder": f"{name} (random init)" if random else name,
                    "num_states": num_states,
                    "members": len(expand_representations(members, num_states)),
                    "seeds": len(seeds),
                    "steps": opts.steps,
                    **timing,
                    # loading the encoder (and reading stored groups, whose timings are those of their run)
                    "load_s": time.perf_counter() - start - (sum(timing.values()) - stored_s),
                    "load_1min": os.getloadavg()[0],
                }
            )
    return SweepResult(
        pd.concat(tables, ignore_index=True),
        chance(targets, train, test),
        pd.DataFrame(timings),
        prompts,
        ceiling(targets, train, test),
    )
