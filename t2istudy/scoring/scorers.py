"""One scoring interface over the pixel judge and VQAScore.

Why: a run scores its samples the same way at either scale; only the scorer name (a notebook parameter)
changes. ``score(images, prompts)`` returns one row per prompt (id, prompt, skills, score in 0..1 plus
scorer-specific columns); :mod:`t2istudy.scoring.summaries` turns that table into per-skill numbers.

Inputs are checked before any work: images must be readable, square and all the same size, one per
prompt; skill tags must be known; judge prompts need a valid spec. Errors name the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from PIL import Image

from t2istudy.scoring.judge import as_array, judge_detail
from t2istudy.scoring.vqascore import VQAScore
from t2istudy.world.genai_bench import group_masks
from t2istudy.world.shapes import check_constraints, validate_spec

ImageLike = np.ndarray | Image.Image | str | Path


class Scorer(Protocol):
    name: str

    def score(self, images: Sequence[ImageLike], prompts: pd.DataFrame) -> pd.DataFrame: ...


def load_images(
    images: Sequence[ImageLike], prompts: pd.DataFrame, resolution: int | None = None
) -> list[np.ndarray]:
    """Check and convert ``images`` (arrays, PIL images or file paths), one per prompt row, all one size."""
    for column in ("id", "prompt", "skills"):
        if column not in prompts.columns:
            raise ValueError(f"The prompts table has no {column!r} column; expected id, prompt, skills.")
    if len(images) != len(prompts):
        raise ValueError(
            f"Got {len(images)} images for {len(prompts)} prompts; pass exactly one image per prompt row, "
            f"in the table's order."
        )
    if "task" not in prompts.columns:  # GenAI-Bench-style tags; the GenEval-style tier tags its task
        group_masks(prompts)  # unknown skill tags fail here, naming the prompt
    out: list[np.ndarray] = []
    for pid, image in zip(prompts["id"], images, strict=True):
        name = f"image for prompt {pid!r}"
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as im:
                    image = im.convert("RGB")
            except (OSError, ValueError) as err:
                raise ValueError(f"{name}: cannot read {image} ({err}); re-save it as PNG.") from err
        array = np.clip(np.rint(as_array(image, name)), 0, 255).astype(np.uint8)
        expected = resolution or (out[0].shape[0] if out else array.shape[0])
        if array.shape[:2] != (expected, expected):
            raise ValueError(
                f"{name}: size {array.shape[1]}x{array.shape[0]}, expected {expected}x{expected} "
                f"(every image of a scoring call must have the same resolution)."
            )
        out.append(array)
    return out


def _base_rows(prompts: pd.DataFrame) -> pd.DataFrame:
    """The prompt columns every score table keeps (``task`` too for the GenEval-style tier)."""
    keep = ["id", "prompt", "skills"] + (["task"] if "task" in prompts.columns else [])
    return pd.DataFrame({c: prompts[c].tolist() for c in keep})


def shuffled_pairing(prompts: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """For row i, the row j != i whose image stands in for prompt i in the shuffled-prompt control.

    j is drawn from the prompts with the same skill tags (a random cyclic shift of each skill's rows, so
    every image is used once), so the stand-in image was drawn for a prompt of the same kind (as many
    objects, a background or not) but not this one. Fixed by ``seed`` and the table alone: every arm is
    scored on the same pairing (paired differences stay paired). Tag sets held by a single prompt are
    pooled into one mixed group.
    """
    n = len(prompts)
    if n < 2:
        raise ValueError("The shuffled-prompt control needs at least 2 prompts.")
    rng = np.random.default_rng(seed)
    keys = ["|".join(t) if isinstance(t, (tuple, list)) else str(t) for t in prompts["skills"]]
    groups = [[i for i, k in enumerate(keys) if k == key] for key in sorted(set(keys))]
    lone = [g[0] for g in groups if len(g) == 1]  # single-prompt tag sets share one mixed group
    groups = [g for g in groups if len(g) > 1] + ([lone] if lone else [])
    other = np.empty(n, dtype=int)
    for rows in groups:
        if len(rows) == 1:  # the only lone prompt of the table: any other image will do
            other[rows[0]] = (rows[0] + 1) % n
            continue
        order = np.array(rows)[rng.permutation(len(rows))]
        other[order] = np.roll(order, 1)  # a cycle through the group: nobody keeps its own image
    return other


class JudgeScorer:
    """Pixel judge on the shapes benchmark: score = 1 if every constraint holds; ``fraction`` = share held.

    With ``shuffled_control`` (default) every prompt is also judged on the image drawn for another prompt
    of the same skill (:func:`shuffled_pairing`): ``score_shuffled`` / ``fraction_shuffled`` are the
    credit an image earns without following *this* prompt (zero counts, backgrounds and negations hold
    by chance), so ``fraction - fraction_shuffled`` is the credit earned by following it.
    """

    name = "judge"

    def __init__(self, resolution: int | None = None, shuffled_control: bool = True) -> None:
        self.resolution = resolution
        self.shuffled_control = shuffled_control

    def score(self, images: Sequence[ImageLike], prompts: pd.DataFrame) -> pd.DataFrame:
        if "spec" not in prompts.columns:
            raise ValueError(
                "The judge needs a 'spec' column (make the table with shapes_benchmark.make_benchmark); "
                "GenAI-Bench prompts have no spec: score them with get_scorer('vqascore')."
            )
        for pid, spec in zip(prompts["id"], prompts["spec"], strict=True):
            validate_spec(spec, f"prompt {pid!r}")
        arrays = load_images(images, prompts, self.resolution)
        details = [judge_detail(a, s) for a, s in zip(arrays, prompts["spec"], strict=True)]
        table = _base_rows(prompts)
        table["score"] = [float(all(d["verdicts"])) for d in details]
        table["fraction"] = [sum(d["verdicts"]) / len(d["verdicts"]) for d in details]
        if self.shuffled_control:
            other = shuffled_pairing(prompts)  # reuse each image's detections: only the spec changes
            control = [
                check_constraints(details[j]["background"], details[j]["objects"], s)
                for j, s in zip(other, prompts["spec"], strict=True)
            ]
            table["score_shuffled"] = [float(all(v)) for v in control]
            table["fraction_shuffled"] = [sum(v) / len(v) for v in control]
        table["n_objects"] = [len(d["objects"]) for d in details]
        table["background"] = [d["background"] for d in details]
        table["detected"] = [
            ", ".join(f"{o.color} {o.shape}" for o in sorted(d["objects"], key=lambda o: (o.y, o.x)))
            for d in details
        ]
        return table


class VQAScorer:
    """VQAScore (P(yes) from an OpenAI-compatible vision model); options as in :class:`vqascore.VQAOptions`."""

    name = "vqascore"

    def __init__(self, **options: Any) -> None:
        self.client = VQAScore(**options)

    def score(self, images: Sequence[ImageLike], prompts: pd.DataFrame) -> pd.DataFrame:
        arrays = load_images(images, prompts, None)
        results = self.client.score(arrays, prompts["prompt"].tolist())
        table = _base_rows(prompts)
        for column in ("score", "p_yes", "p_no", "answer", "status", "cached"):
            table[column] = [r[column] for r in results]
        table.attrs["usage"] = self.client.stats.to_dict()
        return table


def get_scorer(name: str, **options: Any) -> Scorer:
    """``"judge"`` (pixel judge, shapes benchmark) or ``"vqascore"`` (GPT-4o or any OpenAI-compatible VLM)."""
    if name == "judge":
        return JudgeScorer(**options)
    if name == "vqascore":
        return VQAScorer(**options)
    raise ValueError(f"Unknown scorer {name!r}; use 'judge' (offline pixel judge) or 'vqascore' (GPT-4o).")
