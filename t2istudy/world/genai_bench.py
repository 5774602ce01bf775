"""GenAI-Bench prompt files: the 527-prompt release shipped here, or the official 1,600-prompt set.

Both use the same ``genai_image.json`` layout ({"00001": {"id", "prompt", ...}, ...}); the official
release adds ``genai_skills.json`` (skill tag -> list of int prompt indices).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

BASIC_SKILLS = ("attribute", "scene", "spatial", "action", "part")
ADVANCED_SKILLS = ("counting", "comparison", "differentiation", "negation", "universal")
SKILLS = BASIC_SKILLS + ADVANCED_SKILLS
SKILL_GROUPS = {"basic": BASIC_SKILLS, "advanced": ADVANCED_SKILLS}


def shipped_path() -> Path:
    """Folder of the 527-prompt GenAI-Bench release that ships inside the package."""
    return Path(str(resources.files("t2istudy") / "data" / "genai-bench-527"))


OVERALL_ONLY = (
    "{source} has no skill tags (no genai_skills.json beside it): overall only. Per-skill scores need the "
    "official 1,600 prompts and their genai_skills.json (Hugging Face dataset BaiqiL/GenAI-Bench-1600, "
    "docs/scoring.md)."
)


def load_genai_bench(path: str | Path | None = None, skills_file: str | Path | None = None) -> pd.DataFrame:
    """Read a GenAI-Bench folder (or its ``genai_image.json``) into a table.

    Columns: ``id`` (str), ``index`` (int, the file's 0-based order used by ``genai_skills.json``),
    ``prompt`` (str), ``skills`` (tuple of skill tags; empty when no skills file is present).
    ``skills_file`` (default: ``genai_skills.json`` beside the prompt file) tags the prompts; without one the
    table says so in ``table.attrs["skills_note"]`` (see `skills_note`): its summary is overall only.
    """
    path = Path(path) if path is not None else shipped_path()
    image_file = path / "genai_image.json" if path.is_dir() else path
    if not image_file.exists():
        raise FileNotFoundError(
            f"GenAI-Bench prompt file not found: {image_file}. Pass a folder holding genai_image.json "
            f"(the official set is the Hugging Face dataset BaiqiL/GenAI-Bench-1600), or None for the "
            f"527-prompt release shipped with t2istudy."
        )
    try:
        raw = json.loads(image_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{image_file} is not valid JSON ({err}); re-download the benchmark file.") from err
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f"{image_file}: expected a non-empty object of id -> entry, got {type(raw).__name__}."
        )
    rows = []
    for index, (key, entry) in enumerate(raw.items()):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("prompt"), str)
            or not entry["prompt"].strip()
        ):
            raise ValueError(f"{image_file}: entry {key!r} has no non-empty 'prompt' string.")
        rows.append(
            {"id": str(entry.get("id", key)), "index": index, "prompt": entry["prompt"], "skills": ()}
        )
    table = pd.DataFrame(rows)
    if skills_file is not None and not Path(skills_file).is_file():
        raise FileNotFoundError(
            f"GenAI-Bench skills file not found: {skills_file}. Pass the genai_skills.json of the official "
            "1,600-prompt release (BaiqiL/GenAI-Bench-1600), or leave it empty for overall scores only."
        )
    skills_file = Path(skills_file) if skills_file is not None else image_file.with_name("genai_skills.json")
    if skills_file.exists():
        table["skills"] = _read_skills(skills_file, len(table))
        table.attrs["skills_file"] = str(skills_file)
    else:
        table.attrs["skills_note"] = OVERALL_ONLY.format(source=f"{image_file.parent.name}/{image_file.name}")
    table.attrs["prompt_file"] = str(image_file)
    return table


def skills_note(table: pd.DataFrame) -> str | None:
    """Why a GenAI-Bench table scores overall only (None when its prompts carry skill tags)."""
    return table.attrs.get("skills_note")


def _read_skills(skills_file: Path, n_prompts: int) -> list[tuple[str, ...]]:
    """Invert ``genai_skills.json`` (tag -> indices) into one tuple of tags per prompt."""
    try:
        raw = json.loads(skills_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{skills_file} is not valid JSON ({err}).") from err
    per_prompt: list[list[str]] = [[] for _ in range(n_prompts)]
    for tag, indices in raw.items():
        if tag not in SKILLS:
            raise ValueError(f"{skills_file}: unknown skill tag {tag!r}; known tags: {', '.join(SKILLS)}.")
        for i in indices:
            if not isinstance(i, int) or not 0 <= i < n_prompts:
                raise ValueError(
                    f"{skills_file}: tag {tag!r} names prompt index {i!r}, outside 0..{n_prompts - 1}."
                )
            per_prompt[i].append(tag)
    return [tuple(tags) for tags in per_prompt]


# ---------------------------------------------------------------------------------------------------------
# Per-skill aggregation, exactly as GenAI-Bench defines it: a skill's score is the mean over the prompts
# carrying its tag; "basic" and "advanced" are means over the prompts carrying *any* tag of the group (not
# the mean of the skill means); "overall" is the mean over all prompts.


def group_masks(table: pd.DataFrame, known: tuple[str, ...] = SKILLS) -> dict[str, np.ndarray]:
    """Boolean row masks: each skill present (in ``known`` order), then basic, advanced, overall.

    ``table`` needs ``skills`` (tuple of tags per prompt); an unknown tag raises naming the prompt.
    """
    if "skills" not in table.columns:
        raise ValueError("The table has no 'skills' column (a tuple of skill tags per prompt).")
    ids = table["id"].tolist() if "id" in table.columns else list(range(len(table)))
    tags = []
    for pid, skills in zip(ids, table["skills"], strict=True):
        if isinstance(skills, str) or not isinstance(skills, (tuple, list)):
            raise ValueError(f"Prompt {pid!r}: 'skills' must be a tuple of tags, got {skills!r}.")
        for tag in skills:
            if tag not in known:
                raise ValueError(
                    f"Prompt {pid!r}: unknown skill tag {tag!r}; known tags: {', '.join(known)}."
                )
        tags.append(set(skills))
    masks: dict[str, np.ndarray] = {}
    for skill in known:
        mask = np.array([skill in t for t in tags], dtype=bool)
        if mask.any():
            masks[skill] = mask
    for group, members in SKILL_GROUPS.items():
        mask = np.array([bool(t & set(members)) for t in tags], dtype=bool)
        if mask.any():
            masks[group] = mask
    masks["overall"] = np.ones(len(table), dtype=bool)
    return masks


def skill_means(table: pd.DataFrame, column: str = "score") -> pd.DataFrame:
    """GenAI-Bench's per-skill table (no confidence intervals): index = group, columns n, mean."""
    if column not in table.columns:
        raise ValueError(f"The table has no {column!r} column to aggregate.")
    values = table[column].to_numpy(dtype=float)
    rows = {
        name: {"n": int(m.sum()), "mean": float(values[m].mean())} for name, m in group_masks(table).items()
    }
    return pd.DataFrame.from_dict(rows, orient="index")
