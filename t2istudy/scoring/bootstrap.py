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
  :func:`mean_of_group_means_test_over_seeds_and_prompts` adds the two-sided p-value for "no difference"
  from the same resamples (the claims' test, adjusted for their family by :func:`holm`).

p-values here are percentile-bootstrap p-values: twice the smaller share of resampled means on either side
of 0, at most 1 (:func:`two_sided_p`). With B resamples the smallest nonzero value is 2 / B; 0 means no
resample crossed 0 (p < 1 / B). :func:`holm` adjusts a family of them (Holm 1979, step-down).

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


def two_sided_p(resampled: np.ndarray) -> float:
    """Two-sided percentile-bootstrap p-value for "the mean is 0": twice the smaller share of resampled
    means at or below / at or above 0, at most 1 (all resamples at exactly 0 give 1)."""
    return float(min(1.0, 2 * min((resampled <= 0).mean(), (resampled >= 0).mean())))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values of one family of calls, in the order given: the i-th smallest of
    m p-values is multiplied by (m - i + 1), then made non-decreasing along that order and capped at 1. A
    call is significant at level alpha when its adjusted p-value is below alpha (family-wise error rate
    <= alpha for any dependence between the calls). NaNs (calls not made) stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    made = np.flatnonzero(~np.isnan(p))
    order = made[np.argsort(p[made], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


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
    return float(low), float(high), two_sided_p(means)


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


def _group_means_over_seeds_and_prompts(
    matrices: list[np.ndarray], n_boot: int, seed: int, chunk: int = 1000
) -> np.ndarray:
    """``n_boot`` resampled means of per-group means (see below). The draws are made up front, the gather in
    chunks of ``chunk`` resamples so that memory stays ~chunk x seeds x prompts whatever ``n_boot`` is."""
    rng = np.random.default_rng(seed)
    s = matrices[0].shape[0]
    if any(m.shape[0] != s for m in matrices):
        raise ValueError(f"Every group needs the same seeds (rows); got {[m.shape[0] for m in matrices]}.")
    rows = rng.integers(0, s, size=(n_boot, s, 1))
    stats = np.zeros(n_boot)
    for matrix in matrices:
        cols = rng.integers(0, matrix.shape[1], size=(n_boot, 1, matrix.shape[1]))
        for start in range(0, n_boot, chunk):
            part = slice(start, start + chunk)
            stats[part] += np.nanmean(matrix[rows[part], cols[part]], axis=(1, 2)) / len(matrices)
    return stats


def mean_of_group_means_test_over_seeds_and_prompts(
    matrices: list[np.ndarray], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float, float]:
    """(mean, low, high, p) of the mean of per-group means, each group a [seed x prompt] matrix whose rows are
    the same seeds: the CI of :func:`mean_of_group_means_ci_over_seeds_and_prompts` and, from the same
    resamples, the two-sided p-value for "the mean is 0" (:func:`two_sided_p`). A resample draws the seeds
    once for every group (seed s of each group is the same training run) and prompts within each group, so
    every group keeps its weight of 1 / len(matrices) however many prompts it has. With one group it is
    :func:`mean_ci_over_seeds_and_prompts`, draw for draw.
    """
    stats = _group_means_over_seeds_and_prompts(matrices, n_boot, seed)
    alpha = (1 - level) / 2
    mean = float(np.mean([np.nanmean(m) for m in matrices]))
    low, high = float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
    return mean, low, high, two_sided_p(stats)


def mean_of_group_means_ci_over_seeds_and_prompts(
    matrices: list[np.ndarray], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): :func:`mean_of_group_means_test_over_seeds_and_prompts` without the p-value."""
    return mean_of_group_means_test_over_seeds_and_prompts(matrices, n_boot, seed, level)[:3]
