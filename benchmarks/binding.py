"""The binding harness (issue 36): the binding tasks per lever and training seed at a fixed small budget.

Why: binding (two objects, position, colour attribution) is where the paper finds the text encoder matters
most, and the study's small models sit at 0.08-0.19 there. A lever is judged here side by side with the
baseline in one invocation, on >= 2 training seeds, in minutes rather than a grid's hours: each (arm, seed)
trains one run of ``--steps`` steps on the study's protocol (the ladder's `climb`: one rung, the preset's
cosine decay spanning it), samples the GenEval-style tier (seen compositions, per-prompt draws) and
judges it. Reported per run: the three binding tasks and their mean, single object with its colour named
(`shapes_geneval.EXTRA_TASKS`) beside GenEval's colourless one, training machine-minutes, s/step and the
load. Rerunning skips finished runs, so a later invocation can add arms beside a finished baseline.

    # data levers against the baseline, two training seeds each
    .venv/bin/python benchmarks/binding.py --name data --seeds 0,1 --arms 'baseline={}' \\
        'named={"named_captions": true}' 'two50={"two_object_share": 0.5}' 'colourless50={"colourless_captions": 0.5}'
    # a preset variant or another preset: {"preset": {"unet": {...}}} or {"preset": "cpu-latent-v2"}
    # sampling levers on the trained runs of arm "baseline" (no training): guidance intervals in EDM sigma
    .venv/bin/python benchmarks/binding.py --name guidance --seeds 0,1 --arms 'baseline={}' \\
        --sampling 'cfg3={}' 'cfg3-mid={"guidance_interval": [0.3, 5.0]}'
    .venv/bin/python benchmarks/binding.py --plot-only --name data
    .venv/bin/python benchmarks/binding.py --name levers --combine flow guidance data-colourless25 check full-data \\
        --curve runs/sample_noise/results.csv   # and the limiting curve: binding against training steps
    # a lever at the preset's full budget beside the study grid's own runs of the same arm (no retraining)
    .venv/bin/python benchmarks/binding.py --name full-data --seeds 0,1 --steps 3000 --per_task 50 \\
        --arms 'two50c25={"two_object_share": 0.5, "colourless_captions": 0.25}' --reference runs/small2
    # arms of earlier invocations against one of them at equal steps (paired by seed and prompt, Holm)
    .venv/bin/python benchmarks/binding.py --name equal-steps --combine full-data6k preset6k --versus baseline

Writes ``figures/binding/<name>.{csv,md,png,pdf}``: one row per (arm, seed, steps, sampling), the Markdown
table of arm means over seeds, and the binding tasks against training machine-minutes per arm; and
``<name>-failures.{csv,md}``: why the binding tasks fail per arm (too few or too many objects, wrong shapes,
colours swapped, ...). Runs live under ``runs/binding/<arm>-<steps>-s<seed>/`` (the ladder's layout).
Machine-minutes = wall seconds x threads / 60 beside the load average; the caches a new pool needs are
built before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState

import t2istudy  # noqa: F401  (sets OMP_WAIT_POLICY before torch does work)
from t2istudy.diffusion.inputs import build_data, build_images, build_text
from t2istudy.diffusion.model import get_preset
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.reports.binding_tables import (
    failure_markdown,
    limiting_curve,
    markdown,
    plot,
    tidy,
)
from t2istudy.reports.ladder import climb, register_lever, register_saved, rung_dir
from t2istudy.run_store import METRICS, PARAMS, read_json
from t2istudy.scoring.bootstrap import holm
from t2istudy.scoring.failure_modes import classify, failure_shares
from t2istudy.scoring.paired_binding import BINDING, binding_difference
from t2istudy.scoring.summaries import summarize_geneval
from t2istudy.study.run import evaluate_tiers
from t2istudy.world.shapes_geneval import TASKS, make_geneval_tier


@dataclass
class Arm:
    """One lever: TrainOptions fields, and another preset (a name) or the base preset with changes."""

    name: str
    train_options: dict = field(default_factory=dict)
    preset: str | None = None
    preset_changes: dict = field(default_factory=dict)


def parse_arm(text: str) -> Arm:
    """``name=JSON``: TrainOptions fields, plus ``"preset"``: a preset name or a dict of preset changes."""
    name, sep, spec = text.partition("=")
    if not sep or not name or "/" in name:
        raise ValueError(f"Arm {text!r} is not name=JSON: write e.g. 'named={{\"named_captions\": true}}'.")
    values = json.loads(spec or "{}")
    preset = values.pop("preset", None)
    arm = Arm(
        name, values, preset if isinstance(preset, str) else None, preset if isinstance(preset, dict) else {}
    )
    TrainOptions(**arm.train_options)  # a misspelt or out-of-range field fails now, not after training
    return arm


def parse_sampling(text: str) -> tuple[str, dict]:
    """``name=JSON`` of `sample()` options (guidance_scale, guidance_interval, sampler, steps...)."""
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise ValueError(
            f"Sampling setting {text!r} is not name=JSON: write e.g. 'cfg5={{\"guidance_scale\": 5}}'."
        )
    options = json.loads(spec or "{}")
    if isinstance(options.get("guidance_interval"), list):
        options["guidance_interval"] = tuple(options["guidance_interval"])
    return name, options


def arm_preset(arm: Arm, base: str, folder: Path) -> str:
    """The preset the arm trains: its own name, or the base with changes registered for this process (and
    recorded in the folder's preset.json, as the ladder does, so sampling later can register it again)."""
    if not arm.preset_changes:
        return get_preset(arm.preset or base).name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preset.json").write_text(json.dumps({"base": base, "changes": arm.preset_changes}, indent=1))
    return register_lever(base, folder.name, arm.preset_changes)


def prepare_caches(opts: TrainOptions) -> float:
    """Build the pool's embedding and latent caches before the clock starts; returns the seconds it took
    (a new pool's ~8,000 captions take minutes to embed on one thread, once per pool and machine)."""
    t0 = time.time()
    opts = resolve_options(opts)
    preset = get_preset(opts.preset)
    state = PartialState(cpu=True)
    dataset = build_data(opts, preset)
    build_text(opts, dataset.captions, state)
    build_images(opts, preset, dataset, torch.device("cpu"), torch.float32, False)
    return time.time() - t0


def train_and_judge(arm: Arm, seed: int, steps: int, args) -> dict:
    """One run of the arm (the ladder's single rung), judged on the GenEval-style tier; its row."""
    folder = Path(args.root) / f"{arm.name}-{steps}-s{seed}"
    preset = arm_preset(arm, args.preset, folder)
    options = {"encoder": args.encoder, "strategy": args.strategy, "preset": preset, "seed": seed}
    prepare = prepare_caches(TrainOptions(**options, max_train_steps=steps, **arm.train_options))
    table = climb(
        folder,
        [steps],
        preset=preset,
        encoder=args.encoder,
        strategy=args.strategy,
        seed=seed,
        threads=1,
        sizes={"geneval": args.per_task},
        train_options=arm.train_options,
    )
    row = table[table["steps"] == steps].iloc[-1].to_dict()
    scores = pd.read_csv(rung_dir(folder, steps) / "scores_geneval.csv")
    return {**row, **partial_credit(scores), "prepare_seconds": round(prepare, 1), "sample_options": "{}"}


def partial_credit(scores: pd.DataFrame) -> dict:
    """The binding tasks' mean share of constraints met (the judge's ``fraction``): it moves before the
    all-or-nothing verdict does, which a short run may leave at 0."""
    return {
        f"fraction_{t}": round(float(scores.loc[scores["task"] == t, "fraction"].mean()), 4) for t in BINDING
    }


def resample(arm: Arm, seed: int, steps: int, name: str, options: dict, args) -> dict:
    """A sampling setting on the arm's trained run (no training); its row, cached in the run's folder."""
    folder = Path(args.root) / f"{arm.name}-{steps}-s{seed}"
    cached = folder / f"sampling-{name}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if not (folder / "ladder.csv").is_file():
        raise FileNotFoundError(f"{folder} holds no trained run: run the arm first (drop --sampling).")
    base = pd.read_csv(folder / "ladder.csv").iloc[-1].to_dict()
    if not options:  # the preset's own sampling: the run's judged rung already is that setting
        scores = pd.read_csv(rung_dir(folder, steps) / "scores_geneval.csv")
        return {**base, **partial_credit(scores), "sample_options": "{}"}
    register_saved(folder)
    t0 = time.time()
    out = folder / f"sampling-{name}"
    results = evaluate_tiers(folder / "train", {"geneval": args.per_task}, out_dir=out, **options)
    scores, summary = results["geneval"]
    scores.drop(columns=["skills"]).to_csv(out / "scores_geneval.csv", index=False)
    row = {k: v for k, v in base.items() if not k.startswith("geneval_")}
    row.update({f"geneval_{g}": round(float(v), 4) for g, v in summary["mean"].items()})
    row.update(partial_credit(scores))
    row.update(sample_seconds=round(time.time() - t0, 1), sample_load=os.getloadavg()[0])
    row["sample_options"] = json.dumps(
        {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    )
    cached.write_text(json.dumps(row, indent=1, default=float))
    return row


def reference_row(grid_dir: Path, seed: int, args) -> dict:
    """A study grid's own finished run of the harness's encoder and strategy (its preset at the grid's full
    budget) as a row beside the arms, judged on the harness's prompts (the tier's first ``--per_task`` per
    task: a larger tier starts with a smaller one's prompts); its training CPU time was not recorded, its
    commit and dirty flag were (``params.json`` -> ``provenance``, those of its training)."""
    run = grid_dir / f"{args.encoder}__{args.strategy}__seed{seed}"
    if not (run / "DONE").is_file() or not (run / "scores_geneval.csv").is_file():
        raise FileNotFoundError(f"{run} is no finished run with the GenEval-style tier: run its grid first.")
    metrics, trained = read_json(run / METRICS), read_json(run / PARAMS)
    wanted = make_geneval_tier(args.per_task, extra_tasks=()).set_index("id")["prompt"]
    scores = pd.read_csv(run / "scores_geneval.csv").set_index("id")
    missing = wanted.index.difference(scores.index)
    if len(missing) or not (scores.loc[wanted.index, "prompt"] == wanted).all():
        raise ValueError(
            f"{run} was judged on other GenEval-style prompts than --per_task {args.per_task} draws."
        )
    scores = scores.loc[wanted.index].reset_index()
    task_means = summarize_geneval(scores, n_boot=1)["mean"]  # GenEval's rule, as the runs' own summary
    summary = metrics.get("train_summary", {})
    return {
        **{f"geneval_{t}": float(task_means[t]) for t in (*TASKS, "overall")},
        **partial_credit(scores),
        "arm": f"{grid_dir.name} grid run",
        "seed": seed,
        "steps": metrics["max_train_steps"],
        "preset": trained["params"].get("preset", args.preset),
        **{key: trained.get("provenance", {}).get(key) for key in ("git_commit", "git_dirty")},
        "train_seconds": metrics["train_seconds"],
        "machine_minutes": metrics["train_seconds"] / 60,  # one thread a run (the grid's workers)
        "load_average": np.ravel(summary.get("load_average", np.nan))[0],  # the 1-minute one
        "train_cpu_seconds": np.nan,
        "sample_seconds": metrics.get("sample_seconds", np.nan),
        "sampling": "preset",
        "sample_options": "{}",
        "train_options": "{}",
    }


def judged_scores(arm: str, seed: int, steps: int, args) -> pd.DataFrame:
    """An arm's judged GenEval-style scores at its rung (the preset's own sampling)."""
    return pd.read_csv(rung_dir(Path(args.root) / f"{arm}-{steps}-s{seed}", steps) / "scores_geneval.csv")


def against_reference(arms: list[Arm], seeds: list[int], steps: int, args) -> pd.DataFrame:
    """Each arm's binding mean minus the --reference grid runs', paired by training seed and prompt
    (`scoring.paired_binding`: 95% CI and two-sided p from 20,000 resamples, as the analysis' differences)."""
    rows = []
    for arm in arms:
        runs = [Path(args.reference) / f"{args.encoder}__{args.strategy}__seed{seed}" for seed in seeds]
        found = binding_difference(
            [judged_scores(arm.name, seed, steps, args) for seed in seeds],
            [pd.read_csv(run / "scores_geneval.csv") for run in runs],
        )
        rows.append({"arm": arm.name, "reference": f"{Path(args.reference).name} grid run", "steps": steps,
                     "seeds": ",".join(map(str, seeds)), **found})  # fmt: skip
    return pd.DataFrame(rows).drop(columns="prompts")


def against_arm(table: pd.DataFrame, versus: str, args) -> pd.DataFrame:
    """Every other arm minus arm ``versus`` at the same steps, on the training seeds both ran (the preset's
    own sampling): equal steps, so equal cost where the arms' steps cost alike (the table's CPU s/step says).
    One family, so Holm's ``p_holm`` beside each p."""
    own = table[(table["sampling"] == "preset") & ~table["arm"].astype(str).str.endswith(" grid run")]
    theirs = own[own["arm"] == versus]
    if theirs.empty:
        raise SystemExit(
            f"--versus {versus}: no such arm in the table; name one of {sorted(set(own['arm']))}"
        )
    rows = []
    for (arm, steps), g in own[own["arm"] != versus].groupby(["arm", "steps"], sort=False):
        seeds = sorted(set(g["seed"]) & set(theirs.loc[theirs["steps"] == steps, "seed"]))
        if len(seeds) < 2:  # a lever is judged on >= 2 training seeds
            continue
        found = binding_difference(
            [judged_scores(arm, seed, steps, args) for seed in seeds],
            [judged_scores(versus, seed, steps, args) for seed in seeds],
        )
        rows.append(
            {"arm": arm, "versus": versus, "steps": steps, "seeds": ",".join(map(str, seeds)), **found}
        )
    paired = pd.DataFrame(rows)
    return paired.assign(p_holm=holm(paired["p"].to_numpy()).round(4)) if len(paired) else paired


def combined_against_reference(out_dir: Path, names: list[str]) -> pd.DataFrame:
    """The --reference comparisons of the combined invocations as one family: each row's p beside Holm's
    adjusted p over all of them (``p_holm``), since a lever picked from several compared against the same
    study runs must be corrected for the others. Empty when none of them had a --reference."""
    found = [out_dir / f"{name}-vs-reference.csv" for name in names]
    tables = [pd.read_csv(path) for path in found if path.is_file()]
    if not tables:
        return pd.DataFrame()
    paired = pd.concat(tables, ignore_index=True)
    return paired.assign(p_holm=holm(paired["p"].to_numpy()).round(4))


def scores_file(row: pd.Series, args) -> Path:
    """Where a table row's judged GenEval-style scores are: the arm's rung, a sampling setting's folder, or
    the --reference grid's run (``<grid> grid run`` rows, of --encoder/--strategy)."""
    if str(row["arm"]).endswith(" grid run"):
        grid = Path(args.reference or Path(args.root).parent / str(row["arm"]).removesuffix(" grid run"))
        return grid / f"{args.encoder}__{args.strategy}__seed{row['seed']}" / "scores_geneval.csv"
    folder = Path(args.root) / f"{row['arm']}-{row['steps']}-s{row['seed']}"
    if row["sample_options"] == "{}":  # the preset's own sampling: the judged rung
        return rung_dir(folder, int(row["steps"])) / "scores_geneval.csv"
    return folder / f"sampling-{row['sampling']}" / "scores_geneval.csv"


def failure_table(table: pd.DataFrame, args) -> pd.DataFrame:
    """Why the binding tasks fail, per (arm, sampling, steps), pooled over seeds and prompts: the share of
    each failure reason (`scoring.failure_modes`: too few / too many objects, wrong shapes, colours swapped,
    a colour leak, ...). A lever that lifts the verdict says which failure it removed; one that does not may
    still move them. A reference run counts only the prompts the arms at its steps were judged on."""
    reference = table["arm"].astype(str).str.endswith(" grid run")
    parts, judged = [], {}  # judged: steps -> the prompt ids the arms at those steps were judged on
    for _, row in pd.concat([table[~reference], table[reference]]).iterrows():  # the arms first
        scores = pd.read_csv(scores_file(row, args))
        ours = scores["task"].isin(BINDING)
        if (
            str(row["arm"]).endswith(" grid run") and row["steps"] in judged
        ):  # its larger tier: only the arms' prompts
            ours &= scores["id"].isin(judged[row["steps"]])
        keep = scores.loc[ours, ["id", "prompt", "task", "score", "detected"]]
        judged.setdefault(row["steps"], set()).update(keep["id"])
        parts.append(keep.assign(arm=row["arm"], sampling=row["sampling"], steps=row["steps"]))
    classified = classify(pd.concat(parts, ignore_index=True))
    return failure_shares(classified, by=("arm", "sampling", "steps")).round({"share": 4})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the invocation's table: figures/binding/<name>.*")
    parser.add_argument("--arms", nargs="+", default=["baseline={}"], help="name=JSON (see the docstring)")
    parser.add_argument(
        "--sampling", nargs="*", default=[], help="name=JSON of sample() options; no training"
    )
    parser.add_argument(
        "--seeds", default="0,1", help="training seeds, comma-separated (>= 2 to judge a lever)"
    )
    parser.add_argument("--steps", default="800", help="training steps per run; several: one run per budget")
    parser.add_argument("--per_task", type=int, default=30, help="GenEval-style prompts per task")
    parser.add_argument("--preset", default="cpu-latent-v", help="the study preset every arm starts from")
    parser.add_argument("--encoder", default="gemma3-270m", help="text encoder every run trains with")
    parser.add_argument("--strategy", default="norm_mean", help="layer-aggregation strategy of the encoder")
    parser.add_argument(
        "--root", default="runs/binding", help="folder the runs live under: <arm>-<steps>-s<seed>/"
    )
    parser.add_argument(
        "--figures", default="figures/binding", help="folder the tables and figures are written to"
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw figures/binding/<name>.* from its CSV"
    )
    parser.add_argument(
        "--curve",
        default=None,
        help="runs/sample_noise/results.csv: also draw figures/binding/limiting_curve.* (binding against steps)",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        default=None,
        help="earlier invocations' names: one table and figure of them all, and their --reference "
        "comparisons as one family (<name>-vs-reference.csv with Holm's p_holm)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="a study grid's runs folder (e.g. runs/small2): its runs of --encoder/--strategy at --seeds "
        "join the table as an arm, judged on the harness's prompts (a lever at full budget beside them)",
    )
    parser.add_argument(
        "--versus",
        default=None,
        help="an arm of the table (e.g. baseline): every other arm minus it at the same steps and seeds, "
        "paired by seed and prompt, as one Holm family (<name>-vs-<arm>.csv)",
    )
    args = parser.parse_args()
    out_dir = Path(args.figures)
    csv = out_dir / f"{args.name}.csv"
    if (
        args.combine
    ):  # every lever measured so far in one table and figure (a row once, where invocations share it)
        tables = [pd.read_csv(out_dir / f"{name}.csv") for name in args.combine]
        table = pd.concat(tables, ignore_index=True).drop_duplicates(["arm", "sampling", "seed", "steps"])
        table.to_csv(csv, index=False)
        paired = combined_against_reference(out_dir, args.combine)
        if len(paired):
            paired.to_csv(out_dir / f"{args.name}-vs-reference.csv", index=False)
            print(paired.to_markdown(index=False))
    elif args.plot_only:
        table = pd.read_csv(csv)
    else:
        arms = [parse_arm(a) for a in args.arms]
        samplings = [parse_sampling(s) for s in args.sampling]
        rows = []
        for steps in [int(s) for s in args.steps.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for arm in arms:  # arms interleaved within a seed: they share the machine's load alike
                    if samplings:
                        found = [(n, resample(arm, seed, steps, n, o, args)) for n, o in samplings]
                    else:
                        found = [("preset", train_and_judge(arm, seed, steps, args))]
                    rows += [
                        {**r, "sampling": n, "arm": arm.name, "train_options": json.dumps(arm.train_options)}
                        for n, r in found
                    ]
                    out_dir.mkdir(parents=True, exist_ok=True)
                    tidy(rows).to_csv(csv, index=False)  # as each run lands
        seeds = [int(s) for s in args.seeds.split(",")]
        if args.reference:
            rows += [reference_row(Path(args.reference), seed, args) for seed in seeds]
            paired = against_reference(arms, seeds, int(args.steps.split(",")[-1]), args)
            paired.to_csv(out_dir / f"{args.name}-vs-reference.csv", index=False)
            print(paired.to_markdown(index=False))
        table = tidy(rows)
        table.to_csv(csv, index=False)
    (out_dir / f"{args.name}.md").write_text(markdown(table))
    print(markdown(table))
    failures = failure_table(table, args)
    failures.to_csv(out_dir / f"{args.name}-failures.csv", index=False)
    (out_dir / f"{args.name}-failures.md").write_text(failure_markdown(failures))
    print(failure_markdown(failures))
    if args.versus:
        paired = against_arm(table, args.versus, args)
        paired.to_csv(out_dir / f"{args.name}-vs-{args.versus}.csv", index=False)
        print(paired.to_markdown(index=False))
    print("wrote", csv, *plot(table, out_dir, args.name))
    if args.curve:
        print("wrote", *limiting_curve(Path(args.curve), table, out_dir))


if __name__ == "__main__":
    main()
