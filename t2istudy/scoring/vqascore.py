"""VQAScore through the ``openai`` client: P("yes") that a vision model says an image shows a prompt.

Why: the paper scores GenAI-Bench images with VQAScore judged by GPT-4o. This client does that against
any OpenAI-compatible vision server (``base_url``), so paper-scale runs score the same way as the study.

How:
- The image goes as a base64 PNG data URL with the question ``QUESTION_TEMPLATE`` (exactly the paper's
  wording); ``logprobs=True, top_logprobs=20, max_tokens=1, temperature=0``.
- P(yes) and P(no) are sums of exp(logprob) over the first generated token's top logprobs (plus the
  sampled token if the server left it out) whose text, stripped of spaces and of ``.,!:;"'`` and
  lower-cased, is ``yes`` or ``no`` (so "Yes", " yes", "YES." all count). Score =
  P(yes) / (P(yes) + P(no)) (``normalize=True``, default) or the raw P(yes). When neither appears in the
  top 20 the score is 0.0 and ``status`` is ``"no_yes_no"`` (counted in the run's stats), never a guess.
- Key, retries and the sqlite cache follow :mod:`t2istudy.openai_client` (shared with the prompt
  upsampler): the key is read from ``api_key_env`` (``OPENAI_API_KEY``) once, before any work, and never
  written anywhere; 429, 5xx, timeouts, connection errors and malformed bodies are retried up to
  ``max_attempts`` times with capped exponential backoff; other 4xx fail that item; 401/403 stop the run.
- Every answer is written to an sqlite cache keyed by (image sha256, prompt, model, template, detail) as
  soon as it arrives, on the main thread, so an interrupted or repeated run never pays twice. The default
  file is ``cache/vqascore.sqlite`` (git-ignored, beside the other caches); answers in a cache at the old
  default, ``vqascore_cache.sqlite`` in the working folder, are copied into it (``adopt_legacy_cache``).
- Requests run in a bounded thread pool (``max_workers``). Token usage and an estimated cost (USD, from
  ``PRICES_PER_MTOK``; check current prices) are kept in :attr:`VQAScore.stats`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import sqlite3
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from t2istudy.openai_client import (
    Fatal,
    Retryable,
    RetryPolicy,
    SqliteCache,
    call_classified,
    make_client,
    with_retries,
)

QUESTION_TEMPLATE = 'Does this figure show "{prompt}"? Please answer yes or no.'
# USD per million (input, output) tokens; list prices when written (2024-2025) -- check before budgeting.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
}
# Relative to the working folder (notebooks run at the repository root). The default before cache/ was
# LEGACY_CACHE, which git did not ignore.
DEFAULT_CACHE = "cache/vqascore.sqlite"
LEGACY_CACHE = "vqascore_cache.sqlite"


@dataclass
class VQAOptions:
    """Everything that configures a VQAScore run (the API key is deliberately not here)."""

    model: str = "gpt-4o"
    base_url: str | None = None  # None: the client's default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"
    cache_path: str = DEFAULT_CACHE
    template: str = QUESTION_TEMPLATE
    detail: str = "auto"  # image detail for the vision model: auto | low | high
    normalize: bool = True  # P(yes) / (P(yes) + P(no)); False: raw P(yes)
    max_workers: int = 8
    max_attempts: int = 6
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0


@dataclass
class UsageStats:
    """Per-run counters; ``est_cost_usd`` is None for models without a known price."""

    model: str = ""
    prompts: int = 0
    cache_hits: int = 0
    answered: int = 0
    failed: int = 0
    no_yes_no: int = 0
    http_requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    est_cost_usd: float | None = 0.0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VQAScoreError(RuntimeError):
    """Some items could not be scored; everything else is already in the cache."""


def image_sha256(image: np.ndarray) -> str:
    """Hash of the pixels (shape included), independent of how PNG encoding evolves."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


def png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def yes_no_probs(top_logprobs: list[tuple[str, float]]) -> tuple[float, float]:
    """(P(yes), P(no)) summed over case/space/punctuation variants of the first token."""
    p_yes = p_no = 0.0
    for token, logprob in top_logprobs:
        word = token.strip().strip(".,!:;\"'").lower()
        if word == "yes":
            p_yes += math.exp(logprob)
        elif word == "no":
            p_no += math.exp(logprob)
    return p_yes, p_no


class ScoreCache(SqliteCache):
    """sqlite table of answers; one row per (image, prompt, model, template, detail), committed at once."""

    table = "answers"

    def __init__(self, path: str | Path) -> None:
        super().__init__(
            path,
            "CREATE TABLE IF NOT EXISTS answers (image_sha256 TEXT, prompt TEXT, model TEXT, template TEXT,"
            " detail TEXT, p_yes REAL, p_no REAL, answer TEXT, top_logprobs TEXT, prompt_tokens INTEGER,"
            " completion_tokens INTEGER, created REAL,"
            " PRIMARY KEY (image_sha256, prompt, model, template, detail))",
            "VQAScore",
        )

    def get(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute(
                "SELECT p_yes, p_no, answer FROM answers WHERE image_sha256=? AND prompt=? AND model=?"
                " AND template=? AND detail=?",
                key,
            ).fetchone()
        return None if row is None else {"p_yes": row[0], "p_no": row[1], "answer": row[2]}

    def put(self, key: tuple[str, ...], answer: dict[str, Any]) -> None:
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    *key,
                    answer["p_yes"],
                    answer["p_no"],
                    answer["answer"],
                    json.dumps(answer["top_logprobs"]),
                    answer["prompt_tokens"],
                    answer["completion_tokens"],
                    time.time(),
                ),
            )
            self.db.commit()


def adopt_legacy_cache(cache: ScoreCache, cache_path: str | Path) -> int:
    """Copy the answers of a cache at the old default path into the default one; returns how many were new.

    Only when ``cache_path`` is the default: paid answers are never left behind by the move to cache/. The old
    file is read, never changed; once copied it can be deleted (git ignores it meanwhile).
    """
    legacy = Path(LEGACY_CACHE)
    if Path(cache_path) != Path(DEFAULT_CACHE) or not legacy.is_file():
        return 0
    try:
        with cache.lock:
            cache.db.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))
            try:
                copied = cache.db.execute(
                    "INSERT OR IGNORE INTO answers SELECT * FROM legacy.answers"
                ).rowcount
                cache.db.commit()
            finally:
                cache.db.execute("DETACH DATABASE legacy")
    except sqlite3.DatabaseError as err:
        raise ValueError(
            f"{legacy.resolve()} (the old default VQAScore cache) cannot be read ({err}); move it away, or pass "
            "cache_path explicitly."
        ) from err
    if copied:
        warnings.warn(
            f"Copied {copied} VQAScore answers from {legacy.resolve()} (the old default) into {cache.path}; the "
            f"old file is no longer written and can be deleted.",
            stacklevel=3,
        )
    return copied


class VQAScore:
    """``VQAScore(model=..., base_url=..., cache_path=...).score(images, prompts)`` -> one dict per item."""

    def __init__(self, options: VQAOptions | None = None, **overrides: Any) -> None:
        unknown = set(overrides) - set(VQAOptions.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"Unknown VQAScore options {sorted(unknown)}; known: {list(VQAOptions.__dataclass_fields__)}."
            )
        self.options = replace(options or VQAOptions(), **overrides)
        self._client = make_client(
            self.options.api_key_env, "VQAScore", self.options.base_url, self.options.timeout_s
        )
        self.cache = ScoreCache(self.options.cache_path)
        adopt_legacy_cache(self.cache, self.options.cache_path)
        self.stats = UsageStats(model=self.options.model)
        self._lock = threading.Lock()

    # -- one request ------------------------------------------------------------------------------------

    def _ask(self, data_url: str, prompt: str) -> dict[str, Any]:
        """One HTTP request; raises Retryable / Fatal / RuntimeError (item failure)."""
        with self._lock:
            self.stats.http_requests += 1
        question = self.options.template.format(prompt=prompt)
        response = call_classified(
            lambda: self._client.chat.completions.create(
                model=self.options.model,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": question},
                            {
                                "type": "image_url",
                                "image_url": {"url": data_url, "detail": self.options.detail},
                            },
                        ],
                    }
                ],
                max_tokens=1,
                temperature=0,
                logprobs=True,
                top_logprobs=20,
            ),
            self.options.api_key_env,
            self.options.model,
        )
        return _parse(response)

    def _ask_with_retries(self, data_url: str, prompt: str) -> dict[str, Any]:
        opts = self.options
        policy = RetryPolicy(opts.max_attempts, opts.backoff_s, opts.backoff_max_s)
        return with_retries(lambda: self._ask(data_url, prompt), policy, self._count_retry)

    def _count_retry(self) -> None:
        with self._lock:
            self.stats.retries += 1

    # -- a batch ----------------------------------------------------------------------------------------

    def score(self, images: list[np.ndarray], prompts: list[str]) -> list[dict[str, Any]]:
        """One dict per item: score, p_yes, p_no, answer, status (ok | no_yes_no), cached.

        Cached answers are reused; new ones are cached as they arrive. If some items fail, the others
        are still cached and a :class:`VQAScoreError` lists the failures (rerun to retry only those).
        """
        if len(images) != len(prompts):
            raise ValueError(
                f"Got {len(images)} images for {len(prompts)} prompts; pass one image per prompt."
            )
        start = time.time()
        opts = self.options
        keys = [
            (image_sha256(im), p, opts.model, opts.template, opts.detail)
            for im, p in zip(images, prompts, strict=True)
        ]
        answers: list[dict[str, Any] | None] = [self.cache.get(k) for k in keys]
        cached = [a is not None for a in answers]
        self.stats.prompts += len(keys)
        self.stats.cache_hits += sum(cached)
        todo: dict[tuple[str, ...], list[int]] = {}
        for i, key in enumerate(keys):
            if answers[i] is None:
                todo.setdefault(key, []).append(i)  # the same image+prompt twice is asked once
        fatal: Fatal | None = None
        with ThreadPoolExecutor(max_workers=max(1, opts.max_workers)) as pool:
            pending = {
                pool.submit(self._ask_with_retries, png_data_url(images[idx[0]]), prompts[idx[0]]): key
                for key, idx in todo.items()
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    try:
                        answer = future.result()
                    except Fatal as err:
                        fatal = err
                        for f in pending:
                            f.cancel()
                        pending.clear()
                        break
                    except Exception as err:  # one item failed: record it, keep the rest
                        self.stats.failed += len(todo[key])
                        self.stats.failures += [f"item {i} ({prompts[i]!r}): {err}" for i in todo[key]]
                        continue
                    self.cache.put(key, answer)
                    self._count_usage(answer)
                    for i in todo[key]:
                        answers[i] = answer
        self.stats.wall_s += time.time() - start
        if fatal is not None:
            raise ValueError(str(fatal)) from fatal
        failed = [i for i, a in enumerate(answers) if a is None]
        if failed:
            raise VQAScoreError(
                f"{len(failed)} of {len(keys)} items could not be scored (answers for the others are cached in "
                f"{self.cache.path}; rerun to retry only the failures): " + "; ".join(self.stats.failures[:5])
            )
        results = []
        for answer, was_cached in zip(answers, cached, strict=True):
            assert answer is not None
            p_yes, p_no = answer["p_yes"], answer["p_no"]
            status = "ok" if p_yes + p_no > 0 else "no_yes_no"
            if opts.normalize:
                value = p_yes / (p_yes + p_no) if status == "ok" else 0.0
            else:
                value = p_yes
            self.stats.no_yes_no += status == "no_yes_no"
            results.append(
                {
                    "score": value,
                    "p_yes": p_yes,
                    "p_no": p_no,
                    "answer": answer["answer"],
                    "status": status,
                    "cached": was_cached,
                }
            )
        return results

    def _count_usage(self, answer: dict[str, Any]) -> None:
        s = self.stats
        s.answered += 1
        s.prompt_tokens += answer["prompt_tokens"]
        s.completion_tokens += answer["completion_tokens"]
        price = PRICES_PER_MTOK.get(self.options.model)
        s.est_cost_usd = (
            None if price is None else (s.prompt_tokens * price[0] + s.completion_tokens * price[1]) / 1e6
        )


def _parse(response: Any) -> dict[str, Any]:
    """Pull the first token's top logprobs and usage out of a chat completion; malformed -> Retryable."""
    try:
        choice = response.choices[0]
        first = choice.logprobs.content[0]
        top = [(t.token, float(t.logprob)) for t in (first.top_logprobs or [])]
        if first.token not in {t for t, _ in top}:
            top.append((first.token, float(first.logprob)))
        usage = response.usage
        prompt_tokens = int(usage.prompt_tokens) if usage else 0
        completion_tokens = int(usage.completion_tokens) if usage else 0
    except (AttributeError, IndexError, TypeError, ValueError) as err:
        raise Retryable(f"malformed response: no first-token logprobs ({err!r})") from err
    p_yes, p_no = yes_no_probs(top)
    return {
        "p_yes": p_yes,
        "p_no": p_no,
        "answer": first.token,
        "top_logprobs": top,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }
