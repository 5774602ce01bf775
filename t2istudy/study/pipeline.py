"""The default study: which notebooks run with which parameters, quick or full, and in what order.

    t2istudy study                the study on the latent preset (grids/small2.yaml): ~10 h on 2 CPU cores
    t2istudy study --grid small   the superseded cpu-small study (grids/small.yaml), the record in figures/
    t2istudy study --quick        a few-minute smoke run (grids/quick.yaml) that still writes every output

Where outputs go: the side notebooks (layer norms, judge validation, probe) do not depend on the grid and
write to ``figures/``; a grid's tables and figures go to ``figures/<grid>/``, except the cpu-small
record, which keeps the names it was published under (``figures/`` itself).

Order: the training grid, then the side notebooks (layer norms, judge validation, probe), then the two
analysis notebooks (per metric, and on the GenEval-style tier for a grid that asks for it). Each step is
a run directory with a DONE marker, so a second call continues where the first stopped; the analysis
always re-runs, since it reads whatever runs are complete. A failing step is reported and the others
still run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2istudy.study import grids, runner
from t2istudy.study.grids import DEFAULT_GRID
from t2istudy.study.paths import repo_file


@dataclass
class Step:
    """One step: a grid file (``grid``) or a single notebook (``notebook`` into ``out``)."""

    name: str
    grid: str | None = None
    notebook: str | None = None
    out: str | None = None  # run directory, relative to the runs root
    params: dict[str, Any] = field(default_factory=dict)
    always: bool = False  # re-run even when complete (analysis reads the latest runs)

    def describe(self, runs_dir: str | Path = "runs") -> str:
        if self.grid:
            return f"grid {self.grid}"
        params = {
            k: v.replace("{runs}", str(runs_dir)) if isinstance(v, str) else v for k, v in self.params.items()
        }
        return f"{self.notebook} -> {Path(runs_dir) / self.out} {params}"


RECORD_GRIDS = ("small",)  # superseded studies whose tables and figures stay at the top of figures/
# a grid whose encoders the study's probe (figures/probe) does not cover has its own sweep, related to its
# runs per skill: grids/scaling.yaml's two Qwen2.5 sizes (docs/study.md's command writes figures/probe_scaling)
GRID_PROBE_DIRS = {"scaling": "probe_scaling"}


def grid_figures_dir(grid: str, figures_dir: str | Path = "figures") -> str:
    """Where a grid's analysis writes: ``figures/<grid>``, or ``figures`` for a record grid."""
    return str(figures_dir) if grid in RECORD_GRIDS else str(Path(figures_dir) / grid)


def default_study(quick: bool = False, figures_dir: str = "figures", grid: str | None = None) -> list[Step]:
    """The study's steps. Quick: smallest settings everywhere, outputs under figures/quick/.
    ``grid`` (a name under grids/) picks the training grid of a full study; DEFAULT_GRID when None."""
    if quick and grid not in (None, "quick"):
        raise ValueError(f"--quick runs grids/quick.yaml; drop --quick to run grid {grid!r}.")
    if not quick and not repo_file(f"grids/{grid or DEFAULT_GRID}.yaml").exists():
        names = sorted(p.stem for p in repo_file("grids").glob("*.yaml"))
        raise ValueError(f"--grid {grid!r}: no grids/{grid}.yaml; grids are {names}.")
    tag = "quick" if quick else "full"
    grid = "quick" if quick else (grid or DEFAULT_GRID)
    figures_dir = str(Path(figures_dir) / "quick") if quick else figures_dir
    grid_dir = figures_dir if quick else grid_figures_dir(grid, figures_dir)
    layer_norms = {"encoders": ["smollm2-135m", "minilm-l6"], "n_prompts": 8} if quick else {"n_prompts": 128}
    return [
        Step("grid", grid=f"grids/{grid}.yaml"),
        Step(
            "layer-norms",
            notebook="notebooks/layer_norms.ipynb",
            out=f"layer_norms/{tag}",
            params={**layer_norms, "out_dir": f"{figures_dir}/layer_norms"},
        ),
        Step(
            "judge-validation",
            notebook="notebooks/judge_validation.ipynb",
            out=f"judge_validation/{tag}",
            params={
                **(QUICK_SIDE_PARAMS["judge_validation"] if quick else {"n_per_skill": 125}),
                "out_dir": f"{figures_dir}/judge_validation",
            },
        ),
        Step(
            "probe",
            notebook="notebooks/probe.ipynb",
            out=f"probe/{tag}",
            params={**(QUICK_SIDE_PARAMS["probe"] if quick else {}), "out_dir": f"{figures_dir}/probe"},
        ),
        *analysis_steps(grid, "score", grid_dir, figures_dir),
        *analysis_steps(grid, "fraction", f"{grid_dir}/fraction", figures_dir),
        *analysis_steps(grid, "above_floor", f"{grid_dir}/above_floor", figures_dir, with_figures=False),
        *(
            analysis_steps(grid, "score", grid_dir, figures_dir, tier="geneval")
            if _asks_geneval(grid)
            else []
        ),
    ]


def _asks_geneval(grid: str) -> bool:
    """Whether the grid file asks for the GenEval-style tier (``geneval_per_task > 0`` in a run's params).
    Why the grid file and not its runs: the steps are listed before the grid has run. A grid that leaves it
    to the run notebook's default (small.yaml, whose runs predate the tier) keeps its held-out analysis only."""
    specs = grids.load_grid(repo_file(f"grids/{grid}.yaml")).runs()
    return any(int(spec.params.get("geneval_per_task") or 0) > 0 for spec in specs)


def analysis_steps(
    grid: str,
    metric: str,
    out_dir: str,
    figures_dir: str,
    with_figures: bool = True,
    tier: str = "heldout",
) -> list[Step]:
    """Tables and figures from the runs, for one metric: the judge's verdict (``score``, into ``figures/``),
    its partial credit (``fraction``, into ``figures/fraction/``), which still separates arms when small
    models rarely satisfy every constraint of a prompt, and the partial credit above the shuffled-prompt
    floor (``above_floor``, tables only: a secondary view that removes what images earn by chance).
    ``tier="geneval"`` reads the GenEval-style tier; the notebooks write it to ``<out_dir>/geneval/``."""
    suffix = ("" if metric == "score" else f"-{metric}") + ("" if tier == "heldout" else f"-{tier}")
    tier_param = {} if tier == "heldout" else {"tier": tier}
    steps = [
        Step(
            f"analysis-tables{suffix}",
            notebook="notebooks/analysis_tables.ipynb",
            out=f"analysis/{grid}/tables{suffix}",
            params={"grid": grid, "figures_dir": out_dir, "metric": metric, **tier_param},
            always=True,
        ),
        Step(
            f"analysis-figures{suffix}",
            notebook="notebooks/analysis_figures.ipynb",
            out=f"analysis/{grid}/figures{suffix}",
            params={
                "grid": grid,
                "figures_dir": out_dir,
                "metric": metric,
                "layer_norms_csv": f"{figures_dir}/layer_norms/layer_norms.csv",
                "probe_dir": f"{figures_dir}/{GRID_PROBE_DIRS.get(grid, 'probe')}",
                **tier_param,
            },
            always=True,
        ),
    ]
    return steps if with_figures else steps[:1]


# Quick settings of the side notebooks, as their owners' parameters cells declare them.
QUICK_SIDE_PARAMS: dict[str, dict[str, Any]] = {
    "judge_validation": {"n_per_skill": 15, "noise_levels": [20], "blur_levels": [1.0]},
    "probe": {
        "encoders": ["smollm2-135m", "minilm-l6"],
        "representations": ["last", "norm_mean"],
        "seeds": [0],
        "steps": 50,
        "n_train": 200,
        "n_eval": 80,
        "shuffled": False,
        "random_init": [],
        "n_boot": 100,
    },
}


def run_study(
    quick: bool = False,
    runs_dir: str | Path = "runs",
    figures_dir: str | Path = "figures",
    workers: int = 1,
    skip: list[str] | None = None,
    log: Callable[[str], None] = print,
    grid: str | None = None,
    **launcher: Any,
) -> bool:
    """Execute every step not yet complete; prints progress and the total time. True when all succeeded.

    ``launcher`` (launcher, cluster, slurm) goes to ``runner.run_grid`` for the training grid; the side
    and analysis notebooks always run on this machine.
    """
    steps = default_study(quick, str(figures_dir), grid=grid)
    unknown = sorted(set(skip or []) - {s.name for s in steps})
    if unknown:
        raise ValueError(f"--skip names unknown steps {unknown}; steps are {[s.name for s in steps]}.")
    start = time.perf_counter()
    failures = []
    for i, step in enumerate(steps, 1):
        if step.name in (skip or []):
            log(f"== [{i}/{len(steps)}] {step.name}: skipped (--skip)")
            continue
        log(
            f"== [{i}/{len(steps)}] {step.name}: {step.describe(runs_dir)}  (study {time.perf_counter() - start:.0f} s)"
        )
        ok, message = _run_step(step, Path(runs_dir), workers, log, launcher)
        if not ok:
            failures.append(f"{step.name}: {message}")
        log(f"   {step.name}: {'ok' if ok else 'FAILED ' + message}")
    total = time.perf_counter() - start
    log(
        f"== study {'--quick ' if quick else ''}finished in {total:.0f} s ({total / 60:.1f} min); "
        f"{len(failures)} step(s) failed" + "".join(f"\n   {f}" for f in failures)
    )
    return not failures


def _run_step(step: Step, runs_dir: Path, workers: int, log, launcher: dict[str, Any]) -> tuple[bool, str]:
    if step.grid:
        results = runner.run_grid(
            repo_file(step.grid), runs_dir, workers=workers, log=lambda m: log("   " + m), **launcher
        )
        failed = [r.run_id for r in results if r.state == "failed"]
        return not failed, f"runs failed: {failed}" if failed else ""
    notebook = repo_file(step.notebook)
    if not notebook.exists():
        return False, f"{step.notebook} does not exist in this checkout"
    out = runs_dir / step.out
    params = {
        k: v.replace("{runs}", str(runs_dir)) if isinstance(v, str) else v for k, v in step.params.items()
    }
    if "runs_dir" in grids.notebook_parameters(notebook):
        params.setdefault("runs_dir", str(runs_dir))
    if step.always and out.exists():
        shutil.rmtree(out)
    result = runner.execute_notebook(notebook, out, params)
    return result.state in ("done", "skipped"), result.error
