"""Released systems' text-extraction recipes as named strategies: ``recipe:<name>`` parses to its expansion.

Each recipe is the canonical strategy string a released text-to-image system's choice maps to on a
smaller encoder (layer positions as depth fractions or offsets from the end, the normalization, the
prompt template). docs/encoders.md explains each one and how the mapping was chosen. Facts were read
from the systems' public pipelines (huggingface/diffusers ``src/diffusers/pipelines``, 2026-08).

Used as ``--strategy recipe:flux2`` or ``strategy: recipe:flux2`` in a grid; the run records the
expansion in options.json, so two spellings of one recipe share a cache entry. ``aggregation.recipe_of`` maps an
expansion back to its name for tables.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    strategy: str  # canonical grammar string, template included (tested to round-trip)
    system: str  # the released system it comes from
    encoder: str  # that system's text encoder and its depth


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("paper", "norm_mean", "Wang et al. 2025 (arXiv 2506.08210)", "Mistral-7B, Gemma2, Qwen2 ..."),
        Recipe(
            "flux2", "concat[none,layers=1/4;1/2;3/4,template=chat]", "FLUX.2", "Mistral-Small 40 / Qwen3 36"
        ),
        Recipe(
            "cosmos2.5",
            "concat[standardize,no_embed,template=cosmos2.5]",
            "Cosmos-Predict2.5",
            "Qwen2.5-VL-7B 28",
        ),
        Recipe("ltx2", "concat[minmax]", "LTX-2", "Gemma3-12B 48"),
        Recipe("ltx2.3", "concat[rms]", "LTX-2.3", "Gemma3-12B 48"),
        Recipe("lumina2", "layer:-2[template=lumina2]", "Lumina-Image-2.0", "Gemma2-2B 26"),
        Recipe("z-image", "layer:-2[template=chat]", "Z-Image", "Qwen3-4B 36"),
        Recipe("hunyuan", "layer:-3[template=hunyuan]", "HunyuanImage-2.1", "Qwen2.5-VL-7B 28"),
        Recipe("qwen-image", "last[template=qwen-image]", "Qwen-Image", "Qwen2.5-VL-7B 28"),
        Recipe("sana", "last[template=sana]", "Sana", "Gemma2-2B-IT 26"),
        Recipe("bria-fibo", "concat[none,layers=-2;-1]", "Bria FIBO", "SmolLM3-3B 36"),
    ]
}

PREFIX = "recipe:"  # a strategy naming a recipe: recipe:<name>


def named_recipe(strategy: str) -> Recipe | None:
    """The recipe a ``recipe:<name>`` strategy names (spaces ignored); None for any other strategy. An
    unknown name is an error that lists the known ones."""
    text = str(strategy).strip().replace(" ", "")
    if not text.startswith(PREFIX):
        return None
    recipe = RECIPES.get(text[len(PREFIX) :])
    if recipe is None:
        raise ValueError(
            f"Unknown recipe {text!r}. Known recipes: {', '.join(PREFIX + r for r in RECIPES)}; "
            "or spell the strategy out, e.g. 'concat[none,layers=1/4;1/2;3/4]'."
        )
    return recipe
