"""The procedural "shapes" world: scenes, a renderer, a captioner and a training stream.

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

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
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
REL_PHRASES = {
    "left_of": ("to the left of", "left of", "on the left of"),
    "right_of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "larger": ("larger than", "bigger than"),
    "smaller": ("smaller than",),
}
_BACKGROUND_SUFFIX = (" on a {bg} background", " against a {bg} background", " on {bg}", ", {bg} background")
_PREFIXES = ("", "", "", "a picture of ", "an image of ")


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def noun_phrase(
    n: int, color: str | None, shape: str | None, rng: np.random.Generator, size: str = ""
) -> str:
    """``"two red circles"``, ``"a pair of small red circles"``, ``"3 shapes"``..."""
    noun = (shape or "shape") + ("s" if n > 1 else "")
    words = [pick(rng, _DETERMINERS[n]), size, color or "", noun]
    return " ".join(w for w in words if w)


def join_phrases(parts: Sequence[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    comma = pick(rng, (",", ""))
    return ", ".join(parts[:-1]) + f"{comma if len(parts) > 2 else ''} and {parts[-1]}"


def with_background(text: str, background: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.2:
        return f"a {background} background with {text}"
    return text + pick(rng, _BACKGROUND_SUFFIX).format(bg=background)


def caption(
    scene: Scene,
    rng: np.random.Generator,
    holdout: Holdout = DEFAULT_HOLDOUT,
    p_background: float = 0.7,
    p_relation: float = 0.6,
    p_colourless: float = 0.0,
    named: bool = False,
) -> str:
    """A true English description of every object in ``scene`` (paraphrased; held-out relations avoided).

    Objects are grouped by (size, colour, shape) into counted phrases; sizes are named only when the
    scene mixes sizes. Two-object scenes often get a relation ("a red circle above a blue square").
    With probability ``p_colourless`` the caption names the shapes without their colours ("a circle above
    a square", "two circles and a square"): still true, and the wording of GenEval's colourless tasks. A
    relation is stated only where it is allowed for the colours the image shows, as in every caption. At 0
    no extra random number is drawn, so the default stream is unchanged. ``named`` keeps every caption an
    explicit list or relation that names each object with its colour (no universal, negation, comparison
    or differentiation wording); it draws the same random numbers, so the scenes stay those of the default
    stream and only the captions that took such a wording change.
    """
    objs = scene.objects
    sizes_differ = len({o.size_word for o in objs}) > 1
    colourless = p_colourless > 0 and rng.random() < p_colourless
    text = None
    if len(objs) == 2 and rng.random() < p_relation:
        a, b = objs if rng.random() < 0.5 else objs[::-1]
        true = [
            r for r in RELATIONS if relation_holds(r, a, b) and holdout.relation_allowed(a.color, r, b.color)
        ]
        if true:
            rel = pick(rng, true)
            size_a = a.size_word if sizes_differ and rel not in ("larger", "smaller") else ""
            size_b = b.size_word if sizes_differ and rel not in ("larger", "smaller") else ""
            ca, cb = (None, None) if colourless else (a.color, b.color)
            pa = noun_phrase(1, ca, a.shape, rng, size_a)
            pb = noun_phrase(1, cb, b.shape, rng, size_b).replace("one ", "a ", 1)
            if (ca, a.shape, size_a) == (cb, b.shape, size_b):
                pb = pb.replace("a ", "another ", 1)
            text = f"{pa} {pick(rng, REL_PHRASES[rel])} {pb}"
    if text is None:
        groups = Counter(
            (o.size_word if sizes_differ else "", None if colourless else o.color, o.shape) for o in objs
        )
        keys = list(groups)
        rng.shuffle(keys)
        text = join_phrases([noun_phrase(groups[k], k[1], k[2], rng, k[0]) for k in keys], rng)
        if not colourless:  # the skill wordings all name colours
            wording = _skill_wording(objs, rng)  # drawn even when unused: the stream stays the default's
            text = text if named else wording or text
    if rng.random() < p_background:
        text = with_background(text, scene.background, rng)
    return pick(rng, _PREFIXES) + text


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
        return text + f", {pick(rng, ('all of them', 'all', 'every one of them'))} {objs[0].color}"
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
        other = pick(rng, [c for c in PALETTE if c != objs[0].color])
        return f"a {objs[0].shape} that is not {other}"
    if u > 0.9:  # negation of an absent colour
        absent = [c for c in PALETTE if c not in colors]
        if absent:
            text = join_phrases([noun_phrase(k, c, s_, rng) for (c, s_), k in kinds.items()], rng)
            return text + f", and no {pick(rng, absent)} shapes"
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
    p_colourless: float = 0.0  # share of captions naming shapes without colours (see caption)
    named_captions: bool = False  # every caption names each object with its colour (see caption)
    # batch(): exactly round(share * n) scenes of two objects, the others of 1, 3 or 4 (None: the world's
    # own draw, a quarter of two-object scenes in expectation)
    two_object_share: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects={self.max_objects} must be in 1..{MAX_OBJECTS}.")
        if not 0.0 <= self.p_colourless <= 1.0:
            raise ValueError(f"p_colourless={self.p_colourless} must be in 0..1.")
        if self.two_object_share is not None:
            if not 0.0 <= self.two_object_share <= 1.0:
                raise ValueError(
                    f"two_object_share={self.two_object_share} must be in 0..1 (None: the world's own)."
                )
            if self.max_objects < 2:
                raise ValueError(
                    "two_object_share needs max_objects >= 2: raise max_objects or drop the share."
                )
        self._rng = np.random.default_rng(self.seed)
        self._pairs = self.holdout.allowed_pairs()

    def object_counts(self, n: int) -> list[int] | None:
        """The object count of each of ``n`` scenes under ``two_object_share`` (None without it): exactly
        round(share * n) twos at places drawn from the world's seed, the rest uniform over the other counts
        (1, 3, 4 up to max_objects), from a stream of their own."""
        if self.two_object_share is None:
            return None
        rng = np.random.default_rng([self.seed, 2])
        twos = round(self.two_object_share * n)
        others = [k for k in range(1, self.max_objects + 1) if k != 2]
        if not others and twos < n:
            raise ValueError("max_objects=2 leaves only two-object scenes: set two_object_share to 1.")
        counts = [2] * twos + [int(rng.choice(others)) for _ in range(n - twos)]
        return [counts[i] for i in rng.permutation(n)]

    def sample_scene(self, rng: np.random.Generator, n_objects: int | None = None) -> Scene:
        while True:
            n = int(rng.integers(1, self.max_objects + 1)) if n_objects is None else n_objects
            items = []
            for _ in range(n):
                color, shape = self._pairs[int(rng.integers(len(self._pairs)))]
                # repeats of a kind make counting learnable: reuse an earlier kind half the time
                if items and rng.random() < 0.5:
                    shape, color, _ = items[int(rng.integers(len(items)))]
                size = SIZES["small"] if n >= 3 else SIZES[pick(rng, tuple(SIZES))]
                items.append((shape, color, size))
            scene = Scene(pick(rng, tuple(BACKGROUNDS)), place(rng, items))
            if not self.holdout.scene_violations(scene):
                return scene

    def sample(
        self, rng: np.random.Generator | None = None, n_objects: int | None = None
    ) -> tuple[Scene, str]:
        rng = self._rng if rng is None else rng
        scene = self.sample_scene(rng, n_objects)
        text = caption(
            scene,
            rng,
            self.holdout,
            self.p_background,
            self.p_relation,
            self.p_colourless,
            self.named_captions,
        )
        return scene, text

    def batch(
        self, n: int, rng: np.random.Generator | None = None, resolution: int = 32
    ) -> tuple[np.ndarray, list[str], list[Scene]]:
        """``n`` fresh samples: images uint8 [n, H, W, 3], captions, scenes (``two_object_share``: a known
        number of two-object scenes, `object_counts`)."""
        counts = self.object_counts(n) or [None] * n
        pairs = [self.sample(rng, k) for k in counts]
        scenes = [s for s, _ in pairs]
        images = (
            np.stack([render(s, resolution) for s in scenes])
            if n
            else np.zeros((0, resolution, resolution, 3), np.uint8)
        )
        return images, [c for _, c in pairs], scenes
