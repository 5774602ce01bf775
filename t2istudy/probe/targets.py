"""What the probe must predict: the facts each shapes-world caption determines, grouped per skill.

Why a module of its own: the targets are the probe's ground truth and the part a reader must trust
before any accuracy means anything. A count is a target only when every scene satisfying the prompt's
spec agrees on it (``spec_facts``); training prompts come from allowed compositions only and test prompts
are the benchmark's held-out ones (``probe_dataset``); ``chance`` and ``ceiling`` say what a caption-blind
probe gets and what any probe can reach.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from t2istudy.world import shapes, shapes_benchmark

# ----------------------------------------------------------------------------------------------------
# Targets: categorical facts per prompt, grouped per skill


@dataclass
class Targets:
    """Categorical facts per prompt; ``values[i, k] == -1`` means caption i does not determine fact k.

    ``groups`` maps each skill to the facts it checks; ``tags`` lists the skills each prompt is scored on
    (the benchmark's skill tags; None = every skill). A prompt is right on a skill when every fact of
    that skill's group that its caption determines is predicted right (exact accuracy, like the judge).
    """

    names: list[str]
    classes: list[list[str]]  # class labels per fact; values index into them
    values: np.ndarray  # [N, K] int64
    groups: dict[str, list[str]]
    tags: list[tuple[str, ...]] | None = None

    def __post_init__(self):
        k = len(self.names)
        if len(self.classes) != k or self.values.ndim != 2 or self.values.shape[1] != k:
            raise ValueError(
                f"Targets: names ({k}), classes ({len(self.classes)}) and the columns of values "
                f"{tuple(self.values.shape)} must all describe the same facts."
            )
        too_big = self.values >= np.array([len(c) for c in self.classes], dtype=np.int64)[None, :]
        if (self.values < -1).any() or too_big.any():
            raise ValueError(
                "Targets.values must be class indices into Targets.classes, or -1 for 'not stated'."
            )
        unknown = sorted({f for facts in self.groups.values() for f in facts} - set(self.names))
        if unknown:
            raise ValueError(
                f"Targets.groups name facts {unknown} that are not among the targets {self.names}."
            )
        if self.tags is not None and len(self.tags) != len(self.values):
            raise ValueError(f"Targets.tags has {len(self.tags)} entries for {len(self.values)} prompts.")

    @property
    def n_classes(self) -> list[int]:
        return [len(c) for c in self.classes]

    def subset(self, skills: Iterable[str] | None) -> Targets:
        """Only ``skills`` and the facts they check (None = all); unknown skill names are an error."""
        if skills is None:
            return self
        skills = [skills] if isinstance(skills, str) else list(skills)
        unknown = sorted(set(skills) - set(self.groups))
        if unknown:
            raise ValueError(f"Unknown probe skills {unknown}; available: {list(self.groups)}.")
        wanted = {f for s in skills for f in self.groups[s]}
        keep = [k for k, n in enumerate(self.names) if n in wanted]
        return Targets(
            [self.names[k] for k in keep],
            [self.classes[k] for k in keep],
            self.values[:, keep],
            {s: self.groups[s] for s in skills},
            self.tags,
        )

    @classmethod
    def from_facts(
        cls,
        facts: Sequence[Mapping[str, object]],
        groups: Mapping[str, Sequence[str]],
        tags: Sequence[Iterable[str]] | None = None,
    ) -> Targets:
        """Build targets from one dict of facts per prompt (missing or None = not determined).

        Class labels are the sorted string forms of the values seen in any prompt, so a value that only
        occurs in held-out prompts is a class the probe never saw: it counts as wrong, as it should.
        """
        grouped = {f for fs in groups.values() for f in fs}
        names = [
            n for n in dict.fromkeys(n for f in facts for n, v in f.items() if v is not None) if n in grouped
        ]
        classes = [sorted({str(f[n]) for f in facts if f.get(n) is not None}, key=_natural) for n in names]
        index = [{c: i for i, c in enumerate(cs)} for cs in classes]
        values = np.full((len(facts), len(names)), -1, dtype=np.int64)
        for i, f in enumerate(facts):
            for k, n in enumerate(names):
                if f.get(n) is not None:
                    values[i, k] = index[k][str(f[n])]
        groups = {s: [n for n in fs if n in names] for s, fs in groups.items()}
        return cls(names, classes, values, groups, None if tags is None else [tuple(t) for t in tags])


def _natural(label: str):
    """Sort numbers numerically ('2' < '10') and before words."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def skill_correct(
    pred: np.ndarray, targets: Targets, rows: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per skill: (applicable [n] bool, correct [n] bool) for predictions ``pred`` [n, K] of ``rows``.

    Applicable: the prompt is tagged with the skill and determines at least one of its facts.
    """
    y = targets.values[rows]  # [n, K]
    ok = (pred == y) | (y < 0)
    column = {n: k for k, n in enumerate(targets.names)}
    out = {}
    for skill, facts in targets.groups.items():
        cols = [column[f] for f in facts]
        tagged = (
            np.ones(len(rows), bool)
            if targets.tags is None
            else np.array([skill in targets.tags[r] for r in rows])
        )
        applicable = tagged & (y[:, cols] >= 0).any(axis=1) if cols else np.zeros(len(rows), bool)
        out[skill] = (applicable, ok[:, cols].all(axis=1))
    return out


def chance(targets: Targets, train: np.ndarray, test: np.ndarray) -> pd.Series:
    """Per-skill exact accuracy of a caption-blind predictor: the most frequent training class per fact.

    This is what a probe that ignores its input converges to (each head's argmax is the class prior),
    so it is the floor that the shuffled-caption control must hit.
    """
    y = targets.values[train]
    mode = np.array(
        [
            np.bincount(col[col >= 0], minlength=n).argmax()
            for col, n in zip(y.T, targets.n_classes, strict=True)
        ],
        dtype=np.int64,
    )
    pred = np.broadcast_to(mode, (len(test), len(mode)))
    rates = {}
    for skill, (applicable, correct) in skill_correct(pred, targets, np.asarray(test)).items():
        rates[skill] = correct[applicable].mean() if applicable.any() else float("nan")
    return pd.Series(rates, name="chance")


def ceiling(targets: Targets, train: np.ndarray, test: np.ndarray) -> pd.Series:
    """Per-skill fraction of test prompts whose every determined fact takes a value its head saw in
    training: the most any classifier probe can reach (e.g. the held-out count "three circles")."""
    seen = [set(col[col >= 0].tolist()) for col in targets.values[train].T]
    y = targets.values[test]
    known = np.array([[v < 0 or v in seen[k] for k, v in enumerate(row)] for row in y.tolist()])
    rates = {}
    for skill, (applicable, correct) in skill_correct(
        np.where(known, y, -2), targets, np.asarray(test)
    ).items():
        rates[skill] = correct[applicable].mean() if applicable.any() else float("nan")
    return pd.Series(rates, name="ceiling")


# ----------------------------------------------------------------------------------------------------
# The shapes world: facts a caption determines, and the train / held-out split

_KINDS = [(c, s) for c in shapes.PALETTE for s in shapes.SHAPES]
PAIR_FACTS = [f"count_{c}_{s}" for c, s in _KINDS]
COLOR_FACTS = [f"count_{c}" for c in shapes.PALETTE]
SHAPE_FACTS = [f"count_{s}" for s in shapes.SHAPES]
COUNT_FACTS = [*PAIR_FACTS, *COLOR_FACTS, *SHAPE_FACTS, "n_objects"]
SKILL_FACTS: dict[str, list[str]] = {
    "attribute": PAIR_FACTS,  # which colour goes with which shape
    "scene": ["background"],
    "spatial": ["left_color", "left_shape", "top_color", "top_shape"],
    "counting": [*PAIR_FACTS, "n_objects"],
    "comparison": ["larger_color", "larger_shape", "more_color", "more_shape"],
    "differentiation": [*PAIR_FACTS, "larger_color", "larger_shape"],
    "negation": [*COLOR_FACTS, *SHAPE_FACTS],  # e.g. count_red == 0 for "no red shapes"
    "universal": [*COLOR_FACTS, *SHAPE_FACTS],  # e.g. every colour but one at 0
}


def _multisets() -> np.ndarray:
    """Kind counts [M, 12] of every multiset of 1..MAX_OBJECTS + 2 objects (count comparisons reach 5)."""
    rows = []
    for n in range(1, shapes.MAX_OBJECTS + 3):
        for combo in itertools.combinations_with_replacement(range(len(_KINDS)), n):
            rows.append(np.bincount(combo, minlength=len(_KINDS)))
    return np.array(rows)


_MULTISETS = _multisets()
_COUNT_TABLE = np.concatenate(
    [
        _MULTISETS,
        np.stack(
            [
                _MULTISETS[:, [k for k, (c, _) in enumerate(_KINDS) if c == color]].sum(1)
                for color in shapes.PALETTE
            ],
            1,
        ),
        np.stack(
            [
                _MULTISETS[:, [k for k, (_, s) in enumerate(_KINDS) if s == shape]].sum(1)
                for shape in shapes.SHAPES
            ],
            1,
        ),
        _MULTISETS.sum(1, keepdims=True),
    ],
    axis=1,
)  # [M, len(COUNT_FACTS)]


def _selected(sel: Mapping[str, object]) -> np.ndarray:
    """Objects of each multiset matching a selector {color, shape} (None = any)."""
    cols = [
        k
        for k, (c, s) in enumerate(_KINDS)
        if sel.get("color") in (None, c) and sel.get("shape") in (None, s)
    ]
    return _MULTISETS[:, cols].sum(1)


def spec_facts(spec: Mapping[str, object]) -> dict[str, int | str]:
    """The facts a benchmark spec determines: a count is kept only when it is the same in every multiset
    of objects that satisfies the spec (so "a square that is not red" fixes count_square, not
    count_blue); relations give the colour/shape of the left, top, larger or more numerous object."""
    ok = np.ones(len(_MULTISETS), bool)
    total = _MULTISETS.sum(1)
    facts: dict[str, int | str] = {}
    for c in spec["constraints"]:
        kind = c["type"]
        if kind == "count":
            ok &= {"==": np.equal, ">=": np.greater_equal, "<=": np.less_equal}[c["op"]](_selected(c), c["n"])
        elif kind == "more":
            ok &= _selected(c["a"]) > _selected(c["b"])
        elif kind == "all":
            ok &= (_selected(c) == total) & (total >= 1)
        elif kind == "background":
            facts["background"] = c["color"]
        elif kind == "relation":
            ok &= (_selected(c["a"]) >= 1) & (_selected(c["b"]) >= 1 + (c["a"] == c["b"]))
            first, second = (
                (c["a"], c["b"]) if c["rel"] in ("left_of", "above", "larger") else (c["b"], c["a"])
            )
            role = {"left_of": "left", "right_of": "left", "above": "top", "below": "top"}.get(
                c["rel"], "larger"
            )
            for attr in ("color", "shape"):  # the object matching `first` is the left/top/larger one
                if first.get(attr) is not None:
                    facts[f"{role}_{attr}"] = first[attr]
        if kind == "more":
            for attr in ("color", "shape"):
                if c["a"].get(attr) is not None:
                    facts[f"more_{attr}"] = c["a"][attr]
    if not ok.any():
        raise ValueError(f"No scene of at most {shapes.MAX_OBJECTS + 2} objects satisfies the spec {spec}.")
    table = _COUNT_TABLE[ok]
    fixed = (table == table[0]).all(0)
    facts.update({name: int(table[0, k]) for k, name in enumerate(COUNT_FACTS) if fixed[k]})
    return facts


TRAIN_HOLDOUT = shapes.Holdout(pairs=tuple(shapes.DEFAULT_HOLDOUT.allowed_pairs()), counts=(), relations=())


def _is_training_safe(spec: Mapping[str, object], scene, holdout: shapes.Holdout) -> bool:
    """No held-out pair or count in the scene, no held-out relation stated."""
    if scene is None or holdout.scene_violations(scene):
        return False
    for c in spec["constraints"]:
        if c["type"] == "relation" and c["a"].get("color") and c["b"].get("color"):
            if not holdout.relation_allowed(c["a"]["color"], c["rel"], c["b"]["color"]):
                return False
    return True


def probe_dataset(
    n_train: int = 2000, n_eval: int = 400, seed: int = 0, holdout: shapes.Holdout = shapes.DEFAULT_HOLDOUT
) -> tuple[pd.DataFrame, Targets, np.ndarray, np.ndarray]:
    """Prompts, targets and the split: train on benchmark-style prompts built on *allowed* compositions,
    test on the benchmark itself (``make_benchmark(n_eval // 8, seed)``: held-out compositions only),
    as the diffusion model is trained on the training stream and scored on the benchmark.

    Returns (prompts table with id/prompt/skills/split, targets, train rows, test rows).
    """
    n_skills = len(shapes.COVERED_SKILLS)
    if n_train < n_skills or n_eval < n_skills:
        raise ValueError(
            f"n_train and n_eval must be >= {n_skills} (one prompt per skill), got {n_train}, {n_eval}."
        )
    test = shapes_benchmark.make_benchmark(n_eval // n_skills, seed=seed, holdout=holdout)
    train_holdout = shapes.Holdout(pairs=tuple(holdout.allowed_pairs()), counts=(), relations=())
    pool = shapes_benchmark.make_benchmark(
        int(n_train / n_skills * 1.6) + 1, seed=seed + 1000, holdout=train_holdout
    )
    pool = pool[[_is_training_safe(r.spec, r.scene, holdout) for r in pool.itertuples()]]
    pool = pool[~pool.prompt.isin(set(test.prompt))]
    pool = pool.groupby(pool.id.str.split("-").str[0], sort=False).head(-(-n_train // n_skills)).head(n_train)
    table = pd.concat([pool.assign(split="train"), test.assign(split="test")], ignore_index=True)
    table = table[["id", "prompt", "skills", "split", "spec"]]
    # A held-out pair's count is never above 0 in training, so no head could learn it: binding is scored
    # on the allowed pairs of each held-out prompt ("a blue triangle and a red circle": red circle 1,
    # blue circle 0, ...). Values a head never saw in training still count as wrong; see ``ceiling``.
    unlearnable = {f"count_{c}_{s}" for c, s in holdout.pairs}
    facts = [{k: v for k, v in spec_facts(spec).items() if k not in unlearnable} for spec in table.spec]
    targets = Targets.from_facts(facts, SKILL_FACTS, table.skills)
    rows = np.arange(len(table))
    return table, targets, rows[table.split.to_numpy() == "train"], rows[table.split.to_numpy() == "test"]
