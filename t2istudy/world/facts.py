"""Does a rewritten prompt keep the facts of the original? Read against the original's spec.

Why: a small rewriter is known to drop or invent facts ("two red circles" back as "a red circle ...").
On the shapes benchmark every prompt's facts are known from its spec, so a reader of the shapes
vocabulary can say, for each rewrite, which facts it kept and which it added.

Facts taken from a spec (:mod:`t2istudy.world.shapes` constraint types):
- **colour** / **shape**: every colour and shape an object must have (counts with n > 0, relations,
  comparisons, "all");
- **count**: each ``==`` count with n > 0 of a colour and/or shape (the scene total only where the prompt
  states it, i.e. with an "all" constraint), checked as "the objects the rewrite introduces add up to n";
- **relation**: left/right/above/below/larger/smaller between two kinds (either direction of wording),
  "more X than Y" comparisons, and a size contrast between two objects of one kind;
- **negation**: each colour that must be absent (a count of 0), checked as that colour under a negation;
- **background**: the stated background colour.

Added facts: a colour, background, shape noun, relation or negation not in the spec, a size word where
the spec says nothing about size, an "all ..." statement where the spec has none, or more objects than
the spec's exact total. The reader is rule-based, not a parser: it reads noun phrases ("two bright red
circles"), treats definite mentions ("the circle", "each one") as references rather than new objects,
and binds a relation to the nearest object phrases around its words. :func:`check_original_prompts`
confirms it reads every original benchmark prompt as keeping all and adding nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from t2istudy.world.shapes import BACKGROUNDS, INVERSE, PALETTE, SHAPES

ADDED_KINDS = ("colour", "background", "shape", "relation", "negation", "size", "universal", "objects")
CATEGORIES = ("colour", "shape", "count", "relation", "negation", "background")
OTHER_COLOURS = (
    "orange",
    "purple",
    "pink",
    "brown",
    "violet",
    "cyan",
    "magenta",
    "teal",
    "turquoise",
    "gold",
)
OTHER_SHAPES = (
    "star",
    "heart",
    "hexagon",
    "pentagon",
    "rectangle",
    "oval",
    "diamond",
    "cube",
    "sphere",
    "pyramid",
    "dot",
    "ball",
    "box",
    "cross",
    "line",
    "ring",
    "cone",
    "cylinder",
)
GENERIC_NOUNS = ("shape", "object", "item", "figure", "form")
NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "single": 1,
    "another": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
}
ARTICLES = {"the", "this", "that", "these", "those", "its", "their"}
DEFINITE = {"the", "this", "that", "these", "those", "each", "every", "both", "its", "their", "all", "other"}
LARGE = {"large", "big", "larger", "bigger", "largest", "biggest", "huge"}
SMALL = {"small", "smaller", "little", "tiny", "smallest"}
NEGATIONS = {"no", "not", "nothing", "without", "none", "never", "neither", "nor", "absent", "free"}
# relation words, longest first; "larger" / "smaller" need "than" (a plain size adjective is a size)
RELATION_CUES: list[tuple[tuple[str, ...], str]] = sorted(
    [
        *[
            ((*w.split(),), "left_of")
            for w in (
                "to the left of",
                "on the left of",
                "on the left side of",
                "left of",
                "to the left side of",
            )
        ],
        *[
            ((*w.split(),), "right_of")
            for w in (
                "to the right of",
                "on the right of",
                "on the right side of",
                "right of",
                "to the right side of",
            )
        ],
        *[((*w.split(),), "above") for w in ("above", "over", "on top of", "atop", "higher than")],
        *[((*w.split(),), "below") for w in ("below", "under", "beneath", "underneath", "lower than")],
        *[((*w.split(),), "larger") for w in ("larger than", "bigger than", "greater than")],
        *[((*w.split(),), "smaller") for w in ("smaller than", "tinier than")],
    ],
    key=lambda cue: -len(cue[0]),
)
BOUNDARY = {
    ",",
    ".",
    ";",
    ":",
    "!",
    "?",
    "and",
    "with",
    "than",
    "that",
    "which",
    "while",
    "is",
    "are",
    "of",
    "in",
    "on",
    "to",
    "at",
    "beside",
    "next",
    "near",
    "against",
    "plus",
    "but",
    "or",
}


@dataclass
class Phrase:
    """An object phrase: ``n`` objects (None = not said) of a colour / shape; ``ref``: refers back."""

    start: int
    end: int  # index of the noun (or of the last word of a noun-less "a blue one")
    n: int | None
    colour: str | None
    shape: str | None  # None for "shapes" / "a blue one" before its shape is inherited
    sizes: set[str] = field(default_factory=set)
    ref: bool = False
    generic: bool = False
    definite: bool = False  # "the circle": a reference only if an earlier phrase introduced the shape
    plural: bool = False


@dataclass
class Reading:
    """What a text says in the shapes vocabulary."""

    phrases: list[Phrase]
    colours: set[str]  # colours said positively (not under a negation)
    negated: set[str]  # colours said under a negation
    shapes: set[str]  # shape nouns (shapes world + other object nouns)
    background: set[str]
    relations: list[tuple[str, Phrase, Phrase]]
    size_contrast: bool
    size_words: set[str]  # large / small and their comparatives and superlatives
    universal: bool  # "all of them ...", "are all ...", "every shape ..."


def tokenize(text: str) -> list[str]:
    text = text.lower().replace("grey", "gray").replace("-", " ").replace("n't", " not")
    text = re.sub(
        r"\b(\d+)\b", lambda m: {"1": "one", "2": "two", "3": "three", "4": "four"}.get(m[1], m[1]), text
    )
    return re.findall(r"[a-z]+|[0-9]+|[,.;:!?]", text)


# "the number of X is <word> than the number of Y": True = X is the larger count
COMPARATIVES = {
    "more": True,
    "greater": True,
    "larger": True,
    "higher": True,
    "bigger": True,
    "fewer": False,
    "less": False,
    "smaller": False,
    "lower": False,
}
SCOPE_ENDS = {",", ".", ";", ":", "!", "?", "and", "with", "against", "on", "in", "but", "while", "or"}


def _negation_scope(tokens: list[str]) -> set[int]:
    """Positions a negation word governs: up to the first colour word and its noun, or a clause break."""
    scope: set[int] = set()
    colour_words = {*PALETTE, *OTHER_COLOURS, *BACKGROUNDS}
    for i, tok in enumerate(tokens):
        if tok not in NEGATIONS:
            continue
        end = min(i + 6, len(tokens))
        for j in range(i + 1, end):
            if tokens[j] in SCOPE_ENDS:
                break
            scope.add(j)
            if tokens[j] in colour_words:
                if j + 1 < len(tokens) and _noun(tokens[j + 1]):
                    scope.add(j + 1)
                break
    return scope


def _noun(word: str) -> tuple[str | None, bool] | None:
    """(shape or None for a generic noun, plural) if ``word`` is an object noun."""
    for s in (*SHAPES, *OTHER_SHAPES, *GENERIC_NOUNS):
        if word in (s, s + "s", s + "es"):
            return (None if s in GENERIC_NOUNS else s), word != s
    return None


def read(text: str) -> Reading:
    """Read ``text`` into phrases, colours, negations, relations (see the module docstring)."""
    tokens = tokenize(text)
    negated_at = _negation_scope(tokens)
    colour_words = (*PALETTE, *OTHER_COLOURS)
    colours = {t for i, t in enumerate(tokens) if t in colour_words and i not in negated_at}
    negated = {t for i, t in enumerate(tokens) if t in (*colour_words, *BACKGROUNDS) and i in negated_at}
    background = {t for i, t in enumerate(tokens) if t in BACKGROUNDS and i not in negated_at}
    # "black" names an object's colour, not a background, when a shape noun follows it closely
    for i, t in enumerate(tokens):
        if t in BACKGROUNDS and any(_noun(w) and _noun(w)[0] for w in tokens[i + 1 : i + 3]):
            background.discard(t)
            colours.add(t)
    shapes = {n[0] for t in tokens if (n := _noun(t)) and n[0]}
    phrases = _phrases(tokens, negated_at)
    relations = _relations(tokens, phrases)
    size_words = set(tokens)
    size_contrast = bool(size_words & LARGE and size_words & SMALL) or "different sizes" in " ".join(tokens)
    joined = " ".join(tokens)
    universal = bool(
        re.search(
            r"\b(are all|all of them|all the shapes|every one|every shape|each of them|all)\b"
            r"(\s\w+){0,2}\s(" + "|".join((*PALETTE, *SHAPES)) + r")s?\b",
            joined,
        )
    )
    return Reading(
        phrases,
        colours,
        negated,
        shapes,
        background,
        relations,
        size_contrast,
        size_words & (LARGE | SMALL),
        universal,
    )


def _phrases(tokens: list[str], negated_at: set[int]) -> list[Phrase]:
    phrases: list[Phrase] = []
    i = 0
    while i < len(tokens):
        noun = _noun(tokens[i])
        pronoun = tokens[i] in ("one", "ones") and i > 0 and tokens[i - 1] not in {*NUMBERS, ",", "and"}
        if noun is None and not pronoun:
            i += 1
            continue
        # walk back over modifiers to a determiner or a boundary
        j, colour, sizes, n, ref, definite = i - 1, None, set(), None, False, False
        while j >= 0 and i - j <= 5:
            t = tokens[j]
            if t in PALETTE or t in OTHER_COLOURS or (t in BACKGROUNDS and colour is None):
                colour = colour or t
            elif t in LARGE or t in SMALL:
                sizes.add(t)
            elif t in NUMBERS or t.isdigit():
                n = NUMBERS.get(t, int(t) if t.isdigit() else 1)
                if j >= 1 and tokens[j - 1] in DEFINITE:  # "the two circles"
                    ref, definite = True, tokens[j - 1] in ARTICLES
                break
            elif t == "of" and j >= 2 and tokens[j - 1] in ("pair", "couple"):
                n, j = 2, j - 2
                break
            elif t in DEFINITE or t == "every":
                ref, definite = True, t in ARTICLES
                break
            elif t in BOUNDARY or _noun(t) or t in NEGATIONS:
                break
            j -= 1
        start = j if j >= 0 else 0
        if any(k in negated_at for k in range(start, i + 1)) and (colour or noun):
            i += 1  # "no green shapes", "a square that is not red": not an object phrase of its own
            continue
        before = tokens[max(0, start - 3) : start]
        if "every" in before or "each" in before or ("all" in before and "of" not in tokens[start:i]):
            ref, definite = True, False  # "every one a blue triangle": describes the others, adds no object
        if noun is not None:
            shape, plural = noun
            generic = shape is None
            if n is None and not ref:
                n = None if plural else 1
        else:  # "a blue one": shape inherited below
            shape, generic = None, False
            if n is None and not ref:
                n = 1
        plural = bool(noun and noun[1])
        phrases.append(
            Phrase(start, i, n, colour, shape, sizes, ref, generic and noun is not None, definite, plural)
        )
        i += 1
    return _inherit(tokens, _first_mentions(_split_parts(tokens, phrases)))


def _first_mentions(phrases: list[Phrase]) -> list[Phrase]:
    """A definite phrase with no earlier object of its shape introduces objects ("The two red squares ...")."""
    seen: set[str | None] = set()
    for p in phrases:
        if p.ref and p.definite and p.shape not in seen and not p.generic:
            p.ref = False
            p.n = p.n or (None if p.plural else 1)
        if not p.ref:
            seen.add(p.shape)
    return phrases


def _inherit(tokens: list[str], phrases: list[Phrase]) -> list[Phrase]:
    """Noun-less parts ("one yellow and one blue", "a blue one") take the shape of the phrase before them;
    parts that split a colourless count ("two triangles, one yellow and one blue") replace it. A trailing
    "all of them blue" colours every colourless phrase."""
    out: list[Phrase] = []
    k = 0
    while k < len(phrases):
        p = phrases[k]
        parts = []
        m = k + 1
        while (
            m < len(phrases)
            and phrases[m].shape is None
            and not phrases[m].generic
            and phrases[m].n
            and not phrases[m].ref
        ):
            parts.append(phrases[m])
            m += 1
        if parts and p.shape is not None:
            for q in parts:
                q.shape = p.shape
                q.colour = q.colour or p.colour
            if p.n is not None and sum(q.n or 0 for q in parts) == p.n and not p.ref:
                p.ref = True  # the parts are the objects
            out += [p, *parts]
            k = m
            continue
        out.append(p)
        k += 1
    # noun-less bare colours after a count without a pronoun: "two circles, one green and one yellow"
    text = " ".join(tokens)
    for match in re.finditer(r"\b(all|every one|each one|each)( of them| of the \w+)?,? (\w+)\b", text):
        colour = match[3]
        if colour in PALETTE:
            for q in out:
                q.colour = q.colour or colour
    return out


def _split_parts(tokens: list[str], phrases: list[Phrase]) -> list[Phrase]:
    """Colour-only parts with no noun at all ("one green and one yellow"), as phrases of their own."""
    extra = []
    for i, t in enumerate(tokens[:-1]):
        nxt = tokens[i + 1]
        after = tokens[i + 2] if i + 2 < len(tokens) else "."
        if t == "one" and (nxt in PALETTE or nxt in LARGE | SMALL) and (after in BOUNDARY or after == "."):
            if not _noun(after):
                extra.append(
                    Phrase(i, i + 1, 1, nxt if nxt in PALETTE else None, None, {nxt} & (LARGE | SMALL))
                )
    return sorted(phrases + extra, key=lambda p: p.end)


def _relations(tokens: list[str], phrases: list[Phrase]) -> list[tuple[str, Phrase, Phrase]]:
    """(relation, left object phrase, right object phrase) for each relation word with objects around it,
    and ("more", more-phrase, fewer-phrase) for "more/fewer X than Y"."""
    found = []
    i = 0
    while i < len(tokens):
        if (
            tokens[i] in COMPARATIVES
            and tokens[i + 1 : i + 2] == ["than"]
            and "number" in tokens[max(0, i - 8) : i]
        ):
            x = [p for p in phrases if p.end < i and p.shape]
            y = [p for p in phrases if p.start >= i + 1 and p.start - (i + 1) <= 4 and p.shape]
            if x and y:
                more, fewer = (x[-1], y[0]) if COMPARATIVES[tokens[i]] else (y[0], x[-1])
                found.append(("more", more, fewer))
                i += 2
                continue
        cue = next((rel for words, rel in RELATION_CUES if tuple(tokens[i : i + len(words)]) == words), None)
        width = next((len(w) for w, rel in RELATION_CUES if tuple(tokens[i : i + len(w)]) == w), 1)
        if cue:
            left = [p for p in phrases if p.end < i and i - p.end <= 6 and p.shape]
            right = [
                p for p in phrases if p.start >= i + width - 1 and p.start - (i + width) <= 3 and p.shape
            ]
            if left and right:
                found.append((cue, left[-1], right[0]))
        if tokens[i] in ("more", "fewer", "less"):
            x = [p for p in phrases if p.end > i and p.end - i <= 3 and p.shape]  # the noun after "more"
            than = next((k for k in range(i + 1, min(i + 8, len(tokens))) if tokens[k] == "than"), None)
            y = [p for p in phrases if than is not None and p.end > than and p.end - than <= 4 and p.shape]
            if x and y:
                more, fewer = (x[0], y[0]) if tokens[i] == "more" else (y[0], x[0])
                found.append(("more", more, fewer))
        i += width if cue else 1
    return found


# ---- facts of a spec --------------------------------------------------------------------------------------


def spec_facts(spec: dict) -> dict[str, Any]:
    """The facts a prompt with this spec states, by category (see the module docstring)."""
    cons = spec["constraints"]
    has_all = any(c["type"] == "all" for c in cons)
    colours, shapes, counts, relations, negations, background = set(), set(), {}, [], set(), set()

    def sel(c: dict) -> None:
        if c.get("color"):
            colours.add(c["color"])
        if c.get("shape"):
            shapes.add(c["shape"])

    for c in cons:
        if c["type"] == "count" and c["n"] == 0:
            negations.add(c["color"])
        elif c["type"] == "count":
            sel(c)
            if c["op"] == "==" and (c["color"] or c["shape"] or has_all):
                counts[(c["color"], c["shape"])] = c["n"]
        elif c["type"] in ("relation", "more"):
            sel(c["a"])
            sel(c["b"])
            rel = "more" if c["type"] == "more" else c["rel"]
            relations.append(("size_contrast", None, None) if c["a"] == c["b"] else (rel, c["a"], c["b"]))
        elif c["type"] == "all":
            sel(c)
        elif c["type"] == "background":
            background.add(c["color"])
    total = next(
        (
            c["n"]
            for c in cons
            if c["type"] == "count" and c["op"] == "==" and not c["color"] and not c["shape"] and c["n"] > 0
        ),
        None,
    )
    negations.discard(None)
    return {
        "colour": colours,
        "shape": shapes,
        "count": counts,
        "relation": relations,
        "negation": negations,
        "background": background,
        "total": total,
        "universal": has_all,
    }


def _matches(p: Phrase, s: dict) -> bool:
    """A phrase fits a selector; a phrase naming no colour fits any colour (a dropped colour is counted
    once, under colour, not again under count and relation)."""
    colour_ok = not s.get("color") or p.colour in (None, s["color"])
    return colour_ok and (not s.get("shape") or p.shape == s["shape"])


def _objects(reading: Reading) -> list[Phrase]:
    return [p for p in reading.phrases if not p.ref and not p.generic]


def _count_kept(reading: Reading, key: tuple[str | None, str | None], n: int) -> bool:
    colour, shape = key
    if colour is None and shape is None:  # a stated total: "4 shapes" or objects adding up to it
        generic = [p.n for p in reading.phrases if p.generic and not p.ref and p.n and p.n >= 2]
        objs = [p.n for p in _objects(reading)]
        return (bool(generic) and sum(generic) == n) or (None not in objs and sum(objs) == n)
    hits = [p.n for p in _objects(reading) if _matches(p, {"color": colour, "shape": shape})]
    return bool(hits) and None not in hits and sum(hits) == n


def _relation_kept(reading: Reading, rel: str, a: dict | None, b: dict | None) -> bool:
    if rel == "size_contrast":
        return reading.size_contrast
    for r, left, right in reading.relations:
        if (r == rel and _matches(left, a) and _matches(right, b)) or (
            rel != "more" and r == INVERSE[rel] and _matches(left, b) and _matches(right, a)
        ):
            return True
    if rel in ("larger", "smaller"):  # "a large red square next to a small green triangle"
        big, small = (a, b) if rel == "larger" else (b, a)
        objs = reading.phrases
        return any(_matches(p, big) and p.sizes & LARGE for p in objs) and any(
            _matches(p, small) and p.sizes & SMALL for p in objs
        )
    return False


def check_rewrite(rewrite: str, spec: dict) -> dict[str, Any]:
    """One row: ``keeps_<category>`` (None where the spec has no such fact), ``keeps_all``,
    ``adds_<kind>``, ``adds_any`` and ``problems`` (what was lost or added, for reading)."""
    facts, reading = spec_facts(spec), read(rewrite)
    problems: list[str] = []

    def kept(category: str, ok_items: list[tuple[str, bool]]) -> bool | None:
        if not ok_items:
            return None
        for what, ok in ok_items:
            if not ok:
                problems.append(f"lost {category} {what}")
        return all(ok for _, ok in ok_items)

    row: dict[str, Any] = {
        "keeps_colour": kept("colour", [(c, c in reading.colours) for c in sorted(facts["colour"])]),
        "keeps_shape": kept("shape", [(s, s in reading.shapes) for s in sorted(facts["shape"])]),
        "keeps_count": kept(
            "count",
            [
                (f"{k[0] or ''} {k[1] or 'shapes'}={n}".strip(), _count_kept(reading, k, n))
                for k, n in facts["count"].items()
            ],
        ),
        "keeps_relation": kept(
            "relation", [(r, _relation_kept(reading, r, a, b)) for r, a, b in facts["relation"]]
        ),
        "keeps_negation": kept(
            "negation", [(f"no {c}", c in reading.negated) for c in sorted(facts["negation"])]
        ),
        "keeps_background": kept(
            "background", [(b, b in reading.background) for b in sorted(facts["background"])]
        ),
    }
    row["keeps_all"] = all(v is not False for v in row.values())
    said_colours = facts["colour"] | facts["negation"]
    allowed_rel = {r for r, _, _ in facts["relation"]} | {INVERSE.get(r, r) for r, _, _ in facts["relation"]}
    if "size_contrast" in allowed_rel:  # "a large square larger than a small one" restates the contrast
        allowed_rel |= {"larger", "smaller"}
    objs = _objects(reading)
    sized = {"larger", "smaller", "size_contrast"} & {r for r, _, _ in facts["relation"]}
    added = {
        "adds_colour": sorted(reading.colours - said_colours),
        "adds_background": sorted(reading.background - facts["background"] - said_colours),
        "adds_shape": sorted(reading.shapes - facts["shape"]),
        "adds_relation": sorted({r for r, _, _ in reading.relations} - allowed_rel),
        "adds_negation": sorted(reading.negated - facts["negation"]),
        "adds_size": sorted(reading.size_words) if not sized else [],
        "adds_universal": ["all"] if reading.universal and not facts["universal"] else [],
        "adds_objects": (
            [f"{sum(p.n for p in objs)} objects for {facts['total']}"]
            if facts["total"]
            and objs
            and None not in [p.n for p in objs]
            and sum(p.n for p in objs) > facts["total"]
            else []
        ),
    }
    for kind, items in added.items():
        problems += [f"added {kind[5:]} {x}" for x in items]
        row[kind] = bool(items)
    row["adds_any"] = any(bool(v) for v in added.values())
    row["problems"] = "; ".join(problems)
    return row


def check_rewrites(bench: pd.DataFrame, rewrites: list[str]) -> pd.DataFrame:
    """One row per benchmark prompt: id, skills, prompt, rewrite and :func:`check_rewrite`'s columns."""
    if len(rewrites) != len(bench):
        raise ValueError(f"Got {len(rewrites)} rewrites for {len(bench)} prompts; pass one per prompt.")
    rows = []
    for item, rewrite in zip(bench.itertuples(), rewrites, strict=True):
        rows.append(
            {
                "id": item.id,
                "skill": item.id.rsplit("-", 1)[0],
                "prompt": item.prompt,
                "rewrite": rewrite,
                **check_rewrite(rewrite, item.spec),
            }
        )
    return pd.DataFrame(rows)


def summarize_facts(table: pd.DataFrame) -> dict[str, float]:
    """Shares: keeps every fact, each category (over prompts having it), adds any fact, and mean length."""
    out = {"prompts": len(table), "keeps_all": float(table["keeps_all"].mean())}
    for c in CATEGORIES:
        col = table[f"keeps_{c}"].dropna()
        out[f"keeps_{c}"] = float(col.astype(bool).mean()) if len(col) else float("nan")
    out["adds_any"] = float(table["adds_any"].mean())
    for kind in ADDED_KINDS:
        out[f"adds_{kind}"] = float(table[f"adds_{kind}"].mean())
    out["mean_words"] = float(table["rewrite"].str.split().str.len().mean())
    return out


def check_original_prompts(bench: pd.DataFrame) -> pd.DataFrame:
    """The checker read against the originals themselves: every row should keep all and add nothing."""
    return check_rewrites(bench, list(bench["prompt"]))


def preservation_table(
    bench: pd.DataFrame, rewrites: dict[str, list[str]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one summary row per rewriter, one row per rewrite) for ``{rewriter name: rewrites in bench order}``."""
    rows, summary = [], []
    for name, texts in rewrites.items():
        table = check_rewrites(bench, texts).assign(rewriter=name)
        rows.append(table)
        summary.append({"rewriter": name, **summarize_facts(table)})
    return pd.DataFrame(summary), pd.concat(rows, ignore_index=True)
