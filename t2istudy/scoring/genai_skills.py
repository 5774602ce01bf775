"""GenAI-Bench scored per skill with VQAScore, as a run stores it: the summary by skill, the scorer's settings,
and what the scoring used and cost.

Why: the paper's headline table is per skill, and a run that paid for VQAScore must keep its bill. The
official 1,600 prompts with ``genai_skills.json`` give skill rows (`scoring.summarize`); the 527-prompt release
shipped here has no tags, so its summary is overall only and the result says so (``note``).

    bench = load_genai_bench("/data/GenAI-Bench-1600", "/data/GenAI-Bench-1600/genai_skills.json")
    result = score_genai_bench(images, bench, model="gpt-4o", base_url=None, cache_path="cache/vqascore.sqlite")
    metrics.update(result.metrics())          # {"vqascore": {settings, usage, est_cost_usd}, "skills_note": ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from t2istudy.scoring.scorers import ImageLike, get_scorer
from t2istudy.scoring.summaries import summarize
from t2istudy.scoring.vqascore import DEFAULT_CACHE, QUESTION_TEMPLATE
from t2istudy.world.genai_bench import skills_note


@dataclass
class GenAIBenchScores:
    table: pd.DataFrame  # one row per prompt: id, prompt, skills, score, p_yes, p_no, status, cached
    summary: pd.DataFrame  # summarize(table): each skill present, basic, advanced, overall
    settings: dict[str, Any]  # the scorer's model, base URL, cache path, question template, prompt files
    usage: dict[str, Any]  # VQAScore's counters: requests, cache hits, tokens, est_cost_usd (None: no price)
    note: str | None  # why the summary is overall only (a prompt file without skill tags)

    def metrics(self) -> dict[str, Any]:
        """What metrics.json keeps beside the summary: the settings, usage and cost, and the note."""
        return {
            "vqascore": {
                **self.settings,
                "usage": self.usage,
                "est_cost_usd": self.usage.get("est_cost_usd"),
            },
            "skills_note": self.note,
        }


def score_genai_bench(
    images: Sequence[ImageLike],
    bench: pd.DataFrame,
    *,
    model: str = "gpt-4o",
    base_url: str | None = None,
    cache_path: str = DEFAULT_CACHE,
    **options: Any,
) -> GenAIBenchScores:
    """Score one image per prompt of ``bench`` (`world.genai_bench.load_genai_bench`) with VQAScore against
    ``model`` at ``base_url`` (None: OPENAI_BASE_URL or api.openai.com), answers cached in ``cache_path``;
    other VQAOptions (detail, max_workers, timeouts) pass through."""
    scorer = get_scorer("vqascore", model=model, base_url=base_url, cache_path=cache_path, **options)
    table = scorer.score(images, bench)
    settings = {
        "model": model,
        "base_url": base_url,
        "cache_path": cache_path,
        "template": options.get("template", QUESTION_TEMPLATE),
        "prompt_file": bench.attrs.get("prompt_file"),
        "skills_file": bench.attrs.get("skills_file"),
    }
    return GenAIBenchScores(table, summarize(table), settings, dict(table.attrs["usage"]), skills_note(bench))
