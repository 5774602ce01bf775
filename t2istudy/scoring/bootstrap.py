"""The study's one bootstrap: percentile confidence intervals of a mean, named by what they resample.

- :func:`mean_ci_over_prompts`: one number per prompt (a single run's per-skill summary, a probe's
  seed-averaged accuracy). Resamples prompts.
- :func:`paired_ci_over_prompts`: per-prompt differences of two runs scored on the same prompts.
  Resamples prompts once for both runs; adds a two-sided bootstrap p-value for "no difference".
- :func:`mean_of_group_means_ci`: the mean of several groups' means (GenEval's overall over its six
  tasks). Resamples prompts within each group.
- :func:`mean_ci_over_seeds_and_prompts`: a [seed x prompt] matrix (one arm over its training runs, or
  the paired difference of two arms). Resamples seeds and prompts independently, so the CI covers
  run-to-run variance as well as the choice of prompts.
- :func:`mean_of_group_means_ci_over_seeds_and_prompts`: the mean of several groups' means, each group a
  [seed x prompt] matrix over the same seeds (GenEval's overall of an arm, or of two arms' difference).
  Resamples seeds once for all groups and prompts within each group.

Every variant draws from the generator it is given (or seeds one), so a summary is reproducible.
"""

from __future__ import annotations

import numpy as np


def _resampled_means(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of a 1-D array."""
    n = len(values)
    return values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)


def mean_ci_over_prompts(
    values: np.ndarray, rng: np.random.Generator, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """(low, high): percentile CI of the mean of per-prompt values; NaNs for no prompts."""
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(
        _resampled_means(np.asarray(values, dtype=float), rng, n_boot), [tail, 100 - tail]
    )
    return float(low), float(high)


def paired_ci_over_prompts(
    differences: np.ndarray, rng: np.random.Generator, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float, float]:
    """(low, high, p): CI of the mean per-prompt difference a - b, and the two-sided bootstrap p-value
    (twice the smaller share of resampled means on either side of 0, at most 1); NaNs for no prompts."""
    if len(differences) == 0:
        return float("nan"), float("nan"), float("nan")
    means = _resampled_means(np.asarray(differences, dtype=float), rng, n_boot)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean()))
    return float(low), float(high), float(p)


def mean_of_group_means_ci(
    groups: list[np.ndarray], rng: np.random.Generator, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """(low, high): CI of the mean of per-group means (GenEval's overall = the mean of its task means),
    resampling prompts within each group, so every group keeps its weight of 1 / len(groups)."""
    means = np.mean([_resampled_means(np.asarray(g, dtype=float), rng, n_boot) for g in groups], axis=0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci_over_seeds_and_prompts(
    matrix: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high) of a [seed x prompt] matrix, resampling seeds and prompts independently.

    NaN cells (a prompt one seed lacks) are left out of every mean.
    """
    rng = np.random.default_rng(seed)
    s, p = matrix.shape
    rows = rng.integers(0, s, size=(n_boot, s, 1))
    cols = rng.integers(0, p, size=(n_boot, 1, p))
    stats = np.nanmean(matrix[rows, cols], axis=(1, 2))
    alpha = (1 - level) / 2
    return float(np.nanmean(matrix)), float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def mean_of_group_means_ci_over_seeds_and_prompts(
    matrices: list[np.ndarray], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of per-group means, each group a [seed x prompt] matrix whose rows are
    the same seeds. A resample draws the seeds once for every group (seed s of each group is the same
    training run) and prompts within each group, so every group keeps its weight of 1 / len(matrices)
    however many prompts it has. With one group it is :func:`mean_ci_over_seeds_and_prompts`, draw for draw.
    """
    rng = np.random.default_rng(seed)
    s = matrices[0].shape[0]
    if any(m.shape[0] != s for m in matrices):
        raise ValueError(f"Every group needs the same seeds (rows); got {[m.shape[0] for m in matrices]}.")
    rows = rng.integers(0, s, size=(n_boot, s, 1))
    stats = np.zeros(n_boot)
    for matrix in matrices:
        cols = rng.integers(0, matrix.shape[1], size=(n_boot, 1, matrix.shape[1]))
        stats += np.nanmean(matrix[rows, cols], axis=(1, 2)) / len(matrices)
    alpha = (1 - level) / 2
    mean = float(np.mean([np.nanmean(m) for m in matrices]))
    return mean, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
