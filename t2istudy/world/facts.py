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
the spec's exact total. The reader (:mod:`t2istudy.world.prompt_reader`) is rule-based, not a parser: it
reads noun phrases ("two bright red circles"), treats definite mentions ("the circle", "each one") as
references rather than new objects, and binds a relation to the nearest object phrases around its words.
:func:`check_original_prompts`
confirms it reads every original benchmark prompt as keeping all and adding nothing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from t2istudy.world.prompt_reader import LARGE, SMALL, Phrase, Reading, read
from t2istudy.world.shapes import INVERSE

ADDED_KINDS = ("colour", "background", "shape", "relation", "negation", "size", "universal", "objects")
CATEGORIES = ("colour", "shape", "count", "relation", "negation", "background")


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
