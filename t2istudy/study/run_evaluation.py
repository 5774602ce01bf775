"""Sampling and scoring a trained run: the run notebook's evaluation, and its redo under a new noise rule.

Why one function: the run notebook calls :func:`evaluate_run` after training, and :func:`resample_run`
calls the same on a finished run whose samples were drawn under another sampling-noise rule (the preset's
``sample_noise``, see :mod:`t2istudy.diffusion.sample`). Sampling is minutes and training is the run's
cost, so a grid's finished runs join a changed protocol without retraining. The results they replace are
kept under ``<run>/previous/<rule>/``; training time and the training's provenance stay in metrics.json.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from t2istudy.diffusion import sample, train_folder
from t2istudy.diffusion.model import get_preset
from t2istudy.scoring.scorers import get_scorer
from t2istudy.scoring.summaries import summarize
from t2istudy.study import run_lock, tiers
from t2istudy.study.provenance import provenance
from t2istudy.study.rescore import apply_to_runs, run_parameters
from t2istudy.study.run_folder import now, read_json, write_json, write_results, write_tier_results
from t2istudy.world import shapes_benchmark
from t2istudy.world.genai_bench import load_genai_bench

# metrics.json keys that an evaluation writes; everything else (training time, sizes, ...) is the training's
EVALUATION_KEYS = ("schema_version", "overall", "basic", "advanced", "skills", "tiers", "sample_seconds")
RESULT_FILES = ("metrics.json", "scores.csv", "scores_geneval.csv")


@dataclass
class Evaluation:
    table: pd.DataFrame  # per-prompt scores of the main benchmark (the held-out tier for shapes)
    summary: pd.DataFrame  # summarize(table)
    geneval: tuple[pd.DataFrame, pd.DataFrame] | None  # (scores, summary) of the GenEval-style tier
    sample_seconds: float
    n_prompts: int


def evaluate_run(
    train_dir: str | Path,
    out: str | Path,
    *,
    benchmark: str = "shapes",
    n_per_skill: int = 50,
    geneval_per_task: int = 50,
    benchmark_seed: int = 0,
    scorer: str = "judge",
    sampler: str = "ddim",
    sample_steps: int | None = None,
    guidance_scale: float | None = None,
    sample_seed: int = 0,
    prompt_upsampling: str | dict | None = None,
) -> Evaluation:
    """Sample the benchmark from ``train_dir``'s final weights into ``<out>/samples`` and score it; for the
    shapes benchmark also the GenEval-style tier (``geneval_per_task`` > 0)."""
    out = Path(out)
    if benchmark == "shapes":
        bench = shapes_benchmark.make_benchmark(n_per_skill=n_per_skill, seed=benchmark_seed)
    elif benchmark == "genai-bench":
        bench = load_genai_bench()
    else:
        raise ValueError(f"Unknown benchmark {benchmark!r}: use shapes or genai-bench.")
    sampling = dict(sampler=sampler, steps=sample_steps, guidance_scale=guidance_scale)
    t0 = time.perf_counter()
    images = sample.sample_run(
        train_dir,
        bench["prompt"].tolist(),
        seeds=[sample_seed],
        out_dir=out / "samples",
        prompt_upsampling=prompt_upsampling,
        **sampling,
    )
    table = get_scorer(scorer).score(images, bench)
    geneval = None
    if benchmark == "shapes" and geneval_per_task:
        geneval = tiers.evaluate_tiers(
            train_dir,
            {"geneval": geneval_per_task},
            out_dir=out,
            sample_seed=sample_seed,
            benchmark_seed=benchmark_seed,
            prompt_upsampling=prompt_upsampling,
            **sampling,
        )["geneval"]
    return Evaluation(table, summarize(table), geneval, time.perf_counter() - t0, len(bench))


def needs_resampling(run_dir: str | Path) -> tuple[str, str]:
    """(the rule its samples were drawn under, the rule its preset asks for); runs recorded before the rule
    existed were drawn under "shared"."""
    run_dir = Path(run_dir)
    drawn = read_json(run_dir / "metrics.json").get("sample_noise", "shared")
    return drawn, get_preset(run_parameters(run_dir)["preset"]).sample_noise


def resample_run(run_dir: str | Path) -> str:
    """Sample and score a finished run again under its preset's noise rule; returns what was done.

    Refuses, with the fix, a run scored by a paid judge (VQAScore: re-sampling would pay again) and a run
    whose trained weights are not on this machine (train/ is git-ignored).
    """
    run_dir = Path(run_dir)
    claimed = run_lock.claim(run_dir)  # one process per run: two re-samplers, or a runner, never collide
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
    params = run_parameters(run_dir)
    if params.get("scorer") != "judge":
        raise ValueError(
            f"{run_dir} is scored by {params.get('scorer')!r}, which may cost API calls: re-sampling would score "
            f"every image again. Rerun it on purpose (remove DONE, then `t2istudy grid run`) if that is wanted."
        )
    train_dir = Path(params.get("shared_train_dir") or run_dir / "train")
    if not train_folder.is_trained(train_dir):
        raise FileNotFoundError(
            f"{train_dir} holds no trained weights (final/): train/ is git-ignored, so re-sample on the machine "
            f"that trained the run, or rerun the run there (remove DONE, then `t2istudy grid run`)."
        )
    old = read_json(run_dir / "metrics.json")
    keep = run_dir / "previous" / drawn  # what the new results replace, never lost
    if not (keep / "metrics.json").is_file():  # a retry after a kill keeps the first attempt's originals
        keep.mkdir(parents=True, exist_ok=True)
        for name in RESULT_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, keep / name)
    ev = evaluate_run(
        train_dir,
        run_dir,
        **{
            k: params[k]
            for k in (
                "benchmark",
                "n_per_skill",
                "geneval_per_task",
                "benchmark_seed",
                "scorer",
                "sampler",
                "sample_steps",
                "guidance_scale",
                "sample_seed",
                "prompt_upsampling",
            )
        },
    )
    training = {k: v for k, v in old.items() if k not in EVALUATION_KEYS and k != "resampled"}
    write_results(
        run_dir,
        ev.table,
        ev.summary,
        {
            **training,
            "sample_seconds": round(ev.sample_seconds, 1),
            "sample_noise": drawn,  # until every file is written: a kill before that is redone on retry
            "resampled": {
                "at": now(),
                "from": drawn,
                "previous": str(keep.relative_to(run_dir)),
                **provenance(),
            },
        },
    )
    if ev.geneval:
        write_tier_results(run_dir, "geneval", *ev.geneval)
    new = {**read_json(run_dir / "metrics.json"), "sample_noise": wanted}
    write_json(run_dir / "metrics.json", new)
    parts = [f"held-out {old['overall']['mean']:.3f} -> {new['overall']['mean']:.3f}"]
    if "geneval" in old.get("tiers", {}) and "geneval" in new.get("tiers", {}):
        before, after = old["tiers"]["geneval"]["overall"]["mean"], new["tiers"]["geneval"]["overall"]["mean"]
        parts.append(f"GenEval-style {before:.3f} -> {after:.3f}")
    return f"re-sampled under {wanted!r} (was {drawn!r}) in {ev.sample_seconds:.0f} s: " + ", ".join(parts)


def resample_grid(root: str | Path, grid: str, only: list[str] | None = None, log=print) -> int:
    """:func:`resample_run` for every complete run of a grid (or those in ``only``); returns the refusals."""
    return apply_to_runs(root, grid, resample_run, only=only, log=log)
