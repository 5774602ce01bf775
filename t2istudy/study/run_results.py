"""Reading runs back: a grid's status, and the metrics and per-prompt scores of its complete runs.

Torch-free (a test checks it), so that `t2istudy grid status` and the analysis notebooks load quickly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from t2istudy.diffusion import train_folder
from t2istudy.run_store import DONE, PARAMS, CorruptFile, read_json, run_problem, run_state
from t2istudy.run_store import METRICS as METRICS_FILE
from t2istudy.study.grids import Grid, expand_grid, load_grid, run_path
from t2istudy.study.provenance import FIELDS
from t2istudy.study.run_folder import check_schema, read_metrics, tier_stats
from t2istudy.study.tiers import SHAPES_TIERS, get_tier


def grid_status(grid: Grid | str | Path, root: str | Path = "runs") -> pd.DataFrame:
    """One row per run of the grid: state, held-out overall score with CI, the GenEval-style tier's
    overall (``geneval``, empty for a run scored before that tier), seconds, error.

    One run never fails the listing: a run whose files cannot be read is state ``corrupt`` with the
    error ``corrupt: <file>: why. Fix ...`` (a fix that keeps its weights); a DONE run whose metrics.json
    is missing is ``corrupt`` too (``incomplete: ...``), not done with a blank score.
    """
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    rows = []
    for spec in expand_grid(grid):
        out = run_path(root, spec)
        try:
            check_schema(out)
            rows.append(_status_row(out, spec.run_id))
        except CorruptFile as err:
            rows.append({"run_id": spec.run_id, "state": "corrupt", "error": _corrupt(out, err)})
        except ValueError as err:  # another schema version: named with its fix
            rows.append({"run_id": spec.run_id, "state": "corrupt", "error": str(err)})
    columns = ["run_id", "state", "overall", "ci_low", "ci_high", "geneval", "seconds", "progress", "error"]
    return pd.DataFrame(rows, columns=columns)


def noise_rules(table: pd.DataFrame) -> str | None:
    """For `grid status`: a line when the done runs were sampled under different noise rules, with the fix."""
    if "sample_noise" not in table:
        return None
    counts = table["sample_noise"].dropna().value_counts().sort_index()
    if len(counts) < 2:
        return None
    listed = ", ".join(f"{rule} {n}" for rule, n in counts.items())
    return (
        f"sample noise: {listed} runs: mixed, so the analysis refuses this grid. `t2istudy grid resample "
        f"<grid file>` samples them again under their preset's rule (trained weights reused)."
    )


def time_left(table: pd.DataFrame) -> str | None:
    """What the runs not yet done will take, planned from the done ones' recorded seconds (median, so a
    run slowed by a busy machine does not set the plan); None when nothing is left or nothing ran yet."""
    left = int((table["state"] != "done").sum())
    seconds = pd.to_numeric(table.loc[table["state"] == "done", "seconds"], errors="coerce").dropna()
    if left == 0 or seconds.empty:
        return None
    per_run = float(seconds.median())
    hours = left * per_run / 3600
    return (
        f"left: {left} runs x {per_run:,.0f} s (median of {len(seconds)} done) = {hours:.1f} worker-hours, "
        f"{hours / 2:.1f} h with --workers 2 at their pace"
    )


def _corrupt(out: Path, err: CorruptFile) -> str:
    try:
        name = err.path.relative_to(out)
    except ValueError:
        name = err.path
    return f"corrupt: {name}: {err}"


def training_progress(out: Path) -> str | None:
    """'step 650/800, last checkpoint-600' for an unfinished training run; None when none has started.

    Looks in the run directory and its subfolders (``<run>/train`` for the study run) for the folder that
    ``t2istudy.diffusion.train`` writes, so that ``grid status`` shows what a killed or failed run has kept:
    the next ``grid run`` resumes it from that checkpoint (a torn last log line is dropped with a warning).
    """
    for folder in (out, *sorted(p for p in out.glob("*") if p.is_dir())):
        if train_folder.is_training_folder(folder):
            return train_folder.training_progress(folder)
    return None


def _status_row(out: Path, run_id: str) -> dict[str, Any]:
    state = run_state(out, metrics=True)
    row: dict[str, Any] = {"run_id": run_id, "state": state}
    if state == "corrupt":
        row["error"] = run_problem(out, metrics=True)
    if state in ("failed", "running", "interrupted"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row["progress"] = training_progress(out)
        if caught:
            row["error"] = "; ".join(str(w.message) for w in caught)
    if state == "done":
        metrics = read_metrics(out)
        overall = next(iter(metrics["tiers"].values()), {}).get("overall", {})  # the run's first tier
        row.update(overall=overall.get("mean"), ci_low=overall.get("ci_low"), ci_high=overall.get("ci_high"))
        row["geneval"] = tier_stats(metrics, "geneval").get("overall", {}).get("mean")
        row["sample_noise"] = metrics.get("sample_noise", "shared")  # runs from before the rule: shared
        row["seconds"] = read_json(out / DONE).get("seconds")
    elif state == "failed":
        info = read_json(out / "FAILED")
        error = info.get("error", "")[:200]
        row.update(seconds=info.get("seconds"), error="; ".join(e for e in (error, row.get("error")) if e))
    return row


def find_runs(root: str | Path, grid: str | None = None, done_only: bool = True) -> list[Path]:
    """Run directories under ``root`` (optionally one grid's), complete ones only by default."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"No runs directory at {root}: run a grid first (t2istudy grid run ...).")
    pattern = f"{grid}/*/params.json" if grid else "*/*/params.json"
    found = []
    for d in sorted(p.parent for p in root.glob(pattern)):
        try:
            check_schema(d)  # another schema version raises: runs of two schemas are not mixed
        except CorruptFile as err:
            warnings.warn(f"skipping run {d}: {err}", stacklevel=2)
            continue
        if not done_only:
            found.append(d)
        elif (d / DONE).exists():
            problem = run_problem(d, metrics=_expects_metrics(d))
            if problem:  # not silently dropped: the analysis says which run is missing and why
                warnings.warn(f"skipping run {d}: {problem}", stacklevel=2)
            else:
                found.append(d)
    return found


def _expects_metrics(run_dir: Path) -> bool:
    """Whether the run is a grid's (the runner required its metrics.json), not a side notebook's."""
    if (run_dir.parent / "grid.json").is_file():
        return True
    try:
        return read_json(run_dir / DONE).get("metrics") is True
    except CorruptFile:
        return True


METRICS = {
    "score": "the scorer's verdict per prompt (judge: 1 if every constraint holds; VQAScore: P(yes))",
    "fraction": "share of the prompt's constraints that hold (judge only: partial credit)",
    "above_floor": "fraction minus the shuffled-prompt floor: the partial credit earned by following this "
    "prompt rather than by chance (judge only; secondary)",
}
TIERS = {name: get_tier(name).description for name in SHAPES_TIERS}  # the tiers the analysis compares


def load_metrics(
    root: str | Path, grid: str | None = None, metric: str = "score", tier: str = "heldout"
) -> pd.DataFrame:
    """Long table of complete runs: one row per (run, skill-or-group) with its parameters and stats.

    Columns: grid, run_id, every notebook parameter (encoder, strategy, seed, ...), tier, skill
    (a skill name or basic / advanced / overall; under ``tier="geneval"`` a task name or overall), n, mean,
    ci_low, ci_high, plus scalar extras. ``metric="fraction"`` recomputes the stats from each run's scores
    (the judge's partial credit), for when the all-or-nothing score sits at the floor; the GenEval-style
    tier's overall is then recomputed by its own rule, the mean of the task means.
    """
    _check_metric(metric)
    rows = []
    for out in tier_runs(root, grid, tier):
        try:
            record, metrics = read_json(out / PARAMS), read_metrics(out)
        except CorruptFile as err:
            warnings.warn(f"skipping run {out}: {err}", stacklevel=2)
            continue
        base = {"grid": record["grid"], "run_id": record["run_id"], **record.get("params", {}), "tier": tier}
        extras = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float, str, bool)) and k != "schema_version"
        }
        extras.setdefault("sample_noise", "shared")  # runs from before the rule was recorded
        for skill, values in _run_stats(out, metrics, metric, tier).items():
            rows.append({**base, **extras, "skill": skill, **values})
    table = pd.DataFrame(rows)
    check_same_noise_rule(table, per_grid=True)
    return table


def check_same_noise_rule(*tables: pd.DataFrame, per_grid: bool = False) -> None:
    """Refuse runs sampled under different noise rules: one shared draw per tier and one draw per prompt give
    different verdicts for the same model, so the arms would not be comparable. ``per_grid``: check each
    grid of one table (on load); otherwise a comparison across grids (upsampled against as-written prompts,
    recipes against small2's baseline runs)."""
    rules: dict[str, dict[str, set[str]]] = {}  # grid ("" across) -> rule -> its runs (or grids, across)
    for table in (t for t in tables if not t.empty):
        for (grid, rule), runs in table.groupby(["grid", "sample_noise"])["run_id"]:
            named = rules.setdefault(str(grid) if per_grid else "", {}).setdefault(str(rule), set())
            named.update(runs if per_grid else [str(grid)])
    for grid, by_rule in rules.items():
        if len(by_rule) > 1:
            what = f"The runs of grid {grid!r} were" if per_grid else "These grids were"
            listed = "; ".join(
                f"{rule}: {', '.join(sorted(ids)[:4])}{' ...' if len(ids) > 4 else ''}"
                for rule, ids in sorted(by_rule.items())
            )
            raise ValueError(
                f"{what} sampled under different noise rules ({listed}), so their verdicts are not "
                f"comparable. Re-sample the older runs under their preset's rule: `t2istudy grid resample "
                f"<grid file>` (reuses the trained weights)."
            )


def _run_stats(out: Path, metrics: dict[str, Any], metric: str, tier: str) -> dict[str, dict[str, Any]]:
    """{group or "overall": {n, mean, ci_low, ci_high}} of one run on one tier: metrics.json's own numbers
    for the verdict, recomputed from the per-prompt scores for the other metrics (by the tier's own rule)."""
    if metric == "score":
        return tier_stats(metrics, tier)
    table = _read_scores(out, metric, tier)
    if get_tier(tier).group_column == "skills":
        table["skills"] = [tuple(str(t).split("|")) for t in table["skills"]]  # as scores.csv joins them
    return get_tier(tier).summarize(table, column=metric).to_dict(orient="index")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; use one of {sorted(METRICS)}.")


def _has_tier(out: Path, tier: str) -> bool:
    """Whether a scored run has this tier: its per-prompt file and its entry in metrics.json's tiers."""
    if not (out / get_tier(tier).scores_file).exists():
        return False
    try:
        return tier in read_metrics(out)["tiers"]
    except CorruptFile:  # left out and named with the rest; `grid status` gives its fix
        return False


def tier_runs(root: str | Path, grid: str | None = None, tier: str = "heldout") -> list[Path]:
    """The complete, scored runs (with metrics.json; a side notebook's directory has none) that have
    ``tier``. Why loud: a tier's numbers over a silently smaller set of runs would compare unlike arms.
    Runs lacking it are named in a warning and left out; when every run lacks it, the error says so
    and how to add it."""
    get_tier(tier)  # an unknown one is refused, naming the tiers
    scored = [out for out in find_runs(root, grid) if (out / METRICS_FILE).exists()]
    have = [out for out in scored if _has_tier(out, tier)]
    lacking = [out for out in scored if out not in have]
    if not lacking:
        return have
    names = ", ".join(f"{p.parent.name}/{p.name}" for p in lacking[:5])
    names += f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
    if not have:
        raise ValueError(
            f"No complete run of {root}/{grid or '*'} has the {tier} tier ({names}): {_fix(tier)}"
        )
    warnings.warn(
        f"{len(lacking)} of {len(scored)} runs lack the {tier} tier and are left out of it: {names}; "
        f"{_fix(tier)}",
        stacklevel=3,
    )
    return have


def _fix(tier: str) -> str:
    """Why a run lacks a tier, and how to add it."""
    if tier == "heldout":
        return "their scores.csv is missing (written with metrics.json by the run notebook): rerun them."
    return (
        f"they were scored before the {tier} tier existed (no {get_tier(tier).scores_file} / "
        f'metrics.json["tiers"]["{tier}"]). Sample and judge it by rerunning them with geneval_per_task > 0 '
        f"(the run notebook's default; `t2istudy grid rescore` adds only the shuffled-prompt control, not "
        f"a tier whose images were never drawn), or analyse tier='heldout'."
    )


def _read_scores(out: Path, metric: str, tier: str = "heldout") -> pd.DataFrame:
    """One run's per-prompt scores on a tier; a tier grouped by another column (the GenEval-style tier's
    ``task``) has it copied into ``skills``, the column the analysis groups by, so every analysis function
    reads every tier."""
    path = out / get_tier(tier).scores_file
    table = pd.read_csv(path, dtype={"id": str})
    if get_tier(tier).group_column != "skills":
        table["skills"] = table[get_tier(tier).group_column]
    if metric == "above_floor":
        if "fraction_shuffled" not in table.columns:
            raise ValueError(
                f"{path} has no shuffled-prompt control (fraction_shuffled): add it from the run's "
                f"samples with `t2istudy grid rescore <grid file>`, or use metric='fraction'."
            )
        table["above_floor"] = table["fraction"] - table["fraction_shuffled"]
    if metric not in table.columns:
        raise ValueError(
            f"{path} has no {metric!r} column (VQAScore runs have only 'score'); use metric='score' for this grid."
        )
    return table


def load_scores(
    root: str | Path, grid: str | None = None, metric: str = "score", tier: str = "heldout"
) -> pd.DataFrame:
    """Per-prompt scores of complete runs, with each run's parameters as columns (for paired CIs).

    With ``metric="fraction"`` the ``score`` column holds the judge's share of constraints held (the
    verdict is kept as ``verdict``), so every analysis function works on it unchanged. Where the judge
    wrote its shuffled-prompt control, ``shuffled`` holds the same metric on the stand-in image.
    ``tier="geneval"`` reads ``scores_geneval.csv``, its ``task`` copied into ``skills``; the ``tier``
    column tells the analysis which overall rule applies.
    """
    _check_metric(metric)
    frames = []
    for out in tier_runs(root, grid, tier):
        record = read_json(out / PARAMS)
        try:
            table = _read_scores(out, metric, tier)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            warnings.warn(
                f"skipping run {out}: its {tier} scores cannot be read ({err}). Move that file and DONE aside "
                f"and run `t2istudy grid run <grid file> --only {out.name}`: it samples and scores again from "
                f"its trained weights.",
                stacklevel=2,
            )
            continue
        if f"{metric}_shuffled" in table.columns:  # the judge's shuffled-prompt control (the floor)
            table["shuffled"] = table[f"{metric}_shuffled"]
        if metric != "score":
            table = table.rename(columns={"score": "verdict"}).assign(score=table[metric])
        for key, value in {
            "grid": record["grid"],
            "run_id": record["run_id"],
            **record.get("params", {}),
            "tier": tier,
        }.items():
            table[key] = value
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["grid", "run_id", "id", "score", "tier"])
    return pd.concat(frames, ignore_index=True)


def load_provenance(root: str | Path, grid: str | None = None) -> pd.DataFrame:
    """One row per complete run: run_id and what it ran with (`provenance.FIELDS`; None where the run
    predates provenance records)."""
    rows = []
    for out in find_runs(root, grid):
        record = read_json(out / PARAMS)
        recorded = record.get("provenance") or {}
        rows.append({"run_id": record["run_id"], **{k: recorded.get(k) for k in FIELDS}})
    return pd.DataFrame(rows, columns=["run_id", *FIELDS])
