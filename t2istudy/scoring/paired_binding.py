"""The binding mean of one set of runs minus another's, paired by training seed and prompt.

Why: the binding harness compares a lever with the study's own runs (``--reference``) and with another arm
at the same steps (``--versus``). Both are the same test, so it lives once: seed s of each side trained
on the same batches where the pools agree and drew the same per-prompt noise, so the difference is taken
per (seed, prompt) and bootstrapped over seeds and prompts (the study's two-level bootstrap), each binding
task one group, so the difference is that of the three task means' mean.
"""

from __future__ import annotations

import pandas as pd

from t2istudy.scoring.bootstrap import mean_of_group_means_test_over_seeds_and_prompts

BINDING = ("two_object", "position", "color_attr")


def binding_difference(
    ours: list[pd.DataFrame], theirs: list[pd.DataFrame], n_boot: int = 20000, seed: int = 0
) -> dict:
    """``ours[i]`` minus ``theirs[i]`` (judged GenEval-style scores: ``id``, ``task``, ``score``; item i is
    training seed i of both sides) on the binding prompts every one of them was judged on: the mean
    difference of the three task means, its 95% CI, the two-sided p and the prompts compared. A larger tier
    starts with a smaller one's prompts, so a 25-per-task run pairs with a 50-per-task one on its 25."""
    if not ours or len(ours) != len(theirs):
        raise ValueError(
            f"paired seeds: {len(ours)} against {len(theirs)} score tables; give one per seed each"
        )
    frames = [f.set_index("id") for f in (*ours, *theirs)]
    common = frames[0].index[frames[0]["task"].isin(BINDING)]
    for frame in frames[1:]:
        common = common.intersection(frame.index)
    if common.empty:
        raise ValueError("the two sides share no binding prompt: judge them on the same GenEval-style tier")
    table = pd.DataFrame(
        [o.loc[common, "score"].to_numpy() - t.loc[common, "score"].to_numpy() for o, t in
         zip(frames[: len(ours)], frames[len(ours):], strict=True)],
        columns=common,
    )  # fmt: skip  # [seed x prompt]
    task = frames[0].loc[common, "task"]
    groups = [table.loc[:, task.index[task == t]].to_numpy() for t in BINDING if (task == t).any()]
    mean, low, high, p = mean_of_group_means_test_over_seeds_and_prompts(groups, n_boot, seed)
    return {
        "binding_mean_diff": round(mean, 4),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
        "p": round(p, 4),
        "prompts": len(common),
    }
