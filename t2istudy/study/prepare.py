"""Fill a grid's embedding caches before its runs start: one encoder pass per (encoder, caption set) for
every strategy the grid compares, where each run would otherwise make its own pass.

A run builds the cache entry it needs on first use, so comparing four strategies costs four passes of the
LLM over the training captions (Gemma-3-270M: ~13 min each on 2 CPU cores; at paper scale, a pass over the
whole dataset per strategy). `t2istudy grid prepare` runs each encoder once and fills every missing entry
from the same forward pass; the runs then find their entries and never load the encoder for training.

It reads runs through their `RunConfig` (the run's own training options and tiers); runs of a notebook that
does not declare encoder and strategy are left alone. A run that samples with prompt upsampling embeds the rewrites: prepare
writes them first (one rewriter load for all runs), then their embedding entries.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from t2istudy.diffusion import inputs
from t2istudy.diffusion.model import get_preset
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.diffusion.sample import default_device
from t2istudy.run_store import run_state
from t2istudy.study import grid_checks, grids
from t2istudy.study.run_config import RunConfig, study_config
from t2istudy.text.aggregation import parse_strategy
from t2istudy.text.cache import EmbeddingCache, caption_hash
from t2istudy.text.upsample import Upsampler, parse_upsampling

# sample.sample_run embeds a tier's prompts with get_or_build's default batch size (chunk padding must match)
PROMPT_BATCH = inspect.signature(EmbeddingCache.get_or_build).parameters["batch_size"].default


@dataclass
class CacheRequest:
    """The strategies wanted for one (encoder, caption set) under one cache root."""

    encoder: str
    max_length: int | None
    cache_dir: str
    what: str  # "training captions" or "benchmark prompts", for the log
    captions: list[str]
    batch_size: int  # as the run would encode them: chunk padding must match for the same numbers
    strategies: list[str] = field(default_factory=list)
    wanted_by: dict[str, list[str]] = field(default_factory=dict)  # strategy -> ids of the runs using it

    def missing(self) -> list[str]:
        return [
            s
            for s in self.strategies
            if EmbeddingCache.find(self.cache_dir, self.encoder, s, self.captions, self.max_length) is None
        ]


def run_options(config: RunConfig) -> TrainOptions:
    """The resolved training options the run will train with."""
    return resolve_options(config.to_train_options())


class PrepareError(ValueError):
    """Some runs could not be prepared; the caches of the others were built. ``bad``: run id -> why."""

    def __init__(self, grid: str, bad: dict[str, str]):
        self.bad = dict(bad)
        super().__init__(
            f"[prepare {grid}] {len(bad)} run(s) could not be prepared; the other runs' caches were built:\n"
            + "\n".join(f"  {run_id}: {why}" for run_id, why in bad.items())
            + "\n  Fix those runs in the grid file (or leave them out with --only), then prepare again."
        )


def _record(bad: dict[str, str] | None, run_id: str, err: Exception) -> None:
    """Note a run's failure where failures are collected (``bad``), else let it raise."""
    if bad is None:
        raise err
    bad.setdefault(run_id, f"{type(err).__name__}: {err}")


def cache_requests(specs: list[grids.RunSpec], bad: dict[str, str] | None = None) -> list[CacheRequest]:
    """What the runs will look up in the cache: their training captions and their benchmark prompts.

    ``bad``: collect each run that cannot be read (run id -> why) and go on with the others; without it,
    the first such run raises."""
    requests: dict[tuple, CacheRequest] = {}
    captions_of: dict[tuple, list[str]] = {}  # one caption pool per data setting, built once
    prompts_of: dict[tuple, list[str]] = {}  # one benchmark per (n_per_skill, benchmark_seed), likewise

    def want(encoder, max_length, cache_dir, what, captions, batch_size, strategy, run_id):
        key = (encoder, max_length, str(cache_dir), caption_hash(captions), batch_size)
        request = requests.setdefault(
            key, CacheRequest(encoder, max_length, str(cache_dir), what, captions, batch_size)
        )
        if strategy not in request.strategies:
            request.strategies.append(strategy)
        request.wanted_by.setdefault(strategy, []).append(run_id)

    for spec in specs:
        try:
            _want_run(spec, want, captions_of, prompts_of)
        except Exception as err:  # noqa: BLE001 - one bad run must not cost the others their pass
            _record(bad, spec.run_id, err)
    return list(requests.values())


def _want_run(spec: grids.RunSpec, want, captions_of: dict, prompts_of: dict) -> None:
    """Ask ``want`` for every cache entry one run will look up."""
    config = study_config(spec)
    if config is None:
        return
    opts = run_options(config)
    if opts.text != "cache":
        return
    data_key = inputs.pool_key(opts)
    if data_key not in captions_of:
        captions_of[data_key] = list(inputs.build_data(opts, get_preset(opts.preset)).captions)
    strategy = str(parse_strategy(opts.strategy))
    want(
        opts.encoder,
        opts.max_length,
        opts.cache_dir,
        "training captions",
        captions_of[data_key],
        opts.encode_batch_size,
        strategy,
        spec.run_id,
    )
    upsampling = parse_upsampling(config.prompt_upsampling)
    for what, prompts in benchmark_prompts(config, prompts_of):
        if upsampling is not None:  # the run embeds the rewrites; known only once they are cached
            # one cache lookup per (rewriter, tier), shared by the runs; the tier is named by its prompts' hash
            key = ("rewritten", json.dumps(upsampling.describe(), sort_keys=True), caption_hash(prompts))
            if key not in prompts_of:
                prompts_of[key] = Upsampler(upsampling).cached(prompts)
            prompts = prompts_of[key]
            if prompts is None:
                continue
            what = f"{what}, rewritten"
        want(
            opts.encoder, opts.max_length, opts.cache_dir, what, prompts, PROMPT_BATCH, strategy, spec.run_id
        )


def benchmark_prompts(config: RunConfig, prompts_of: dict | None = None) -> list[tuple[str, list[str]]]:
    """(what, prompts) for each benchmark tier the run samples, in its order. ``prompts_of`` memoizes them."""
    prompts_of = {} if prompts_of is None else prompts_of
    out = []
    for tier in config.tiers():
        key = (tier.name, config.tier_size(tier), config.benchmark_seed)
        if key not in prompts_of:
            prompts_of[key] = config.tier_prompts(tier)["prompt"].tolist()
        out.append((f"{tier.name} prompts", prompts_of[key]))
    return out


def prepare_rewrites(specs: list[grids.RunSpec], log=print, bad: dict[str, str] | None = None) -> int:
    """Rewrite the benchmark prompts of every run that asks for ``prompt_upsampling``, once per rewriter,
    into the rewrite cache; returns how many prompts were rewritten. Runs side by side would otherwise each
    load the rewriter and generate the same rewrites (~2 s a prompt for qwen2.5-0.5b on one CPU thread), and
    the embedding entries of the rewrites can only be prepared once the rewrites exist."""
    wanted: dict[str, tuple[Any, list[str], list[str]]] = {}  # options -> (options, prompts, run ids)
    prompts_of: dict = {}
    for spec in specs:
        try:
            config = study_config(spec)
            upsampling = parse_upsampling(config.prompt_upsampling if config else None)
            if upsampling is None:
                continue
            key = json.dumps(upsampling.describe(), sort_keys=True)
            entry = wanted.setdefault(key, (upsampling, [], []))
            entry[1].extend(p for _, prompts in benchmark_prompts(config, prompts_of) for p in prompts)
            entry[2].append(spec.run_id)
        except Exception as err:  # noqa: BLE001 - one bad run must not cost the others their rewrites
            _record(bad, spec.run_id, err)
    generated = 0
    for upsampling, prompts, run_ids in wanted.values():
        upsampler = Upsampler(upsampling, progress=True)
        unique = list(dict.fromkeys(prompts))
        log(
            f"[prepare] rewriting {len(unique)} benchmark prompts with {upsampling.backend}:{upsampling.model} "
            f"({upsampling.style}; cached ones cost nothing)"
        )
        try:
            upsampler.records(unique)
        except Exception as err:  # noqa: BLE001 - the runs of other rewriters still get theirs
            for run_id in run_ids:
                _record(bad, run_id, err)
            continue
        generated += upsampler.stats.generated
    return generated


def prepare_images(specs: list[grids.RunSpec], log=print, bad: dict[str, str] | None = None) -> int:
    """Train each latent preset's autoencoder and fill its latent cache once, before parallel runs would
    each do it; returns how many image sides were prepared. ``bad``: as for :func:`cache_requests`."""
    done: set[tuple] = set()
    failed: dict[tuple, Exception] = {}  # one failure per image side, recorded for every run needing it
    for spec in specs:
        try:
            config = study_config(spec)
            if config is None:
                continue
            opts = run_options(config)
            preset = get_preset(opts.preset)
            key = (opts.vae_path, opts.latents, *inputs.pool_key(opts))
            if not preset.vae or key in done:
                continue
            if key in failed:
                raise failed[key]
            log(f"[prepare] {opts.preset}: autoencoder and latent cache ({opts.latents})")
            try:
                data = inputs.build_data(opts, preset)
                inputs.build_images(opts, preset, data, "cpu", torch.float32, progress=True)
            except Exception as err:
                failed[key] = err
                raise
            done.add(key)
        except Exception as err:  # noqa: BLE001 - one bad run must not cost the others their preparation
            _record(bad, spec.run_id, err)
    return len(done)


def runs_awaiting_build(specs: list[grids.RunSpec]) -> set[str]:
    """Ids of the runs that would build a cache entry themselves: the ones a parallel launch must keep
    from building the same entry twice at once (`runner.cache_waves`). A run that cannot be read is left
    out: it fails on its own."""
    return {
        run_id
        for request in cache_requests(specs, bad={})
        for strategy in request.missing()
        for run_id in request.wanted_by[strategy]
    }


def prepare_grid(
    grid: grids.Grid | str | Path,
    root: str | Path = "runs",
    only: list[str] | None = None,
    dry_run: bool = False,
    log=print,
) -> list[CacheRequest]:
    """Build every cache entry that the grid's incomplete runs will need, one encoder pass per request.

    A run that cannot be prepared (a bad option, an encoder that does not load) does not stop the others:
    every good run gets its entries, then :class:`PrepareError` names each bad run and why."""
    if not isinstance(grid, grids.Grid):
        grid = grids.load_grid(grid)
    specs = grids.select_runs(grids.expand_grid(grid), only)
    specs = [s for s in specs if run_state(grids.run_path(root, s)) != "done"]
    bad: dict[str, str] = {}
    for spec in specs:  # the same check as `grid run`'s preflight: a typo is named with its fix
        problems = grid_checks.option_problems(spec)
        if problems:
            bad[spec.run_id] = "; ".join(problems)
    specs = [s for s in specs if s.run_id not in bad]
    if not dry_run:
        prepare_images(specs, log, bad)
        prepare_rewrites(specs, log, bad)
    todo = [(r, missing) for r in cache_requests(specs, bad) if (missing := r.missing())]
    if not todo:
        log(f"[prepare {grid.name}] every cache entry the incomplete runs need exists")
    built = []
    for request, missing in todo:
        log(
            f"[prepare {grid.name}] {request.encoder}: {', '.join(missing)} on {len(set(request.captions))} "
            f"{request.what}, one pass" + (" (dry run)" if dry_run else "")
        )
        if not dry_run:
            try:
                EmbeddingCache.get_or_build_many(
                    request.cache_dir,
                    request.encoder,
                    missing,
                    request.captions,
                    max_length=request.max_length,
                    batch_size=request.batch_size,
                    device=default_device(),  # a GPU node's prepare encodes on its GPU
                )
            except Exception as err:  # noqa: BLE001 - the runs of other encoders still get their entries
                why = f"building the {request.encoder} cache for its {request.what} failed: {type(err).__name__}: {err}"
                for strategy in missing:
                    for run_id in request.wanted_by[strategy]:
                        bad.setdefault(run_id, why)
                continue
        built.append(request)
    if bad:
        raise PrepareError(grid.name, bad)
    return built
