"""How a GenEval-style prompt failed: one reason per failed image, read from what the judge detected.

Why: the verdict says only that an image failed. The levers differ by how it failed: a model that draws an
empty canvas needs other work than one that draws two objects in one colour (attribute leakage, the binding
failure the small study keeps hitting) or the right pair in the wrong place. The judge's ``detected``
column already lists every object it found ("red circle, blue square"); with the prompt's spec that is
enough to name the first thing that went wrong, checked in this order:

    empty            no object at all
    too few          fewer objects than the prompt names (counting: than its number)
    too many         more objects than that
    wrong shapes     the right number of objects, not the named shapes
    colour leak      the named shapes, all in one colour, where the prompt names two colours
    colours swapped  the named shapes, each in the colour the prompt gives the other
    wrong colours    the named shapes in other colours
    relation         the named objects in their named colours, not in the named relation (position)

    other            none of these (the judge failed it on something ``detected`` does not show)

A passed image is ``pass``. The order follows the judge's own checks, so every failed image gets exactly
one reason and the reasons of a task add up to its failure rate.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from t2istudy.world.shapes_geneval import EXTRA_TASKS, TASKS, make_geneval_tier

FAILURES: tuple[str, ...] = (
    "pass",
    "empty",
    "too few",
    "too many",
    "wrong shapes",
    "colour leak",
    "colours swapped",
    "wrong colours",
    "relation",
    "other",
)


def parse_detected(text: object) -> list[tuple[str, str]]:
    """The judge's ``detected`` cell ("red circle, blue square") as [(colour, shape), ...]; empty if none."""
    if not isinstance(text, str) or not text.strip():
        return []
    objects = []
    for item in text.split(","):
        colour, _, shape = item.strip().partition(" ")
        if not shape:
            raise ValueError(
                f"Cannot read detected object {item.strip()!r} in {text!r}: expected 'colour shape'."
            )
        objects.append((colour, shape))
    return objects


def failure_mode(constraints: list[dict], detected: list[tuple[str, str]], passed: bool) -> str:
    """The first reason (``FAILURES``) an image with these detections fails these GenEval-style constraints."""
    if passed:
        return "pass"
    if not detected:
        return "empty"
    counts = [c for c in constraints if c.get("type") == "count"]
    total = next((c["n"] for c in counts if c["shape"] is None and c["color"] is None), None)
    named = [c for c in counts if c["shape"] is not None]
    wanted = total if total is not None else sum(c["n"] for c in named)
    if len(detected) < wanted:
        return "too few"
    if len(detected) > wanted:
        return "too many"
    relations = [c for c in constraints if c.get("type") == "relation"]
    wanted_shapes: Counter[str] = Counter()
    for c in named:
        wanted_shapes[c["shape"]] += c["n"]
    if not named:  # position names its two shapes only in its relation
        wanted_shapes = Counter(r[side]["shape"] for r in relations for side in ("a", "b"))
    if Counter(shape for _, shape in detected) != wanted_shapes:
        return "wrong shapes"
    coloured = {c["shape"]: c["color"] for c in named if c["color"] is not None}
    drawn = {shape: colour for colour, shape in detected}
    if any(drawn[shape] != colour for shape, colour in coloured.items()):
        if len(set(coloured.values())) > 1 and len({colour for colour, _ in detected}) == 1:
            return "colour leak"
        if len(coloured) == 2:
            (sa, ca), (sb, cb) = coloured.items()
            if (drawn[sa], drawn[sb]) == (cb, ca):
                return "colours swapped"
        return "wrong colours"
    if relations:
        return "relation"
    return "other"  # by this reading the image passes: the judge saw something the detections do not say


def classify(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` (GenEval-style rows: id, prompt, score, detected, geneval_per_task[, benchmark_seed]) with a
    ``failure`` column. The prompts' specs are regenerated from the tier's size and seed and checked against
    the prompts the run scored, so a table from another tier or seed fails loudly rather than misreads."""
    missing = [c for c in ("id", "prompt", "score", "detected") if c not in scores.columns]
    if missing:
        raise ValueError(
            f"The scores have no {missing} column: classify needs the judge's GenEval-style table "
            "(run_results.load_scores(..., tier='geneval'), metric='score')."
        )
    out = []
    keys = ["geneval_per_task", "benchmark_seed"]
    frame = scores.assign(
        **{k: scores[k] if k in scores.columns else d for k, d in zip(keys, (50, 0), strict=True)}
    )
    for (n_per_task, seed), part in frame.groupby(keys, sort=False):
        tier = make_geneval_tier(int(n_per_task), int(seed)).set_index("id")
        unknown = sorted(set(part["id"]) - set(tier.index))
        if unknown:
            raise ValueError(
                f"Prompts {unknown[:3]} are not in the GenEval-style tier of {n_per_task} per task, seed {seed}: "
                "the scores' geneval_per_task and benchmark_seed columns (the run parameters; 50 and 0 when "
                "absent) must be those the runs were scored with."
            )
        specs = tier.loc[part["id"]]
        changed = part["prompt"].to_numpy() != specs["prompt"].to_numpy()
        if changed.any():
            first = part[changed].iloc[0]
            raise ValueError(
                f"Prompt {first['id']} reads {first['prompt']!r} in the scores but "
                f"{specs.loc[first['id'], 'prompt']!r} in the regenerated tier: the tier's generator changed "
                "since these runs were scored; classify them with the code they were scored with."
            )
        reasons = [
            failure_mode(spec["constraints"], parse_detected(detected), bool(score >= 1.0))
            for spec, detected, score in zip(specs["spec"], part["detected"], part["score"], strict=True)
        ]
        out.append(part.assign(failure=reasons))
    return pd.concat(out) if out else scores.assign(failure=pd.Series(dtype=str))


def failure_shares(classified: pd.DataFrame, by: tuple[str, ...] = ("encoder", "strategy")) -> pd.DataFrame:
    """Share of each task's images per failure reason, per group (``by``), pooled over seeds and prompts.

    Long form: by..., task, failure, images, share; every reason of ``FAILURES`` appears (share 0 if none),
    and a task's shares add up to 1 (its ``pass`` share is the task's verdict).
    """
    groups = [*by, "task"]
    counts = classified.groupby([*groups, "failure"]).size().rename("images")
    full = pd.MultiIndex.from_tuples(
        [(*key, reason) for key in classified.groupby(groups).size().index for reason in FAILURES],
        names=[*groups, "failure"],
    )
    table = counts.reindex(full, fill_value=0).reset_index()
    table["share"] = table["images"] / table.groupby(groups)["images"].transform("sum")
    order = {task: i for i, task in enumerate((*TASKS, *EXTRA_TASKS))}
    table["_task"] = table["task"].map(order)
    table["_failure"] = table["failure"].map({f: i for i, f in enumerate(FAILURES)})
    return (
        table.sort_values([*by, "_task", "_failure"])
        .drop(columns=["_task", "_failure"])
        .reset_index(drop=True)
    )
