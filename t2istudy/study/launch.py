"""Multi-GPU SLURM jobs for a grid: each run is one submitit job that trains under ``accelerate launch`` on
all of its GPUs (across nodes where asked), then samples and scores in the same job.

Why a launcher of its own: a papermill notebook is one process, so a job that ran the run notebook reserved
8 GPUs and trained on one. Here the job's training phase is the training script under accelerate, one
process per GPU; the run notebook then finds the model trained (``train_folder.is_trained``) and only
samples (on the GPU, `t2istudy.diffusion.sample`) and scores. Everything but `run_job` is a pure function of
the run's parameters and the resources, so the plan (``--dry-run``), the commands and submitit's
parameters are tested on a machine without SLURM.

    jobs = plan_jobs(specs, "runs", Resources(gpus=8, nodes=2, partition="gpu"))
    print(format_plan(jobs))
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from unittest import mock

from submitit.slurm.slurm import SlurmJobEnvironment

from t2istudy import run_store
from t2istudy.diffusion import train_folder
from t2istudy.diffusion.options import TrainOptions
from t2istudy.run_store import run_state
from t2istudy.study.grids import RunSpec, run_path
from t2istudy.study.run_config import RunConfig
from t2istudy.study.runner import RunResult, execute_run

MAIN_PORT = 29500  # accelerate's default rendezvous port on the main node
LAUNCH_RECORD = "logs/launch.json"  # what the training phase ran, and how long it took


@dataclass(frozen=True)
class Resources:
    """What each job asks SLURM for: ``gpus`` per node on ``nodes`` nodes (one task per node, which starts
    one training process per GPU), ``cpus`` and ``mem_gb`` per node."""

    gpus: int = 1
    nodes: int = 1
    cpus: int = 8
    mem_gb: int = 64
    timeout_min: int = 240
    partition: str | None = None

    def __post_init__(self) -> None:
        for name in ("gpus", "nodes", "cpus", "mem_gb", "timeout_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1.")

    @property
    def processes(self) -> int:
        return self.gpus * self.nodes

    def describe(self) -> str:
        where = f", partition {self.partition}" if self.partition else ""
        return (
            f"{self.nodes} node(s) x {self.gpus} GPU(s) = {self.processes} training processes, {self.cpus} CPUs "
            f"and {self.mem_gb} GB per node, {self.timeout_min} min{where}"
        )


def executor_parameters(resources: Resources) -> dict[str, Any]:
    """submitit ``AutoExecutor.update_parameters`` keywords: one task per node (accelerate starts the
    per-GPU processes itself), every GPU and CPU of the node to that task."""
    partition = {"slurm_partition": resources.partition} if resources.partition else {}
    return {
        "timeout_min": resources.timeout_min,
        "nodes": resources.nodes,
        "tasks_per_node": 1,
        "gpus_per_node": resources.gpus,
        "cpus_per_task": resources.cpus,
        "mem_gb": resources.mem_gb,
        **partition,
    }


def train_options(spec: RunSpec, root: str | Path) -> TrainOptions:
    """The TrainOptions the run trains with (`RunConfig.to_train_options`, into its train folder)."""
    config = RunConfig.from_params(spec.params, known_only=True)
    return config.to_train_options(config.train_dir(run_path(root, spec).resolve()))


def train_flags(opts: TrainOptions) -> list[str]:
    """The training script's flags for ``opts``: every field that differs from its default, by name."""
    flags: list[str] = []
    for f in fields(TrainOptions):
        value = getattr(opts, f.name)
        if value != f.default:
            flags += [f"--{f.name}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def accelerate_command(
    flags: list[str],
    resources: Resources,
    *,
    machine_rank: int | str = 0,
    main_address: str | None = None,
    port: int = MAIN_PORT,
) -> list[str]:
    """``accelerate launch`` of the training script on every GPU of the job: ``--multi_gpu`` with one
    process per GPU, and for several nodes this node's rank and the main node's address (accelerate's
    static rendezvous). On a machine without GPUs the same command forms one gloo group on the CPU."""
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher) if launcher.exists() else "accelerate", "launch"]
    cmd += ["--num_processes", str(resources.processes), "--num_machines", str(resources.nodes)]
    if resources.processes > 1:
        cmd.append("--multi_gpu")
    if resources.nodes > 1:
        if main_address is None:
            raise ValueError(
                "A multi-node launch needs the main node's address: run it inside the SLURM job."
            )
        cmd += ["--machine_rank", str(machine_rank), "--main_process_ip", main_address]
        cmd += ["--main_process_port", str(port)]
    cmd += ["--dynamo_backend", "no", "-m", "t2istudy.diffusion.train", *flags]
    return cmd


def rendezvous(env: dict[str, str]) -> tuple[int, str]:
    """(this node's rank, the main node's host name) from SLURM's variables: SLURM_NODEID, and the first
    host of SLURM_JOB_NODELIST (expanded as submitit does: ``gpu[01-02]`` -> gpu01, gpu02)."""
    missing = [v for v in ("SLURM_NODEID", "SLURM_JOB_NODELIST") if v not in env]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not set: the multi-node training phase runs inside a SLURM job "
            "(t2istudy grid run --launcher slurm), where SLURM sets them."
        )
    with mock.patch.dict(
        os.environ, {"SLURM_JOB_NODELIST": env["SLURM_JOB_NODELIST"]}
    ):  # where submitit reads it
        hosts = SlurmJobEnvironment().hostnames
    return int(env["SLURM_NODEID"]), hosts[0]


def check_slurm_tools(cluster: str | None = "slurm") -> None:
    """One sentence with the fix when the SLURM commands are missing (rather than a submitit traceback)."""
    if cluster not in (None, "slurm"):
        return
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise ValueError(
            f"--launcher slurm needs {' and '.join(missing)} on PATH, and this machine has none: run the command "
            "on your cluster's login node, add --cluster local to try the jobs on this machine, or use "
            "--launcher local."
        )


@dataclass(frozen=True)
class JobPlan:
    """One job of the plan: the run, what it asks for, and the commands it runs in order."""

    run_id: str
    run_dir: str
    resources: Resources
    train_command: list[str]
    then: str  # the sampling and scoring phase, in words

    def describe(self) -> str:
        return (
            f"job {self.run_id}\n  resources: {self.resources.describe()}\n"
            f"  1. train: {shlex.join(self.train_command)}\n  2. {self.then}"
        )


def plan_jobs(specs: list[RunSpec], root: str | Path, resources: Resources) -> list[JobPlan]:
    """The jobs ``grid run --launcher slurm`` submits, one per run; multi-node commands show the values each
    node fills in from SLURM ($SLURM_NODEID, the first host of $SLURM_JOB_NODELIST)."""
    jobs = []
    for spec in specs:
        flags = train_flags(train_options(spec, root))
        multi = resources.nodes > 1
        cmd = accelerate_command(
            flags,
            resources,
            machine_rank="$SLURM_NODEID" if multi else 0,
            main_address="<first host of $SLURM_JOB_NODELIST>" if multi else None,
        )
        out = run_path(root, spec).resolve()
        then = (
            f"sample and score (node 0): papermill {spec.notebook} -> {out}/notebook.ipynb; it finds the model "
            "trained, samples on the job's first GPU and scores"
        )
        jobs.append(JobPlan(spec.run_id, str(out), resources, cmd, then))
    return jobs


def format_plan(jobs: list[JobPlan]) -> str:
    if not jobs:
        return "nothing to submit: every run is complete or running elsewhere"
    head = f"{len(jobs)} SLURM job(s), one per run, each {jobs[0].resources.describe()}"
    return "\n".join([head, *(job.describe() for job in jobs)])


def run_job(
    spec: RunSpec, root: str, expect: dict[str, int] | None, force: bool, resources: Resources
) -> RunResult:
    """What each job's task runs (one per node): the training phase under accelerate, then, on node 0 only,
    the run notebook (sampling and scoring; training is found done). A failed training phase is a failed run
    with accelerate's message; its checkpoints stay, and the next job resumes from them. Node 0 claims the
    run's lock before training and holds it to DONE, so a second job of the same run (a grid submitted
    twice) skips it instead of training into the same folder."""
    nodes = resources.nodes
    rank, address = rendezvous(dict(os.environ)) if nodes > 1 else (0, None)
    opts = train_options(spec, root)
    out = run_path(root, spec).resolve()
    claimed = None
    if rank == 0 and run_state(out, metrics=True) != "done":
        out.mkdir(parents=True, exist_ok=True)
        claimed = run_store.claim(out, force=force)
        if claimed.lock is None:
            holder = claimed.holder.describe() if claimed.holder else "another process"
            return RunResult(
                spec.run_id, "skipped", error=f"running elsewhere ({holder}); not run here", path=str(out)
            )
    try:
        if not train_folder.is_trained(opts.output_dir):
            failed = _train_phase(opts, resources, rank, address, out)
            if failed:
                return RunResult(spec.run_id, "failed", error=failed, path=str(out))
        if rank != 0:
            return RunResult(
                spec.run_id, "skipped", error=f"node {rank}: trained; node 0 samples", path=str(out)
            )
        return execute_run(spec, root, expect=expect, force=force, claimed=claimed)
    finally:
        if claimed is not None and claimed.lock is not None:
            claimed.lock.release()  # execute_run released it already unless it returned early


def _train_phase(opts: TrainOptions, resources: Resources, rank: int, address: str | None, out: Path) -> str:
    """The training phase under accelerate (resuming from the last complete checkpoint); "" when it
    succeeded, else accelerate's last line. Node 0 records the command and its stderr in the run folder."""
    if train_folder.complete_checkpoints(opts.output_dir):
        opts.resume_from_checkpoint = "latest"
    cmd = accelerate_command(train_flags(opts), resources, machine_rank=rank, main_address=address)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if rank == 0:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        record = {
            "command": cmd,
            "seconds": round(time.perf_counter() - start, 1),
            "returncode": done.returncode,
        }
        (out / LAUNCH_RECORD).write_text(json.dumps({**record, "resources": asdict(resources)}, indent=1))
        (out / "logs" / "train_stderr.txt").write_text(done.stderr)
    if done.returncode == 0:
        return ""
    return f"training phase failed: {(done.stderr.strip().splitlines()[-1:] or ['no message'])[0]}"


def job_function(resources: Resources):
    """`run_job` with these resources, as `runner.run_grid(job=...)` submits it (picklable: a partial of a
    module-level function)."""
    return functools.partial(run_job, resources=resources)
