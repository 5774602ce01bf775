"""A rule-based reader of the shapes vocabulary: which objects, counts, colours, relations, negations and
background a sentence states (:func:`read`), for :mod:`t2istudy.world.facts` to check a rewrite against its
original's spec.

It reads noun phrases ("two bright red circles"), treats definite mentions ("the circle", "each one") as
references rather than new objects, and binds a relation to the nearest object phrases around its words.
It is not a parser: the words it knows are the world's (:mod:`t2istudy.world.shapes`) plus the common
colours, shapes, numbers and relation cues a rewriter uses instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from t2istudy.world.shapes import BACKGROUNDS, PALETTE, SHAPES

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
