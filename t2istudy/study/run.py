"""One study run as one function: train, sample and score every tier, write the record.

    config = RunConfig.from_params(params)      # t2istudy.study.run_config
    record = run(config, "runs/<grid>/<run-id>")

`notebooks/run.ipynb` is the page around this call (its parameters cell, then the samples and tables); the
runner executes it with papermill, claims the run's lock before and writes DONE after (`t2istudy.run_store`).
:func:`resample_run` reruns the evaluation of a finished run whose samples were drawn under another
sampling-noise rule (the preset's ``sample_noise``): training is the run's cost, sampling minutes, so a grid's
finished runs join a changed protocol without retraining; the results replaced are kept under
``<run>/previous/<rule>/``. The ladder and the benchmarks sample tiers of a trained model with
:func:`evaluate_tiers` and tune the guidance scale with :func:`tune_guidance`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from t2istudy import run_store
from t2istudy.diffusion import run_checks, sample, train, train_folder
from t2istudy.diffusion.model import get_preset
from t2istudy.run_store import METRICS, now, read_json
from t2istudy.scoring.scorers import get_scorer
from t2istudy.study import run_folder
from t2istudy.study.provenance import provenance
from t2istudy.study.rescore import apply_to_runs
from t2istudy.study.run_config import RunConfig
from t2istudy.study.tiers import Tier, get_tier, make_tier, make_validation_split

TierResult = tuple[pd.DataFrame, pd.DataFrame]  # (per-prompt scores, the tier's summary)
# metrics.json keys that an evaluation writes; everything else (training time, sizes, ...) is the training's
EVALUATION_KEYS = ("schema_version", "overall", "basic", "advanced", "skills", "tiers", "sample_seconds")


@dataclass
class RunRecord:
    """What :func:`run` wrote, for the notebook to show: every tier's scores and summary, the sample grid."""

    results: dict[str, TierResult]
    metrics: dict[str, Any]
    samples: Path  # the first tier's sample grid (grid.png)


def run(config: RunConfig, out_dir: str | Path) -> RunRecord:
    """Train (or resume, or reuse a shared model trained from the same options), sample and score every tier
    of ``config``, and write metrics.json and the per-prompt scores into ``out_dir``. DONE is not written here:
    whoever drives the run writes it last (the runner, after the executed notebook is saved)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_dir = config.train_dir(out)
    opts = config.to_train_options(train_dir)
    t0 = time.perf_counter()
    trained_here = not train_folder.is_trained(train_dir)  # False: a shared model reused
    if trained_here:
        if train_folder.complete_checkpoints(train_dir):
            opts.resume_from_checkpoint = "latest"
        train.train(opts)
    else:
        run_checks.check_reusable(train_dir, opts)  # a shared model must come from these very options
    train_seconds = time.perf_counter() - t0
    options = train_folder.read_options(train_dir)
    derived = options["derived"]
    summary_train = train_folder.read_final_summary(train_dir)
    if not config.keep_checkpoints:
        train_folder.delete_checkpoints(train_dir)
    print(f"trained in {train_seconds:.0f} s;", {k: derived[k] for k in ("input_scale_value", "token_rms")})
    t0 = time.perf_counter()
    results = evaluate(config, train_dir, out)
    preset = get_preset(config.preset)
    first = config.tiers()[0]
    run_folder.write_record(
        out,
        results,
        {
            "train_seconds": round(train_seconds, 1),
            "trained_here": trained_here,
            "sample_seconds": round(time.perf_counter() - t0, 1),
            "input_scale_value": derived["input_scale_value"],
            "token_rms": derived["token_rms"],
            "unet_parameters": derived["unet_parameters"],
            "conditioner_parameters": derived.get("conditioner_parameters"),  # concat recipes widen it
            "max_train_steps": options["max_train_steps"],
            "guidance_scale": config.guidance_scale
            if config.guidance_scale is not None
            else preset.guidance_scale,
            "sample_noise": preset.sample_noise,  # per_prompt: each prompt its own starting noise
            "n_prompts": len(results[first.name][0]),
            "train_summary": summary_train,
        },
    )
    return RunRecord(results, run_folder.read_metrics(out), out / "samples" / first.samples / "grid.png")


def evaluate(config: RunConfig, train_dir: str | Path, out: str | Path) -> dict[str, TierResult]:
    """Every tier of the run, in order: its prompts sampled from the final weights with the same noise for
    every arm (into ``<out>/samples/<tier.samples>``), scored, summarized by the tier's own rule."""
    return {
        tier.name: evaluate_tier(
            tier,
            train_dir,
            config.tier_prompts(tier),
            scorer=config.scorer,
            samples_dir=Path(out) / "samples" / tier.samples,
            sample_seed=config.sample_seed,
            **config.sampling(),
        )
        for tier in config.tiers()
    }


def evaluate_tier(
    tier: Tier,
    train_dir: str | Path,
    prompts: pd.DataFrame,
    *,
    scorer: str = "judge",
    samples_dir: str | Path | None = None,
    sample_seed: int = 0,
    **sample_options,
) -> TierResult:
    """(per-prompt table, summary) of one tier: sample ``prompts`` from ``train_dir``'s final weights (into
    ``samples_dir`` when given) and score them; ``sample_options`` pass to `sample.sample_run`."""
    images = sample.sample_run(
        train_dir, prompts["prompt"].tolist(), seeds=[sample_seed], out_dir=samples_dir, **sample_options
    )
    table = get_scorer(tier.scorer or scorer).score(images, prompts)
    return table, tier.summarize(table)


def evaluate_tiers(
    train_dir: str | Path,
    sizes: dict[str, int],
    *,
    out_dir: str | Path | None = None,
    sample_seed: int = 0,
    benchmark_seed: int = 0,
    **sample_options,
) -> dict[str, TierResult]:
    """{tier: (per-prompt judge table, summary)} for a trained model outside a study run (the ladder, the
    benchmarks). ``sizes``: prompts per task / skill, e.g. ``{"geneval": 50, "heldout": 125}``; samples go
    to ``<out_dir>/samples/<tier>/`` when ``out_dir`` is given."""
    return {
        name: evaluate_tier(
            get_tier(name),
            train_dir,
            make_tier(name, n, benchmark_seed),
            samples_dir=None if out_dir is None else Path(out_dir) / "samples" / name,
            sample_seed=sample_seed,
            **sample_options,
        )
        for name, n in sizes.items()
    }


def tune_guidance(
    train_dir: str | Path, scales: list[float], n: int = 200, p_colourless: float = 0.0, **sample_options
) -> pd.DataFrame:
    """The validation verdict at each guidance scale (rows: scale, mean, n); pick the best, then fix it.
    Tuned on training-distribution captions (`tiers.make_validation_split`), never on a benchmark tier."""
    bench = make_validation_split(n, p_colourless=p_colourless)
    rows = []
    for scale in scales:
        images = sample.sample_run(
            train_dir, bench["prompt"].tolist(), guidance_scale=scale, **sample_options
        )
        table = get_scorer("judge", shuffled_control=False).score(images, bench)
        rows.append(
            {
                "guidance_scale": scale,
                "verdict": float(table["score"].mean()),
                "fraction": float(table["fraction"].mean()),
                "n": len(table),
            }
        )
    return pd.DataFrame(rows)


def run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a finished run executed with: today's defaults under its recorded parameters."""
    return RunConfig.from_params(
        read_json(Path(run_dir) / run_store.PARAMS).get("params", {}), known_only=True
    )


def needs_resampling(run_dir: str | Path) -> tuple[str, str]:
    """(the rule its samples were drawn under, the rule its preset asks for); runs recorded before the rule
    existed were drawn under "shared"."""
    drawn = read_json(Path(run_dir) / METRICS).get("sample_noise", "shared")
    return drawn, get_preset(run_config(run_dir).preset).sample_noise


def resample_run(run_dir: str | Path) -> str:
    """Sample and score a finished run again under its preset's noise rule; returns what was done.

    Refuses, with the fix, a run scored by a paid judge (VQAScore: re-sampling would pay again) and a run
    whose trained weights are not on this machine (train/ is git-ignored).
    """
    run_dir = Path(run_dir)
    claimed = run_store.claim(run_dir)  # one process per run: two re-samplers, or a runner, never collide
    if claimed.lock is None:
        raise ValueError(f"{run_dir} is held by {claimed.holder.describe()}: not re-sampled here.")
    try:
        return _resample_claimed(run_dir)
    finally:
        claimed.lock.release()


def _resample_claimed(run_dir: Path) -> str:
    drawn, wanted = needs_resampling(run_dir)  # read under the lock: another process may have just done it
    if drawn == wanted:
        return f"sampled under {wanted!r} already"
    config = run_config(run_dir)
    if config.scorer != "judge":
        raise ValueError(
            f"{run_dir} is scored by {config.scorer!r}, which may cost API calls: re-sampling would score "
            f"every image again. Rerun it on purpose (remove DONE, then `t2istudy grid run`) if that is wanted."
        )
    train_dir = config.train_dir(run_dir)
    if not train_folder.is_trained(train_dir):
        raise FileNotFoundError(
            f"{train_dir} holds no trained weights (final/): train/ is git-ignored, so re-sample on the machine "
            f"that trained the run, or rerun the run there (remove DONE, then `t2istudy grid run`)."
        )
    old = run_folder.read_metrics(run_dir)
    keep = run_dir / "previous" / drawn  # what the new results replace, never lost
    if not (keep / METRICS).is_file():  # a retry after a kill keeps the first attempt's originals
        keep.mkdir(parents=True, exist_ok=True)
        for name in {METRICS, *(get_tier(t).scores_file for t in old["tiers"])}:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, keep / name)
    t0 = time.perf_counter()
    results = evaluate(config, train_dir, run_dir)
    seconds = time.perf_counter() - t0
    training = {k: v for k, v in old.items() if k not in EVALUATION_KEYS and k != "resampled"}
    resampled = {"at": now(), "from": drawn, "previous": str(keep.relative_to(run_dir)), **provenance()}
    extra = {**training, "sample_seconds": round(seconds, 1), "sample_noise": drawn, "resampled": resampled}
    run_folder.write_record(
        run_dir, results, extra
    )  # sample_noise stays the old rule until every file is written
    new = {**read_json(run_dir / METRICS), "sample_noise": wanted}
    run_store.write_json(run_dir / METRICS, new)
    changes = [
        f"{name} {old['tiers'][name]['overall']['mean']:.3f} -> {entry['overall']['mean']:.3f}"
        for name, entry in new["tiers"].items()
        if name in old["tiers"]
    ]
    return f"re-sampled under {wanted!r} (was {drawn!r}) in {seconds:.0f} s: " + ", ".join(changes)


def resample_grid(root: str | Path, grid: str, only: list[str] | None = None, log=print) -> int:
    """:func:`resample_run` for every complete run of a grid (or those in ``only``); returns the refusals."""
    return apply_to_runs(root, grid, resample_run, only=only, log=log)
