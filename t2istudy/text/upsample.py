"""Prompt and caption upsampling: an instruct LLM rewrites short text into the style the model trained on.

Why: the paper rewrites training captions (to diversify them) and inference prompts (to match the
training distribution) with an LLM, and released systems ship the same step as an opt-in switch
(docs/upsampling.md names them). The known risk is a small rewriter dropping or inventing facts, which
:mod:`t2istudy.world.facts` measures.

One call, two backends:

    rewritten = upsample(prompts, style="descriptive", backend="local", model="smollm2-135m")
    rewritten = upsample(prompts, style="caption", backend="openai", model="gemma-2-9b-it",
                         base_url="http://localhost:8000/v1")    # any OpenAI-compatible chat server

- ``local``: any instruct model through transformers ``generate`` with its chat template, greedy, one
  prompt per forward pass (so an output never depends on which other prompts were missing from the cache).
- ``openai``: the ``openai`` client at temperature 0, with the key, retry and cache rules of
  :mod:`t2istudy.openai_client` (the same as VQAScore's).

Both cap the rewrite at ``max_new_tokens`` and keep every answer in an sqlite cache keyed by
(backend, model, template, max_new_tokens, prompt): a rerun generates nothing. The template (system
instruction + user wording) is stored in each cache row and in :func:`upsample_records`' output.
"""

from __future__ import annotations

import difflib
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from t2istudy.openai_client import (
    Fatal,
    Retryable,
    RetryPolicy,
    SqliteCache,
    call_classified,
    make_client,
    with_retries,
)
from t2istudy.text.encoders import converted_dir, resolve_encoder

# Instructions written for this project (docs/upsampling.md says whose practice each follows).
STYLES: dict[str, str] = {
    "descriptive": (
        "You turn a short image prompt into one richer sentence for an image generator. Keep every object "
        "with its exact colour and its exact number, keep every position (left, right, above, below, larger, "
        "smaller) and every 'no' or 'not'. Do not add objects, colours or numbers that the prompt does not "
        "state. Reply with the rewritten prompt only."
    ),
    "caption": (
        "You write image captions for a training set. Restate the prompt as a plain, factual caption of the "
        "picture it describes: name each object with its colour and how many there are, where they are "
        "relative to each other, and what is absent if the prompt says so. Invent nothing. Reply with the "
        "caption only, in one sentence."
    ),
    "literal": (
        "Rewrite the image prompt as one grammatical English sentence with exactly the same meaning. Change "
        "as few words as possible. Reply with the sentence only."
    ),
}
USER_TEMPLATE = "Prompt: {prompt}"
BACKENDS = ("local", "openai")
DEFAULT_CACHE = "cache/upsample.sqlite"
UPSAMPLED_PROMPTS = "upsampled_prompts.json"  # written beside samples (and in a training run's folder)


def template_text(style: str) -> str:
    """The full instruction template of a style (system message + user wording), as stored with outputs."""
    if style not in STYLES:
        raise ValueError(f"Unknown upsampling style {style!r}; choose one of {', '.join(STYLES)}.")
    return json.dumps({"system": STYLES[style], "user": USER_TEMPLATE}, ensure_ascii=False)


@dataclass
class UpsampleOptions:
    """Everything that configures a rewrite (the API key is deliberately not here)."""

    backend: str = "local"  # local | openai
    model: str = "smollm2-135m"  # local: a built-in name or a local HF directory; openai: the server's name
    style: str = "descriptive"
    max_new_tokens: int = 48  # the length cap, in generated tokens
    cache_path: str = DEFAULT_CACHE
    progress: bool = False
    # openai backend
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_workers: int = 8
    max_attempts: int = 6
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"Unknown upsampling backend {self.backend!r}; choose one of {', '.join(BACKENDS)}."
            )
        template_text(self.style)  # validates the style
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")

    @property
    def template(self) -> str:
        return template_text(self.style)

    def describe(self) -> dict[str, Any]:
        """What identifies a rewrite (for params.json / options.json); no paths, no key."""
        return {k: getattr(self, k) for k in ("backend", "model", "style", "max_new_tokens", "base_url")}


def parse_upsampling(spec: str | dict | UpsampleOptions | None, **defaults: Any) -> UpsampleOptions | None:
    """``None``/``""``/``"none"`` -> None; a dict, a JSON object, or ``"backend:model[:style]"`` -> options.

    The string form is what ``--caption_upsampling`` takes, e.g. ``local:smollm2-135m:caption``. The
    ``local`` backend's model is a built-in name or a folder (no ':'), so a third part must be a style; an
    ``openai`` model name may hold ':' (``llama3:8b``), so a last part is read as a style when it is one, and
    refused when it is one misspelt (``descriptve``) rather than sent as part of the model's name.
    """
    if spec is None or isinstance(spec, UpsampleOptions):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("", "none", "off", "false"):
            return None
        if text.startswith("{"):
            spec = json.loads(text)
        else:
            backend, _, rest = text.partition(":")
            model, _, style = rest.rpartition(":")
            if style not in STYLES:  # no style given: the whole rest is the model (it may contain ':')
                close = difflib.get_close_matches(style.lower(), STYLES, n=1, cutoff=0.75)
                if model and (backend == "local" or close):
                    raise ValueError(
                        f"Upsampling spec {spec!r}: unknown style {style!r}"
                        + (f" (did you mean {close[0]!r}?)" if close else "")
                        + f"; choose one of {', '.join(STYLES)}, as backend:model[:style]."
                    )
                model, style = rest, ""
            if not model:
                raise ValueError(
                    f"Upsampling spec {spec!r} names no model; write backend:model[:style], e.g. "
                    f"'local:smollm2-135m:caption' or 'openai:gemma-2-9b-it:descriptive'."
                )
            spec = {"backend": backend, "model": model} | ({"style": style} if style else {})
    known = {f.name for f in fields(UpsampleOptions)}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"Unknown upsampling options {sorted(unknown)}; known: {sorted(known)}.")
    return UpsampleOptions(**{**defaults, **spec})


# ---- cache --------------------------------------------------------------------------------------------------


class RewriteCache(SqliteCache):
    """One row per (backend, model, template, max_new_tokens, prompt); the template is stored in the row."""

    table = "rewrites"

    def __init__(self, path: str | Path) -> None:
        super().__init__(
            path,
            "CREATE TABLE IF NOT EXISTS rewrites (backend TEXT, model TEXT, template TEXT, max_new_tokens INTEGER,"
            " prompt TEXT, rewrite TEXT, raw TEXT, new_tokens INTEGER, created REAL,"
            " PRIMARY KEY (backend, model, template, max_new_tokens, prompt))",
            "Upsampling",
        )

    def get(self, key: tuple) -> str | None:
        with self.lock:
            row = self.db.execute(
                "SELECT rewrite FROM rewrites WHERE backend=? AND model=? AND template=? AND max_new_tokens=?"
                " AND prompt=?",
                key,
            ).fetchone()
        return None if row is None else row[0]

    def put(self, key: tuple, rewrite: str, raw: str, new_tokens: int) -> None:
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO rewrites VALUES (?,?,?,?,?,?,?,?,?)",
                (*key, rewrite, raw, new_tokens, time.time()),
            )
            self.db.commit()


# ---- cleaning -------------------------------------------------------------------------------------------


_LEAD_IN = re.compile(
    r"^(sure[,!.]?\s*)?((here('s| is)|rewritten|revised|caption|prompt)[^:\n]{0,40}:)\s*", re.I
)


def clean_rewrite(raw: str) -> str:
    """The rewrite as one line: a lead-in ("Here is the caption:") and wrapping quotes dropped, whitespace
    collapsed. Deterministic; an empty result is reported by the caller, never silently replaced."""
    text = raw.strip()
    text = _LEAD_IN.sub("", text).strip()
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    text = paragraphs[0] if paragraphs else ""
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


# ---- backends -------------------------------------------------------------------------------------------


class LocalRewriter:
    """An instruct model through transformers ``generate``: chat template, greedy, one prompt at a time."""

    def __init__(self, options: UpsampleOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = options
        location = causal_lm_dir(options.model)
        self.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"Model {options.model!r} has no chat template, so it is not an instruct model this rewriter "
                f"can prompt; use an instruct model (smollm2-135m, qwen2.5-0.5b, or a local *-Instruct folder)."
            )
        config, tie = _config_for_generation(location)
        self.model = AutoModelForCausalLM.from_pretrained(
            location, config=config, dtype=torch.float32, local_files_only=True
        ).eval()
        if tie:
            self.model.tie_weights()
        self.stop_ids = _stop_token_ids(self.tokenizer, config)
        self.generations = 0  # forward passes of generate(): what a cached rerun must keep at zero

    def rewrite(self, prompt: str) -> tuple[str, int]:
        """(raw text, number of new tokens) for one prompt."""
        import torch

        messages = [
            {"role": "system", "content": STYLES[self.options.style]},
            {"role": "user", "content": USER_TEMPLATE.format(prompt=prompt)},
        ]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = self.model.generate(
                **ids,
                max_new_tokens=self.options.max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=self.stop_ids,
                pad_token_id=self.stop_ids[0],
            )
        self.generations += 1
        new = out[0, ids["input_ids"].shape[1] :]
        new = new[~torch.isin(new, torch.tensor(self.stop_ids))]
        return self.tokenizer.decode(new, skip_special_tokens=True), int(new.numel())


def causal_lm_dir(model: str) -> str:
    """Where a local rewriter's weights are: the converted fp32 copy of a built-in GGUF model, or the
    directory / cached hub id that :func:`t2istudy.text.encoders.resolve_encoder` finds (nothing downloads)."""
    resolved = resolve_encoder(model)
    return str(converted_dir(resolved)) if resolved.gguf_file else resolved.location


def _config_for_generation(location: str):
    """The config, with the LM head tied to the embeddings when the folder has no LM head.

    The built-in encoders are converted once without their LM head (encoders.converted_dir keeps the base
    model only). SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct were trained with tied embeddings,
    so tying restores the head (the GGUF's separate output matrix is a quantized copy of the same weights).
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, local_files_only=True)
    path = Path(location)
    has_head = True
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "pt") as f:
            has_head = any(k.endswith("lm_head.weight") for k in f.keys())  # noqa: SIM118
    tie = not has_head
    if tie:
        config.tie_word_embeddings = True
    return config, tie


def _stop_token_ids(tokenizer, config) -> list[int]:
    """End-of-turn ids of the chat template plus the model's EOS (chat models stop at the turn's end)."""
    ids: list[int] = []
    for candidate in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        ids += candidate if isinstance(candidate, list) else [candidate]
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.append(tid)
    ids = list(dict.fromkeys(i for i in ids if i is not None))
    if not ids:
        raise ValueError("The rewriter's tokenizer names no end-of-sequence token; set tokenizer.eos_token.")
    return ids


class OpenAIRewriter:
    """Any OpenAI-compatible chat endpoint at temperature 0, with the shared key / retry rules."""

    def __init__(self, options: UpsampleOptions) -> None:
        self.options = options
        self._client = make_client(
            options.api_key_env, "Prompt upsampling", options.base_url, options.timeout_s
        )
        self.policy = RetryPolicy(options.max_attempts, options.backoff_s, options.backoff_max_s)
        self._lock = threading.Lock()
        self.http_requests = self.retries = 0

    def _ask(self, prompt: str) -> tuple[str, int]:
        with self._lock:
            self.http_requests += 1
        opts = self.options
        response = call_classified(
            lambda: self._client.chat.completions.create(
                model=opts.model,
                messages=[
                    {"role": "system", "content": STYLES[opts.style]},
                    {"role": "user", "content": USER_TEMPLATE.format(prompt=prompt)},
                ],
                temperature=0,
                max_tokens=opts.max_new_tokens,
            ),
            opts.api_key_env,
            opts.model,
        )
        try:
            text = response.choices[0].message.content
            usage = response.usage
            tokens = int(usage.completion_tokens) if usage else 0
        except (AttributeError, IndexError, TypeError, ValueError) as err:
            raise Retryable(f"malformed response: no message content ({err!r})") from err
        if not isinstance(text, str):
            raise Retryable("malformed response: the message has no text content")
        return text, tokens

    def _count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def rewrite(self, prompt: str) -> tuple[str, int]:
        return with_retries(lambda: self._ask(prompt), self.policy, self._count_retry)


# ---- the interface --------------------------------------------------------------------------------------


@dataclass
class UpsampleStats:
    prompts: int = 0
    cache_hits: int = 0
    generated: int = 0  # rewrites produced by the model in this call (0 on a cached rerun)
    empty: int = 0  # rewrites that came back empty: the original prompt is kept for those
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)


class Upsampler:
    """``Upsampler(backend=..., model=..., style=...).records(prompts)``; the model loads only on a cache miss."""

    def __init__(
        self,
        options: UpsampleOptions | None = None,
        rewriter: LocalRewriter | OpenAIRewriter | None = None,
        **overrides: Any,
    ) -> None:
        """``rewriter``: an already loaded backend to reuse (a local model is loaded once per process)."""
        self.options = replace(options or UpsampleOptions(), **overrides)
        self._rewriter = rewriter
        if rewriter is None and self.options.backend == "openai":  # the key is checked before any work
            self._rewriter = OpenAIRewriter(self.options)
        self.cache = RewriteCache(self.options.cache_path)
        self.stats = UpsampleStats()

    @property
    def rewriter(self) -> LocalRewriter | OpenAIRewriter:
        if self._rewriter is None:
            self._rewriter = LocalRewriter(self.options)
        return self._rewriter

    def _key(self, prompt: str) -> tuple:
        o = self.options
        return (o.backend, o.model, o.template, o.max_new_tokens, prompt)

    def cached(self, prompts: list[str]) -> list[str] | None:
        """The rewrites if every prompt's is cached, else None; generates nothing (no model loads)."""
        found = [self.cache.get(self._key(p)) for p in prompts]
        if any(text is None for text in found):
            return None
        return [text or p for text, p in zip(found, prompts, strict=True)]  # empty: kept, as in records()

    def records(self, prompts: list[str]) -> list[dict[str, Any]]:
        """One dict per prompt: original, rewritten, cached, and the options + template that made it."""
        start = time.time()
        prompts = list(prompts)
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("upsample() got an empty or non-text prompt; pass non-empty strings.")
        unique = list(dict.fromkeys(prompts))
        found = {p: self.cache.get(self._key(p)) for p in unique}
        missing = [p for p in unique if found[p] is None]
        self.stats.prompts += len(prompts)
        self.stats.cache_hits += sum(found[p] is not None for p in prompts)
        if missing:
            self._generate(missing, found)
        self.stats.wall_s += time.time() - start
        base = {**self.options.describe(), "template": self.options.template}
        out = []
        for p in prompts:
            text = found[p] or p  # an empty rewrite keeps the original (counted in stats.empty)
            out.append({"original": p, "rewritten": text, "cached": p not in missing, **base})
        return out

    def _generate(self, missing: list[str], found: dict[str, str | None]) -> None:
        def store(prompt: str, raw: str, tokens: int) -> None:
            text = clean_rewrite(raw)
            self.cache.put(self._key(prompt), text, raw, tokens)
            found[prompt] = text
            self.stats.generated += 1
            self.stats.empty += not text

        rewriter = self.rewriter
        if isinstance(rewriter, LocalRewriter):
            from tqdm.auto import tqdm

            for p in tqdm(missing, desc=f"upsample {self.options.model}", disable=not self.options.progress):
                store(p, *rewriter.rewrite(p))
            return
        with ThreadPoolExecutor(max_workers=max(1, self.options.max_workers)) as pool:
            futures = {p: pool.submit(rewriter.rewrite, p) for p in missing}
            for p, future in futures.items():  # in order, on this thread: the cache sees one writer
                try:
                    store(p, *future.result())
                except Exception as err:  # one prompt failed: keep the rest cached, report below
                    self.stats.failures.append(f"{p!r}: {err}")
                    if isinstance(err, Fatal):
                        raise ValueError(str(err)) from err
        if self.stats.failures:
            raise RuntimeError(
                f"{len(self.stats.failures)} of {len(missing)} prompts could not be rewritten (the others are "
                f"cached in {self.options.cache_path}; rerun to retry only those): "
                + "; ".join(self.stats.failures[:5])
            )


def upsample(
    prompts: list[str],
    style: str = "descriptive",
    backend: str = "local",
    model: str = "smollm2-135m",
    **options: Any,
) -> list[str]:
    """The rewritten prompts, in order (see the module docstring; ``options`` are :class:`UpsampleOptions`)."""
    upsampler = Upsampler(UpsampleOptions(backend=backend, model=model, style=style, **options))
    return [r["rewritten"] for r in upsampler.records(prompts)]


def upsample_records(prompts: list[str], options: UpsampleOptions | dict | str) -> dict[str, Any]:
    """The rewrites with everything needed to reproduce them (options, template), JSON-able.

    For writing beside samples or a training run: ``{"options", "template", "prompts": [{original,
    rewritten, cached}], "stats"}``.
    """
    parsed = parse_upsampling(options)
    if parsed is None:
        raise ValueError("upsample_records needs upsampling options, got none.")
    upsampler = Upsampler(parsed)
    rows = upsampler.records(prompts)
    return {
        "options": parsed.describe(),
        "template": parsed.template,
        "prompts": [{k: r[k] for k in ("original", "rewritten", "cached")} for r in rows],
        "stats": asdict(upsampler.stats),
    }


def write_upsampled(record: dict[str, Any], folder: Path) -> Path:
    """Write :func:`upsample_records`' output as ``<folder>/upsampled_prompts.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / UPSAMPLED_PROMPTS
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


class RewrittenText:
    """Wraps a text source (EmbeddingCache / OnlineText) so original captions are embedded as their rewrites."""

    def __init__(self, text: Any, rewrites: dict[str, str]) -> None:
        self.text, self.rewrites = text, rewrites

    def embed(self, captions: list[str]):
        return self.text.embed([self.rewrites.get(c, c) for c in captions])

    def null(self, batch: int = 1):
        return self.text.null(batch)
