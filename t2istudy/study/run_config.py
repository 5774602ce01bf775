"""A study run's configuration: built once from a grid's parameters plus defaults, read by everything.

Why one object: the run (`t2istudy.study.run.run`), `grid prepare` (which caches what the run will embed),
the grid checks (which refuse a bad option before any kernel starts), `grid rescore` and `grid resample` all
need the same answer to "what does this run train and evaluate". They all ask :class:`RunConfig`:

    RunConfig.from_params(spec.params)     the grid's values over the defaults below (a typo is refused)
    config.to_train_options(train_dir)     -> TrainOptions: the one place parameters become options
    config.tiers(), config.tier_prompts()  the evaluation plan: which tiers, their prompts
    config.sampling()                      how every tier is sampled (sampler, steps, guidance, upsampling)

`notebooks/run.ipynb`'s parameters cell mirrors these defaults (a test checks that they agree); a new run
setting is one field here, one line in that cell, and its use in `to_train_options`, `sampling` or `run`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from t2istudy.diffusion.model import get_preset
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.study.grids import RunSpec, notebook_parameters
from t2istudy.study.tiers import BENCHMARKS, TIERS, Tier
from t2istudy.text.aggregation import parse_strategy
from t2istudy.text.upsample import parse_upsampling

SET_BY_RUN = ("output_dir", "report_to", "progress")  # TrainOptions fields `to_train_options()` sets itself


@dataclass
class RunConfig:
    """Every setting of one study run (an arm x seed), with its default."""

    encoder: str = "gemma3-270m"  # t2istudy.text.encoders.list_encoders(), a local HF folder or a .gguf file
    strategy: str = "norm_mean"  # the aggregation grammar (t2istudy.text.aggregation)
    preset: str = "cpu-small"  # t2istudy.diffusion.model.PRESETS
    seed: int = 0  # training seed: batches, noise, dropout
    max_train_steps: int | None = None  # None: the preset default
    input_scale: str = "rms"  # rms | none (ablation)
    train_options: dict[str, Any] = field(default_factory=dict)  # any other TrainOptions field
    benchmark: str = "shapes"  # shapes (procedural world, pixel judge) | genai-bench (VQAScore)
    n_per_skill: int = 50  # held-out tier prompts per skill
    geneval_per_task: int = 50  # GenEval-style tier prompts per task (0 skips the tier)
    benchmark_seed: int = 0
    scorer: str = "judge"  # judge | vqascore (the GenEval-style tier is always judged)
    sampler: str = "ddim"  # ddim | dpm++
    sample_steps: int | None = None  # None: the preset default
    guidance_scale: float | None = None  # None: the preset default (tuned once per preset)
    sample_seed: int = 0  # the same sampling noise for every arm
    prompt_upsampling: str | dict | None = None  # None, or "backend:model[:style]" (docs/upsampling.md)
    keep_checkpoints: bool = False  # False: delete training checkpoints once final weights exist
    shared_train_dir: str = ""  # empty: train into <out_dir>/train; a folder: train there once, reuse it

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, known_only: bool = False) -> RunConfig:
        """The defaults overridden by ``params`` (a grid run's, or params.json's). A name that is not a
        setting is refused with the closest one; ``known_only``: ignore other names (a notebook's globals)."""
        names = cls.names()
        unknown = sorted(k for k in params if k not in names and k != "out_dir")
        if unknown and not known_only:
            close = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
            hints = ", ".join(
                f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items()
            )
            raise ValueError(
                f"{hints} not a run setting; the settings are RunConfig's fields: {', '.join(names)}."
            )
        values = {k: v for k, v in params.items() if k in names}
        values["train_options"] = dict(values.get("train_options") or {})
        return cls(**values)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def train_dir(self, out_dir: str | Path) -> Path:
        return Path(self.shared_train_dir) if self.shared_train_dir else Path(out_dir) / "train"

    def to_train_options(self, output_dir: str | Path | None = None) -> TrainOptions:
        """The training options of this run (unresolved: `resolve_options` fills the preset's defaults)."""
        return TrainOptions(
            encoder=self.encoder,
            strategy=self.strategy,
            preset=self.preset,
            seed=self.seed,
            max_train_steps=self.max_train_steps,
            input_scale=self.input_scale,
            output_dir=None if output_dir is None else str(output_dir),
            report_to="none",
            progress=False,
            **self.train_options,
        )

    def tiers(self) -> list[Tier]:
        """The benchmark tiers this run samples and scores, in order (a tier of size 0 is skipped)."""
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"Unknown benchmark {self.benchmark!r}: use one of {', '.join(BENCHMARKS)}.")
        return [
            TIERS[n] for n in BENCHMARKS[self.benchmark] if TIERS[n].size is None or self.tier_size(TIERS[n])
        ]

    def tier_size(self, tier: Tier) -> int | None:
        return None if tier.size is None else int(getattr(self, tier.size) or 0)

    def tier_prompts(self, tier: Tier) -> pd.DataFrame:
        """The tier's prompts for this run: the one place a tier's prompt source is called."""
        return _prompts(tier.name, self.tier_size(tier), int(self.benchmark_seed)).copy()

    def sampling(self) -> dict[str, Any]:
        """`sample.sample_run` keyword arguments shared by every tier."""
        return {
            "sampler": self.sampler,
            "steps": self.sample_steps,
            "guidance_scale": self.guidance_scale,
            "prompt_upsampling": self.prompt_upsampling,
        }

    def check(self) -> None:
        """Refuse, naming the setting, what would fail only after training: strategy, preset, upsampling,
        benchmark and tier sizes (the training options: :meth:`option_problems`, listed all at once)."""
        parse_strategy(self.strategy)
        get_preset(self.preset)
        parse_upsampling(self.prompt_upsampling)
        for tier in self.tiers():
            try:
                self.tier_prompts(tier)
            except ValueError as err:
                raise ValueError(f"{tier.size}={self.tier_size(tier)}: {err}") from err

    def option_problems(self) -> list[str]:
        """What is wrong with ``train_options`` (names, types, values), as the run would build its options."""
        given = self.train_options
        if not isinstance(given, dict):
            return [f"train_options must be a mapping of option name -> value, got {given!r}"]
        hints = typing.get_type_hints(TrainOptions)
        problems = []
        for name, value in given.items():
            if name not in hints:
                close = difflib.get_close_matches(str(name), list(hints), n=1, cutoff=0.6)
                hint = (
                    f"did you mean {close[0]!r}?" if close else "see t2istudy.diffusion.options.TrainOptions"
                )
                problems.append(f"train_options.{name} is not a training option ({hint})")
            elif name in self.names():
                problems.append(
                    f"train_options.{name}: set it as the notebook parameter {name!r} instead (the run passes "
                    f"that one to the training options itself)"
                )
            elif name in SET_BY_RUN:
                problems.append(f"train_options.{name}: the run sets it itself; drop it")
            elif (problem := _type_problem(value, hints[name])) is not None:
                problems.append(f"train_options.{name}: {problem}")
        if problems:
            return problems
        try:  # the values, resolved and validated as the run would (presets, choices, ranges)
            resolve_options(self.to_train_options())
        except (ValueError, TypeError) as err:
            return [f"train_options: {err}"]
        return []


def study_config(spec: RunSpec) -> RunConfig | None:
    """The run's configuration when its notebook is a study run's (it declares encoder and strategy);
    None for another notebook's run (a side notebook, a test's stand-in)."""
    declared = notebook_parameters(spec.notebook)
    if not {"encoder", "strategy"} <= declared.keys():
        return None
    return RunConfig.from_params(spec.params, known_only=True)


@functools.cache
def _prompts(tier: str, size: int | None, seed: int) -> pd.DataFrame:
    """Built once per process: prepare and the checks ask for the same tiers for every run of a grid."""
    return TIERS[tier].make_prompts(size, seed)


def _type_problem(value: Any, hint: Any) -> str | None:
    """Numbers and flags only: a YAML value of the wrong kind ('1e-3' is a string in YAML 1.1)."""
    allowed = set(typing.get_args(hint)) or {hint}
    if value is None:
        return None if type(None) in allowed else "must not be null"
    if bool in allowed:
        return (
            None if isinstance(value, bool) else f"{value!r} is a {type(value).__name__}, expected true/false"
        )
    wants = {t for t in allowed if t in (int, float)}
    if not wants:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fix = " (YAML reads 1e-3 as a string: write 1.0e-3)" if isinstance(value, str) else ""
        return f"{value!r} is a {type(value).__name__}, expected a number{fix}"
    if wants == {int} and isinstance(value, float) and not value.is_integer():
        return f"{value!r} must be a whole number"
    return None
