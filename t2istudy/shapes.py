"""The procedural "shapes" world: scenes, a renderer, a captioner, a training stream and a benchmark.

Why: at small scale there is no GPT-4o and no hub model, so the study's per-skill claims are tested on a
world whose truth is known. A scene is a background plus up to four objects (shape, colour, size,
position). Captions are natural English with paraphrases because the text encoders are real language
models. Chosen compositions (colour-shape pairs, a count, some relations) are *held out* of every training
caption and make up the benchmark, so benchmark scores measure compositional generalization.

Coordinates are resolution-free: ``x``, ``y`` are the centre of the object's bounding box as fractions of
the image side (y grows downwards), ``size`` is the half-extent of that box. Every object fills its box
(circle: inscribed; square: the box; triangle: apex up, base = height = box side), so a box is also what
the pixel judge measures.

Specs are JSON-able dicts ``{"constraints": [...]}``; each constraint is one of
``{"type": "background", "color": bg}``,
``{"type": "count", "color": c|None, "shape": s|None, "op": "=="|">="|"<=", "n": k}``,
``{"type": "relation", "rel": left_of|right_of|above|below|larger|smaller, "a": sel, "b": sel}``
(some pair of distinct objects matching ``a`` and ``b`` satisfies it),
``{"type": "more", "a": sel, "b": sel}`` (more objects match ``a`` than ``b``) and
``{"type": "all", "color": c|None, "shape": s|None}`` (at least one object and every object matches),
with ``sel = {"color": c|None, "shape": s|None}``. The same evaluator (:func:`check_constraints`) decides
specs on scenes (ground truth) and on objects the judge found in pixels.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

# ---------------------------------------------------------------------------------------------------------
# The world's vocabulary (one place)

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.13, "large": 0.2}  # half-extent as a fraction of the image side
MAX_OBJECTS = 4
GAP = 0.06  # minimum free space between two objects' boxes (2 px at 32x32): same-colour objects never merge
MARGIN = 0.03  # minimum distance of a box from the image border
SPATIAL_MARGIN = 0.05  # "a left of b" needs a.x < b.x - SPATIAL_MARGIN (judge and ground truth alike)
SIZE_RATIO = 1.2  # "a larger than b" needs a.extent > SIZE_RATIO * b.extent
RELATIONS = ("left_of", "right_of", "above", "below", "larger", "smaller")
INVERSE = {
    "left_of": "right_of",
    "right_of": "left_of",
    "above": "below",
    "below": "above",
    "larger": "smaller",
    "smaller": "larger",
}
# GenAI-Bench's ten skills; action and part relations have no honest analogue in this world (see docs).
COVERED_SKILLS = (
    "attribute",
    "scene",
    "spatial",
    "counting",
    "comparison",
    "differentiation",
    "negation",
    "universal",
)
NOT_COVERED_SKILLS = ("action", "part")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Obj:
    """One object; ``x``, ``y`` = centre of its box, ``size`` = half-extent (fractions of the side)."""

    shape: str
    color: str
    size: float
    x: float
    y: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"Unknown shape {self.shape!r}; use one of {', '.join(SHAPES)}.")
        if self.color not in PALETTE:
            raise ValueError(f"Unknown colour {self.color!r}; use one of {', '.join(PALETTE)}.")
        if not 0.0 < self.size < 0.5:
            raise ValueError(f"Object size {self.size} must be a half-extent in (0, 0.5) of the image side.")

    @property
    def extent(self) -> float:
        """Half-extent of the box (what the judge measures too)."""
        return self.size

    @property
    def size_word(self) -> str:
        return min(SIZES, key=lambda w: abs(SIZES[w] - self.size))

    def box(self) -> tuple[float, float, float, float]:
        return (self.x - self.size, self.y - self.size, self.x + self.size, self.y + self.size)


@dataclass
class Scene:
    """A background plus objects; JSON round-trips through :meth:`to_dict` / :meth:`from_dict`."""

    background: str = "white"
    objects: list[Obj] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"Unknown background {self.background!r}; use one of {', '.join(BACKGROUNDS)}.")

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [vars(o).copy() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(data["background"], [Obj(**o) for o in data["objects"]])


# ---------------------------------------------------------------------------------------------------------
# Rendering


def render(scene: Scene, resolution: int = 32, supersample: int = 4) -> np.ndarray:
    """Draw ``scene`` as uint8 [resolution, resolution, 3]; supersampled then box-filtered (soft edges)."""
    if resolution < 16:
        raise ValueError(f"resolution {resolution} is too small for the shapes world; use 32 or 64.")
    side = resolution * supersample
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = (v * side for v in obj.box())
        fill = PALETTE[obj.color]
        if obj.shape == "circle":  # PIL's ellipse/rectangle include their last pixel: x1 - 1
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.BOX), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Specs: one evaluator for scenes and for what the judge detects


class ObjectLike(Protocol):
    color: str
    shape: str
    x: float
    y: float

    @property
    def extent(self) -> float: ...


def _matches(obj: ObjectLike, sel: dict[str, Any]) -> bool:
    return (sel.get("color") in (None, obj.color)) and (sel.get("shape") in (None, obj.shape))


def relation_holds(rel: str, a: ObjectLike, b: ObjectLike) -> bool:
    """Whether ``a rel b``: positions compare box centres, sizes compare half-extents."""
    if rel == "left_of":
        return a.x < b.x - SPATIAL_MARGIN
    if rel == "right_of":
        return a.x > b.x + SPATIAL_MARGIN
    if rel == "above":
        return a.y < b.y - SPATIAL_MARGIN
    if rel == "below":
        return a.y > b.y + SPATIAL_MARGIN
    if rel == "larger":
        return a.extent > SIZE_RATIO * b.extent
    if rel == "smaller":
        return b.extent > SIZE_RATIO * a.extent
    raise ValueError(f"Unknown relation {rel!r}; use one of {', '.join(RELATIONS)}.")


_OPS: dict[str, Callable[[int, int], bool]] = {
    "==": lambda a, b: a == b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}


def validate_spec(spec: Any, where: str = "spec") -> None:
    """Raise a ValueError naming the bad part of ``spec`` (so malformed benchmark files fail early)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("constraints"), list) or not spec["constraints"]:
        raise ValueError(f"{where}: a spec is a dict with a non-empty 'constraints' list, got {spec!r}.")

    def check_sel(sel: Any, what: str) -> None:
        if not isinstance(sel, dict):
            raise ValueError(f"{where}: {what} must be a dict with 'color'/'shape', got {sel!r}.")
        if sel.get("color") not in (None, *PALETTE):
            raise ValueError(f"{where}: {what} has unknown colour {sel.get('color')!r}.")
        if sel.get("shape") not in (None, *SHAPES):
            raise ValueError(f"{where}: {what} has unknown shape {sel.get('shape')!r}.")

    for i, c in enumerate(spec["constraints"]):
        what = f"constraint {i}"
        kind = c.get("type") if isinstance(c, dict) else None
        if kind == "background":
            if c.get("color") not in BACKGROUNDS:
                raise ValueError(f"{where}: {what} names unknown background {c.get('color')!r}.")
        elif kind == "count":
            check_sel(c, what)
            if c.get("op") not in _OPS or not isinstance(c.get("n"), int):
                raise ValueError(f"{where}: {what} needs op in {list(_OPS)} and an int n, got {c!r}.")
        elif kind == "relation":
            if c.get("rel") not in RELATIONS:
                raise ValueError(f"{where}: {what} has unknown relation {c.get('rel')!r}.")
            check_sel(c.get("a"), f"{what}.a")
            check_sel(c.get("b"), f"{what}.b")
        elif kind == "more":
            check_sel(c.get("a"), f"{what}.a")
            check_sel(c.get("b"), f"{what}.b")
        elif kind == "all":
            check_sel(c, what)
        else:
            raise ValueError(
                f"{where}: {what} has unknown type {kind!r}; use background, count, relation, more or all."
            )


def check_constraints(background: str | None, objects: Sequence[ObjectLike], spec: dict) -> list[bool]:
    """One verdict per constraint of ``spec`` for a background and a list of objects."""
    verdicts = []
    for c in spec["constraints"]:
        kind = c["type"]
        if kind == "background":
            ok = background == c["color"]
        elif kind == "count":
            ok = _OPS[c["op"]](sum(_matches(o, c) for o in objects), c["n"])
        elif kind == "relation":
            ok = any(
                i != j and _matches(a, c["a"]) and _matches(b, c["b"]) and relation_holds(c["rel"], a, b)
                for i, a in enumerate(objects)
                for j, b in enumerate(objects)
            )
        elif kind == "more":
            ok = sum(_matches(o, c["a"]) for o in objects) > sum(_matches(o, c["b"]) for o in objects)
        else:  # all
            ok = bool(objects) and all(_matches(o, c) for o in objects)
        verdicts.append(bool(ok))
    return verdicts


def scene_satisfies(scene: Scene, spec: dict) -> bool:
    return all(check_constraints(scene.background, scene.objects, spec))


def scene_facts(scene: Scene) -> dict[str, int | str]:
    """Facts a caption determines, for probing text embeddings (issue 6); same generator as the benchmark.

    Keys: ``background``, ``n_objects``, ``count_<colour>``, ``count_<shape>``, ``count_<colour>_<shape>``,
    and for two-object scenes ``left_color``/``left_shape``, ``top_color``, ``larger_color`` (``"none"``
    when the scene has not exactly two objects or the relation is unclear).
    """
    facts: dict[str, int | str] = {"background": scene.background, "n_objects": len(scene.objects)}
    for color in PALETTE:
        facts[f"count_{color}"] = sum(o.color == color for o in scene.objects)
    for shape in SHAPES:
        facts[f"count_{shape}"] = sum(o.shape == shape for o in scene.objects)
    for color in PALETTE:
        for shape in SHAPES:
            facts[f"count_{color}_{shape}"] = sum(
                o.color == color and o.shape == shape for o in scene.objects
            )
    left = top = larger = None
    if len(scene.objects) == 2:
        a, b = scene.objects
        left = a if relation_holds("left_of", a, b) else b if relation_holds("left_of", b, a) else None
        top = a if relation_holds("above", a, b) else b if relation_holds("above", b, a) else None
        larger = a if relation_holds("larger", a, b) else b if relation_holds("larger", b, a) else None
    facts["left_color"] = left.color if left else "none"
    facts["left_shape"] = left.shape if left else "none"
    facts["top_color"] = top.color if top else "none"
    facts["larger_color"] = larger.color if larger else "none"
    return facts


# ---------------------------------------------------------------------------------------------------------
# Held-out compositions


@dataclass(frozen=True)
class Holdout:
    """Compositions no training caption (or training scene, for pairs and counts) ever contains.

    ``pairs``: colour-shape pairs; ``counts``: (n, shape) = exactly n same-coloured objects of that shape;
    ``relations``: (colour_a, rel, colour_b) never *stated* in a training caption (either direction).
    """

    pairs: tuple[tuple[str, str], ...] = (("blue", "triangle"), ("red", "square"), ("green", "circle"))
    counts: tuple[tuple[int, str], ...] = ((3, "circle"),)
    relations: tuple[tuple[str, str, str], ...] = (("red", "left_of", "blue"), ("yellow", "above", "green"))

    def __post_init__(self) -> None:
        for color, shape in self.pairs:
            Obj(shape, color, 0.1, 0.5, 0.5)  # validates names
        for n, shape in self.counts:
            if n not in NUMBER_WORDS or shape not in SHAPES:
                raise ValueError(f"Holdout count ({n}, {shape!r}) needs n in 1..4 and a known shape.")
        for a, rel, b in self.relations:
            if a not in PALETTE or b not in PALETTE or rel not in RELATIONS:
                raise ValueError(f"Holdout relation ({a!r}, {rel!r}, {b!r}) uses unknown names.")

    def allowed_pairs(self) -> list[tuple[str, str]]:
        return [(c, s) for c in PALETTE for s in SHAPES if (c, s) not in self.pairs]

    def scene_violations(self, scene: Scene) -> list[str]:
        """Held-out pairs and counts present in ``scene`` (empty list = fine for training)."""
        found = [
            f"{c} {s}" for c, s in self.pairs if any(o.color == c and o.shape == s for o in scene.objects)
        ]
        groups = Counter((o.color, o.shape) for o in scene.objects)
        found += [f"{n} {s}s" for n, s in self.counts for (_, s2), k in groups.items() if s2 == s and k == n]
        return found

    def relation_allowed(self, color_a: str, rel: str, color_b: str) -> bool:
        return (color_a, rel, color_b) not in self.relations and (
            color_b,
            INVERSE[rel],
            color_a,
        ) not in self.relations


DEFAULT_HOLDOUT = Holdout()

# ---------------------------------------------------------------------------------------------------------
# Captions

_DETERMINERS = {1: ("a", "one"), 2: ("two", "a pair of", "2"), 3: ("three", "3"), 4: ("four", "4")}
_REL_PHRASES = {
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "larger": ("larger than", "bigger than"),
    "smaller": ("smaller than",),
}
_BACKGROUND_SUFFIX = (" on a {bg} background", " against a {bg} background", " on {bg}", ", {bg} background")
_PREFIXES = ("", "", "", "a picture of ", "an image of ")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def noun_phrase(
    n: int, color: str | None, shape: str | None, rng: np.random.Generator, size: str = ""
) -> str:
    """``"two red circles"``, ``"a pair of small red circles"``, ``"3 shapes"``..."""
    noun = (shape or "shape") + ("s" if n > 1 else "")
    words = [_pick(rng, _DETERMINERS[n]), size, color or "", noun]
    return " ".join(w for w in words if w)


def join_phrases(parts: Sequence[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    comma = _pick(rng, (",", ""))
    return ", ".join(parts[:-1]) + f"{comma if len(parts) > 2 else ''} and {parts[-1]}"


def with_background(text: str, background: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.2:
        return f"a {background} background with {text}"
    return text + _pick(rng, _BACKGROUND_SUFFIX).format(bg=background)


def caption(
    scene: Scene,
    rng: np.random.Generator,
    holdout: Holdout = DEFAULT_HOLDOUT,
    p_background: float = 0.7,
    p_relation: float = 0.6,
) -> str:
    """A true English description of every object in ``scene`` (paraphrased; held-out relations avoided).

    Objects are grouped by (size, colour, shape) into counted phrases; sizes are named only when the
    scene mixes sizes. Two-object scenes often get a relation ("a red circle above a blue square").
    """
    objs = scene.objects
    sizes_differ = len({o.size_word for o in objs}) > 1
    text = None
    if len(objs) == 2 and rng.random() < p_relation:
        a, b = objs if rng.random() < 0.5 else objs[::-1]
        true = [
            r for r in RELATIONS if relation_holds(r, a, b) and holdout.relation_allowed(a.color, r, b.color)
        ]
        if true:
            rel = _pick(rng, true)
            size_a = a.size_word if sizes_differ and rel not in ("larger", "smaller") else ""
            size_b = b.size_word if sizes_differ and rel not in ("larger", "smaller") else ""
            pa = noun_phrase(1, a.color, a.shape, rng, size_a)
            pb = noun_phrase(1, b.color, b.shape, rng, size_b).replace("one ", "a ", 1)
            if (a.color, a.shape, size_a) == (b.color, b.shape, size_b):
                pb = pb.replace("a ", "another ", 1)
            text = f"{pa} {_pick(rng, _REL_PHRASES[rel])} {pb}"
    if text is None:
        groups = Counter((o.size_word if sizes_differ else "", o.color, o.shape) for o in objs)
        keys = list(groups)
        rng.shuffle(keys)
        text = join_phrases([noun_phrase(groups[k], k[1], k[2], rng, k[0]) for k in keys], rng)
        text = _skill_wording(objs, rng) or text
    if rng.random() < p_background:
        text = with_background(text, scene.background, rng)
    return _pick(rng, _PREFIXES) + text


def _skill_wording(objs: Sequence[Obj], rng: np.random.Generator) -> str | None:
    """Sometimes a true caption in the benchmark's advanced wordings (universal, negation, comparison,
    differentiation), so the benchmark tests new compositions, not words never seen in training."""
    colors, kinds = {o.color for o in objs}, Counter((o.color, o.shape) for o in objs)
    shapes = Counter(o.shape for o in objs)
    u = rng.random()
    if len(objs) > 1 and len(colors) == 1 and u < 0.2:  # universal
        if len(kinds) == 1 and rng.random() < 0.5:
            return f"every shape is a {objs[0].color} {objs[0].shape}"
        text = join_phrases([noun_phrase(k, None, s, rng) for s, k in shapes.items()], rng)
        return text + f", {_pick(rng, ('all of them', 'all', 'every one of them'))} {objs[0].color}"
    if len(objs) == 2 and len(shapes) == 1 and u < 0.4:  # differentiation
        a, b = objs
        noun = a.shape + "s"
        if a.color != b.color:
            return f"two {noun}, one {a.color} and one {b.color}"
        if a.size_word != b.size_word:
            return f"two {a.color} {noun}, one large and one small"
    if len(kinds) == 2 and u < 0.3:  # count comparison
        (ka, na), (kb, nb) = kinds.most_common()
        if na > nb:
            word, first, second = ("more", ka, kb) if rng.random() < 0.5 else ("fewer", kb, ka)
            return f"{word} {first[0]} {first[1]}s than {second[0]} {second[1]}s"
    if len(objs) == 1 and u < 0.25:  # negation of one object colour
        other = _pick(rng, [c for c in PALETTE if c != objs[0].color])
        return f"a {objs[0].shape} that is not {other}"
    if u > 0.9:  # negation of an absent colour
        absent = [c for c in PALETTE if c not in colors]
        if absent:
            text = join_phrases([noun_phrase(k, c, s_, rng) for (c, s_), k in kinds.items()], rng)
            return text + f", and no {_pick(rng, absent)} shapes"
    return None


# ---------------------------------------------------------------------------------------------------------
# Placement and the training stream


def place(
    rng: np.random.Generator,
    items: Sequence[tuple[str, str, float]],
    predicate: Callable[[list[Obj]], bool] | None = None,
    tries: int = 2000,
) -> list[Obj]:
    """Random non-overlapping positions for (shape, colour, size) items, optionally satisfying a predicate."""
    for _ in range(tries):
        objs: list[Obj] = []
        for shape, color, size in items:
            for _ in range(50):
                lo, hi = MARGIN + size, 1 - MARGIN - size
                x, y = rng.uniform(lo, hi, size=2)
                cand = Obj(shape, color, size, float(x), float(y))
                if all(_apart(cand, o) for o in objs):
                    objs.append(cand)
                    break
            else:
                break
        if len(objs) == len(items) and (predicate is None or predicate(objs)):
            return objs
    raise RuntimeError(f"Could not place {len(items)} objects {items!r}; make them smaller or fewer.")


def _apart(a: Obj, b: Obj) -> bool:
    return abs(a.x - b.x) >= a.size + b.size + GAP or abs(a.y - b.y) >= a.size + b.size + GAP


@dataclass
class ShapesWorld:
    """Training stream of (scene, caption); never yields a held-out pair or count, never states a held-out
    relation. ``seed`` seeds :meth:`batch` when no generator is passed."""

    seed: int = 0
    holdout: Holdout = DEFAULT_HOLDOUT
    max_objects: int = MAX_OBJECTS
    p_background: float = 0.7
    p_relation: float = 0.6

    def __post_init__(self) -> None:
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects={self.max_objects} must be in 1..{MAX_OBJECTS}.")
        self._rng = np.random.default_rng(self.seed)
        self._pairs = self.holdout.allowed_pairs()

    def sample_scene(self, rng: np.random.Generator) -> Scene:
        while True:
            n = int(rng.integers(1, self.max_objects + 1))
            items = []
            for _ in range(n):
                color, shape = self._pairs[int(rng.integers(len(self._pairs)))]
                # repeats of a kind make counting learnable: reuse an earlier kind half the time
                if items and rng.random() < 0.5:
                    shape, color, _ = items[int(rng.integers(len(items)))]
                size = SIZES["small"] if n >= 3 else SIZES[_pick(rng, tuple(SIZES))]
                items.append((shape, color, size))
            scene = Scene(_pick(rng, tuple(BACKGROUNDS)), place(rng, items))
            if not self.holdout.scene_violations(scene):
                return scene

    def sample(self, rng: np.random.Generator | None = None) -> tuple[Scene, str]:
        rng = self._rng if rng is None else rng
        scene = self.sample_scene(rng)
        return scene, caption(scene, rng, self.holdout, self.p_background, self.p_relation)

    def batch(
        self, n: int, rng: np.random.Generator | None = None, resolution: int = 32
    ) -> tuple[np.ndarray, list[str], list[Scene]]:
        """``n`` fresh samples: images uint8 [n, H, W, 3], captions, scenes."""
        pairs = [self.sample(rng) for _ in range(n)]
        scenes = [s for s, _ in pairs]
        images = (
            np.stack([render(s, resolution) for s in scenes])
            if n
            else np.zeros((0, resolution, resolution, 3), np.uint8)
        )
        return images, [c for _, c in pairs], scenes


# ---------------------------------------------------------------------------------------------------------
# The benchmark: GenAI-Bench-like prompts with specs, each built on a held-out composition


def _count(color: str | None, shape: str | None, n: int, op: str = "==") -> dict[str, Any]:
    return {"type": "count", "color": color, "shape": shape, "op": op, "n": n}


def _sel(color: str | None, shape: str | None) -> dict[str, Any]:
    return {"color": color, "shape": shape}


def _exact(kinds: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Counts for each (colour, shape) kind plus the total: the prompt describes the whole scene."""
    groups = Counter(kinds)
    return [_count(c, s, k) for (c, s), k in groups.items()] + [_count(None, None, len(kinds))]


class _Gen:
    """Draws one benchmark item per call for a skill; all randomness comes from ``rng``."""

    def __init__(self, rng: np.random.Generator, holdout: Holdout) -> None:
        self.rng, self.h = rng, holdout
        self.allowed = holdout.allowed_pairs()
        self.all_pairs = [(c, s) for c in PALETTE for s in SHAPES]

    def held_pair(self) -> tuple[str, str]:
        return self.h.pairs[int(self.rng.integers(len(self.h.pairs)))]

    def other_pair(self, exclude: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
        options = [p for p in self.all_pairs if p not in exclude]
        return options[int(self.rng.integers(len(options)))]

    def size(self) -> float:
        return SIZES[_pick(self.rng, tuple(SIZES))]

    def background(self, skills: list[str], constraints: list, text: str, p: float = 0.3) -> tuple[str, str]:
        """A random background; with probability p the prompt states it (and the scene tag is added)."""
        bg = _pick(self.rng, tuple(BACKGROUNDS))
        if self.rng.random() < p:
            skills.append("scene")
            constraints.append({"type": "background", "color": bg})
            return bg, with_background(text, bg, self.rng)
        return bg, text

    def attribute(self) -> tuple[str, list, Scene, list[str]]:
        k = int(self.rng.integers(2, 4))
        kinds = [self.held_pair()]
        while len(kinds) < k:
            kinds.append(self.other_pair(kinds))
        order = self.rng.permutation(k)
        kinds = [kinds[i] for i in order]
        text = join_phrases(
            [noun_phrase(1, c, s, self.rng).replace("one ", "a ") for c, s in kinds], self.rng
        )
        cons, skills = _exact(kinds), ["attribute"]
        bg, text = self.background(skills, cons, text)
        size = SIZES["small"] if k == 3 else None
        objs = place(self.rng, [(s, c, size or self.size()) for c, s in kinds])
        return text, cons, Scene(bg, objs), skills

    def scene(self) -> tuple[str, list, Scene, list[str]]:
        k = int(self.rng.integers(1, 3))
        kinds = [self.held_pair()] + ([self.other_pair([self.held_pair()])] if k == 2 else [])
        kinds = list(dict.fromkeys(kinds))
        text = join_phrases(
            [noun_phrase(1, c, s, self.rng).replace("one ", "a ") for c, s in kinds], self.rng
        )
        cons, skills = _exact(kinds), ["scene"] + (["attribute"] if len(kinds) > 1 else [])
        bg = _pick(self.rng, tuple(BACKGROUNDS))
        cons.append({"type": "background", "color": bg})
        text = with_background(text, bg, self.rng)
        objs = place(self.rng, [(s, c, self.size()) for c, s in kinds])
        return text, cons, Scene(bg, objs), skills

    def spatial(self) -> tuple[str, list, Scene, list[str]]:
        rel = _pick(self.rng, ("left_of", "right_of", "above", "below"))
        if self.h.relations and self.rng.random() < 0.5:
            ca, held_rel, cb = self.h.relations[int(self.rng.integers(len(self.h.relations)))]
            if held_rel in ("larger", "smaller"):
                held_rel = "left_of"
            rel = held_rel if self.rng.random() < 0.5 else INVERSE[held_rel]
            if rel != held_rel:
                ca, cb = cb, ca
            a = (ca, _pick(self.rng, SHAPES))
            b = (cb, _pick(self.rng, SHAPES))
        else:
            a = self.held_pair()
            b = self.other_pair([a])
            if self.rng.random() < 0.5:
                a, b = b, a
        pa = noun_phrase(1, *a, self.rng).replace("one ", "a ")
        pb = noun_phrase(1, *b, self.rng).replace("one ", "a ")
        text = f"{pa} {_pick(self.rng, _REL_PHRASES[rel])} {pb}"
        cons = _exact([a, b]) + [{"type": "relation", "rel": rel, "a": _sel(*a), "b": _sel(*b)}]
        skills = ["spatial"]
        bg, text = self.background(skills, cons, text)
        axis = "x" if rel in ("left_of", "right_of") else "y"

        def clear(objs: list[Obj]) -> bool:
            oa, ob = objs
            d = abs(getattr(oa, axis) - getattr(ob, axis))
            other = abs((oa.y - ob.y) if axis == "x" else (oa.x - ob.x))
            return relation_holds(rel, oa, ob) and d >= 0.25 and other <= d

        objs = place(self.rng, [(a[1], a[0], self.size()), (b[1], b[0], self.size())], clear)
        return text, cons, Scene(bg, objs), skills

    def counting(self) -> tuple[str, list, Scene, list[str]]:
        if self.h.counts and self.rng.random() < 0.5:
            n, shape = self.h.counts[int(self.rng.integers(len(self.h.counts)))]
            colors = [c for c in PALETTE if (c, shape) not in self.h.pairs]
            main = (_pick(self.rng, colors), shape)
        else:
            n = int(self.rng.choice([1, 2, 2, 3, 4]))
            main = self.held_pair()
        kinds = [main] * n
        groups = [(n, main)]
        if n < MAX_OBJECTS and self.rng.random() < 0.5:
            extra = self.other_pair([main])
            m = int(self.rng.integers(1, MAX_OBJECTS - n + 1))
            kinds += [extra] * m
            groups.append((m, extra))
        text = join_phrases([noun_phrase(k, c, s, self.rng) for k, (c, s) in groups], self.rng)
        cons, skills = _exact(kinds), ["counting"]
        bg, text = self.background(skills, cons, text)
        size = SIZES["small"] if len(kinds) >= 3 else None
        objs = place(self.rng, [(s, c, size or self.size()) for c, s in kinds])
        return text, cons, Scene(bg, objs), skills

    def comparison(self) -> tuple[str, list, Scene, list[str]]:
        a = self.held_pair()
        b = self.other_pair([a])
        if self.rng.random() < 0.5:
            a, b = b, a
        if self.rng.random() < 0.6:  # size comparison
            rel = _pick(self.rng, ("larger", "smaller"))
            pa = noun_phrase(1, *a, self.rng).replace("one ", "a ")
            pb = noun_phrase(1, *b, self.rng).replace("one ", "a ")
            text = f"{pa} {_pick(self.rng, _REL_PHRASES[rel])} {pb}"
            cons = _exact([a, b]) + [{"type": "relation", "rel": rel, "a": _sel(*a), "b": _sel(*b)}]
            big, small = (a, b) if rel == "larger" else (b, a)
            items = [(big[1], big[0], SIZES["large"]), (small[1], small[0], SIZES["small"])]
        else:  # count comparison
            na = int(self.rng.integers(2, 4))
            nb = int(self.rng.integers(1, min(na, MAX_OBJECTS - na + 1)))
            if self.rng.random() < 0.5:  # "fewer a than b" == "more b than a"
                word, (na, nb) = "fewer", (nb, na)
            else:
                word = "more"
            text = f"{word} {a[0]} {a[1]}s than {b[0]} {b[1]}s"
            more_sel, less_sel = (a, b) if word == "more" else (b, a)
            cons = [
                {"type": "more", "a": _sel(*more_sel), "b": _sel(*less_sel)},
                _count(*less_sel, 1, ">="),
                _count(None, None, na + nb),
            ]
            items = [(a[1], a[0], SIZES["small"])] * na + [(b[1], b[0], SIZES["small"])] * nb
        skills = ["comparison"]
        bg, text = self.background(skills, cons, text)
        return text, cons, Scene(bg, place(self.rng, items)), skills

    def differentiation(self) -> tuple[str, list, Scene, list[str]]:
        color, shape = self.held_pair()
        noun = shape + "s"
        if self.rng.random() < 0.5:  # told apart by colour
            other = _pick(self.rng, [c for c in PALETTE if c != color])
            first, second = (color, other) if self.rng.random() < 0.5 else (other, color)
            text = _pick(
                self.rng,
                (
                    f"two {noun}, one {first} and one {second}",
                    f"two {noun}: a {first} one and a {second} one",
                    f"a {first} {shape} and a {second} {shape}",
                ),
            )
            cons = _exact([(color, shape), (other, shape)]) + [_count(None, shape, 2)]
            items = [(shape, color, self.size()), (shape, other, self.size())]
        else:  # told apart by size
            text = _pick(
                self.rng,
                (
                    f"two {color} {noun}, one large and one small",
                    f"a large {color} {shape} and a small {color} {shape}",
                    f"two {color} {noun} of different sizes",
                ),
            )
            sel = _sel(color, shape)
            cons = _exact([(color, shape)] * 2) + [{"type": "relation", "rel": "larger", "a": sel, "b": sel}]
            items = [(shape, color, SIZES["large"]), (shape, color, SIZES["small"])]
        skills = ["differentiation"]
        bg, text = self.background(skills, cons, text)
        return text, cons, Scene(bg, place(self.rng, items)), skills

    def negation(self) -> tuple[str, list, Scene, list[str]]:
        held = self.held_pair()
        if self.rng.random() < 0.5:  # "a blue triangle and a square that is not red"
            shape = _pick(self.rng, [s for s in SHAPES if s != held[1]])
            banned = _pick(self.rng, tuple(PALETTE))
            color = _pick(self.rng, [c for c in PALETTE if c != banned])
            first = noun_phrase(1, *held, self.rng).replace("one ", "a ")
            text = f"{first} and a {shape} that is not {banned}"
            cons = [_count(*held, 1), _count(None, shape, 1), _count(banned, shape, 0), _count(None, None, 2)]
            items = [(held[1], held[0], self.size()), (shape, color, self.size())]
        else:  # "two blue triangles and a yellow square, and no red shapes"
            kinds = [held] * int(self.rng.integers(1, 3))
            kinds.append(self.other_pair([held]))
            banned = _pick(self.rng, [c for c in PALETTE if c not in {k[0] for k in kinds}])
            groups = Counter(kinds)
            text = join_phrases([noun_phrase(k, c, s, self.rng) for (c, s), k in groups.items()], self.rng)
            text += _pick(
                self.rng, (f", and no {banned} shapes", f" with no {banned} shapes", f", nothing {banned}")
            )
            cons = _exact(kinds) + [_count(banned, None, 0)]
            size = SIZES["small"] if len(kinds) >= 3 else None
            items = [(s, c, size or self.size()) for c, s in kinds]
        skills = ["negation"]
        bg, text = self.background(skills, cons, text)
        return text, cons, Scene(bg, place(self.rng, items)), skills

    def universal(self) -> tuple[str, list, Scene, list[str]]:
        color, shape = self.held_pair()
        if self.rng.random() < 0.5:  # "two triangles and a square, all of them blue"
            other = _pick(self.rng, [s for s in SHAPES if s != shape])
            n = int(self.rng.integers(1, 3))
            kinds = [(color, shape)] * n + [(color, other)] * int(self.rng.integers(1, 3))
            shapes = Counter(s for _, s in kinds)
            text = join_phrases([noun_phrase(k, None, s, self.rng) for s, k in shapes.items()], self.rng)
            text += f", {_pick(self.rng, ('all of them', 'all', 'every one of them'))} {color}"
            cons = [_count(None, s, k) for s, k in shapes.items()] + [
                _count(None, None, len(kinds)),
                {"type": "all", "color": color, "shape": None},
            ]
        else:  # "every shape is a blue triangle"
            n = int(self.rng.integers(2, 5))
            kinds = [(color, shape)] * n
            text = _pick(
                self.rng,
                (
                    f"every shape is a {color} {shape}",
                    f"all the shapes are {color} {shape}s",
                    f"{n} shapes, every one a {color} {shape}",
                ),
            )
            cons = [{"type": "all", "color": color, "shape": shape}, _count(None, None, 2, ">=")]
            if text.startswith(str(n)):
                cons.append(_count(None, None, n))
        skills = ["universal"]
        bg, text = self.background(skills, cons, text)
        size = SIZES["small"] if len(kinds) >= 3 else None
        items = [(s, c, size or self.size()) for c, s in kinds]
        return text, cons, Scene(bg, place(self.rng, items)), skills


def make_benchmark(n_per_skill: int = 50, seed: int = 0, holdout: Holdout = DEFAULT_HOLDOUT) -> pd.DataFrame:
    """The offline benchmark: ``n_per_skill`` distinct prompts for each covered skill (primary tag).

    Columns: ``id``, ``prompt``, ``skills`` (tuple; a prompt stating a background also carries
    ``scene``), ``spec`` (JSON-able dict), ``scene`` (a :class:`Scene` satisfying the spec). Deterministic
    for (n_per_skill, seed, holdout); each skill draws from its own seeded stream, so a larger benchmark
    starts with the same prompts as a smaller one. Every prompt is built on a held-out composition.
    """
    if n_per_skill < 1:
        raise ValueError(f"n_per_skill={n_per_skill} must be >= 1.")
    rows = []
    for k, skill in enumerate(COVERED_SKILLS):
        gen = _Gen(np.random.default_rng([seed, k]), holdout)
        seen: set[str] = set()
        misses = 0
        while len(seen) < n_per_skill:
            text, cons, scene, skills = getattr(gen, skill)()
            if text in seen:
                misses += 1
                if misses > 50 * n_per_skill:
                    raise ValueError(f"Only {len(seen)} distinct {skill} prompts exist; lower n_per_skill.")
                continue
            spec = {"constraints": cons}
            assert scene_satisfies(scene, spec), (text, spec, scene)
            seen.add(text)
            rows.append(
                {
                    "id": f"{skill}-{len(seen):04d}",
                    "prompt": text,
                    "skills": tuple(dict.fromkeys(skills)),
                    "spec": spec,
                    "scene": scene,
                }
            )
    return pd.DataFrame(rows)


def benchmark_to_json(bench: pd.DataFrame) -> str:
    """Serialize a benchmark (specs and scenes included) so it can be saved beside a run."""
    records = [
        {"id": r.id, "prompt": r.prompt, "skills": list(r.skills), "spec": r.spec, "scene": r.scene.to_dict()}
        for r in bench.itertuples()
    ]
    return json.dumps(records, indent=1)


def benchmark_from_json(text: str, where: str = "benchmark") -> pd.DataFrame:
    """Inverse of :func:`benchmark_to_json`, with errors naming the bad item."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err}); regenerate it with benchmark_to_json.") from err
    if not isinstance(records, list):
        raise ValueError(f"{where}: expected a list of items, got {type(records).__name__}.")
    rows = []
    for i, r in enumerate(records):
        item = f"{where} item {i} ({r.get('id', '?') if isinstance(r, dict) else '?'})"
        if not isinstance(r, dict) or not {"id", "prompt", "skills", "spec"} <= set(r):
            raise ValueError(f"{item}: needs keys id, prompt, skills, spec (and optionally scene).")
        validate_spec(r["spec"], item)
        try:
            scene = Scene.from_dict(r["scene"]) if r.get("scene") else None
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{item}: bad scene ({err}).") from err
        rows.append({**r, "skills": tuple(r["skills"]), "scene": scene})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Hard negatives: a minimally different scene that breaks the spec (for judge validation)


def hard_negative(
    scene: Scene, spec: dict, rng: np.random.Generator, skill: str | None = None, tries: int = 200
) -> Scene | None:
    """A scene of a near-miss prompt of the same skill: colours swapped, a count off by one, a relation or
    size reversed, one object recoloured, the background changed. Edits typical of ``skill`` are tried
    first; ``None`` if no edit breaks ``spec``."""
    objs = scene.objects

    def swap_colors() -> Scene:
        i, j = rng.choice(len(objs), 2, replace=False)
        new = list(objs)
        new[i], new[j] = replace(objs[i], color=objs[j].color), replace(objs[j], color=objs[i].color)
        return Scene(scene.background, new)

    def drop_one() -> Scene:
        new = list(objs)
        new.pop(int(rng.integers(len(new))))
        return Scene(scene.background, new)

    def add_copy() -> Scene:
        src = objs[int(rng.integers(len(objs)))]
        items = [(o.shape, o.color, o.size) for o in objs] + [(src.shape, src.color, SIZES["small"])]
        return Scene(scene.background, place(rng, items, tries=50))

    def mirror() -> Scene:
        if rng.random() < 0.5:
            return Scene(scene.background, [replace(o, x=1 - o.x) for o in objs])
        return Scene(scene.background, [replace(o, y=1 - o.y) for o in objs])

    def swap_sizes() -> Scene:
        i, j = rng.choice(len(objs), 2, replace=False)
        new = list(objs)
        new[i], new[j] = replace(objs[i], size=objs[j].size), replace(objs[j], size=objs[i].size)
        return Scene(scene.background, place(rng, [(o.shape, o.color, o.size) for o in new], tries=50))

    def recolor() -> Scene:
        i = int(rng.integers(len(objs)))
        new = list(objs)
        new[i] = replace(objs[i], color=_pick(rng, [c for c in PALETTE if c != objs[i].color]))
        return Scene(scene.background, new)

    def reshape() -> Scene:
        i = int(rng.integers(len(objs)))
        new = list(objs)
        new[i] = replace(objs[i], shape=_pick(rng, [s for s in SHAPES if s != objs[i].shape]))
        return Scene(scene.background, new)

    def rebackground() -> Scene:
        return Scene(_pick(rng, [b for b in BACKGROUNDS if b != scene.background]), list(objs))

    def same_size() -> Scene:
        return Scene(scene.background, [replace(o, size=objs[0].size) for o in objs])

    pairwise = (swap_colors, swap_sizes, same_size)
    typical = {
        "attribute": (swap_colors, recolor),
        "scene": (rebackground,),
        "spatial": (mirror, swap_colors),
        "counting": (drop_one, add_copy),
        "comparison": (swap_sizes, drop_one, add_copy),
        "differentiation": (recolor, same_size),
        "negation": (recolor,),
        "universal": (recolor, reshape),
    }.get(skill or "", ())
    generic = [drop_one, add_copy, recolor, reshape, rebackground, mirror, *pairwise]
    for attempt in range(tries):
        edits = typical if typical and attempt < tries // 2 else generic
        edits = [e for e in edits if len(objs) >= 2 or e not in pairwise] or [recolor]
        edit = edits[int(rng.integers(len(edits)))]
        try:
            cand = edit()
        except RuntimeError:
            continue
        if cand.objects and not scene_satisfies(cand, spec):
            return cand
    return None


def save_benchmark(bench: pd.DataFrame, path: str | Path) -> Path:
    """Write :func:`benchmark_to_json` to ``path`` (kept beside a run so its prompts are on record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(benchmark_to_json(bench), encoding="utf-8")
    return path


def load_benchmark(path: str | Path) -> pd.DataFrame:
    """Read a file written by :func:`save_benchmark`; errors name the file and the bad item."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Benchmark file not found: {path}; write one with shapes.save_benchmark.")
    return benchmark_from_json(path.read_text(encoding="utf-8"), where=str(path))
