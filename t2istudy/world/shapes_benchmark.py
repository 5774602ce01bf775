"""The shapes benchmark: GenAI-Bench-like prompts with machine-checkable specs, on held-out compositions.

Why: the study's per-skill claims need prompts whose truth can be checked in pixels. Every prompt of
:func:`make_benchmark` is built on a composition that :mod:`t2istudy.world.shapes` keeps out of every training
caption (a held-out colour-shape pair, count or relation), tagged with its GenAI-Bench skills and carrying a
spec that :func:`t2istudy.world.shapes.check_constraints` decides. :func:`hard_negative` draws a minimally
different scene that breaks a spec, for validating the judge.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from t2istudy.world.shapes import (
    BACKGROUNDS,
    COVERED_SKILLS,
    DEFAULT_HOLDOUT,
    INVERSE,
    MAX_OBJECTS,
    PALETTE,
    REL_PHRASES,
    SHAPES,
    SIZES,
    Holdout,
    Obj,
    Scene,
    join_phrases,
    noun_phrase,
    pick,
    place,
    relation_holds,
    scene_satisfies,
    validate_spec,
    with_background,
)

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
        return SIZES[pick(self.rng, tuple(SIZES))]

    def background(self, skills: list[str], constraints: list, text: str, p: float = 0.3) -> tuple[str, str]:
        """A random background; with probability p the prompt states it (and the scene tag is added)."""
        bg = pick(self.rng, tuple(BACKGROUNDS))
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
        bg = pick(self.rng, tuple(BACKGROUNDS))
        cons.append({"type": "background", "color": bg})
        text = with_background(text, bg, self.rng)
        objs = place(self.rng, [(s, c, self.size()) for c, s in kinds])
        return text, cons, Scene(bg, objs), skills

    def spatial(self) -> tuple[str, list, Scene, list[str]]:
        rel = pick(self.rng, ("left_of", "right_of", "above", "below"))
        if self.h.relations and self.rng.random() < 0.5:
            ca, held_rel, cb = self.h.relations[int(self.rng.integers(len(self.h.relations)))]
            if held_rel in ("larger", "smaller"):
                held_rel = "left_of"
            rel = held_rel if self.rng.random() < 0.5 else INVERSE[held_rel]
            if rel != held_rel:
                ca, cb = cb, ca
            a = (ca, pick(self.rng, SHAPES))
            b = (cb, pick(self.rng, SHAPES))
        else:
            a = self.held_pair()
            b = self.other_pair([a])
            if self.rng.random() < 0.5:
                a, b = b, a
        pa = noun_phrase(1, *a, self.rng).replace("one ", "a ")
        pb = noun_phrase(1, *b, self.rng).replace("one ", "a ")
        text = f"{pa} {pick(self.rng, REL_PHRASES[rel])} {pb}"
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
            main = (pick(self.rng, colors), shape)
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
            rel = pick(self.rng, ("larger", "smaller"))
            pa = noun_phrase(1, *a, self.rng).replace("one ", "a ")
            pb = noun_phrase(1, *b, self.rng).replace("one ", "a ")
            text = f"{pa} {pick(self.rng, REL_PHRASES[rel])} {pb}"
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
            other = pick(self.rng, [c for c in PALETTE if c != color])
            first, second = (color, other) if self.rng.random() < 0.5 else (other, color)
            text = pick(
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
            text = pick(
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
            shape = pick(self.rng, [s for s in SHAPES if s != held[1]])
            banned = pick(self.rng, tuple(PALETTE))
            color = pick(self.rng, [c for c in PALETTE if c != banned])
            first = noun_phrase(1, *held, self.rng).replace("one ", "a ")
            text = f"{first} and a {shape} that is not {banned}"
            cons = [_count(*held, 1), _count(None, shape, 1), _count(banned, shape, 0), _count(None, None, 2)]
            items = [(held[1], held[0], self.size()), (shape, color, self.size())]
        else:  # "two blue triangles and a yellow square, and no red shapes"
            kinds = [held] * int(self.rng.integers(1, 3))
            kinds.append(self.other_pair([held]))
            banned = pick(self.rng, [c for c in PALETTE if c not in {k[0] for k in kinds}])
            groups = Counter(kinds)
            text = join_phrases([noun_phrase(k, c, s, self.rng) for (c, s), k in groups.items()], self.rng)
            text += pick(
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
            other = pick(self.rng, [s for s in SHAPES if s != shape])
            n = int(self.rng.integers(1, 3))
            kinds = [(color, shape)] * n + [(color, other)] * int(self.rng.integers(1, 3))
            shapes = Counter(s for _, s in kinds)
            text = join_phrases([noun_phrase(k, None, s, self.rng) for s, k in shapes.items()], self.rng)
            text += f", {pick(self.rng, ('all of them', 'all', 'every one of them'))} {color}"
            cons = [_count(None, s, k) for s, k in shapes.items()] + [
                _count(None, None, len(kinds)),
                {"type": "all", "color": color, "shape": None},
            ]
        else:  # "every shape is a blue triangle"
            n = int(self.rng.integers(2, 5))
            kinds = [(color, shape)] * n
            text = pick(
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
        new[i] = replace(objs[i], color=pick(rng, [c for c in PALETTE if c != objs[i].color]))
        return Scene(scene.background, new)

    def reshape() -> Scene:
        i = int(rng.integers(len(objs)))
        new = list(objs)
        new[i] = replace(objs[i], shape=pick(rng, [s for s in SHAPES if s != objs[i].shape]))
        return Scene(scene.background, new)

    def rebackground() -> Scene:
        return Scene(pick(rng, [b for b in BACKGROUNDS if b != scene.background]), list(objs))

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
        # the GenEval-style tier's tasks (t2istudy.shapes_geneval)
        "single_object": (reshape,),
        "two_object": (reshape, drop_one),
        "colors": (recolor, reshape),
        "position": (mirror,),
        "color_attr": (swap_colors, recolor),
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
        raise FileNotFoundError(
            f"Benchmark file not found: {path}; write one with shapes_benchmark.save_benchmark."
        )
    return benchmark_from_json(path.read_text(encoding="utf-8"), where=str(path))
