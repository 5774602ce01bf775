"""The SLURM launcher (t2istudy.study.launch): the plan, the accelerate commands and submitit's parameters,
and the training phase's command run for real as a 2-process gloo group on cpu-tiny-latent, which must give
the same steps as 1 process (latent noise is drawn per image, not per process slice)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import build_tiny_cache, tiny_train_options

from t2istudy.diffusion.autoencoder import RECIPES, build_autoencoder
from t2istudy.diffusion.checkpoint import final_weights
from t2istudy.diffusion.train import train
from t2istudy.diffusion.train_folder import read_train_log
from t2istudy.study import launch
from t2istudy.study.grids import RunSpec

SPEC = RunSpec(
    "g",
    "gemma-norm_mean",
    "notebooks/run.ipynb",
    {
        "encoder": "gemma3-270m",
        "strategy": "norm_mean",
        "preset": "sd2-256",
        "seed": 1,
        "train_options": {"vae_path": "/models/vae", "data": "/data/shards", "text": "online"},
    },
)


def test_executor_parameters_ask_one_task_per_node_with_all_its_gpus():
    res = launch.Resources(gpus=8, nodes=2, cpus=32, mem_gb=400, timeout_min=600, partition="a100")
    assert launch.executor_parameters(res) == {
        "timeout_min": 600,
        "nodes": 2,
        "tasks_per_node": 1,
        "gpus_per_node": 8,
        "cpus_per_task": 32,
        "mem_gb": 400,
        "slurm_partition": "a100",
    }
    assert "partition" not in str(launch.executor_parameters(launch.Resources()))
    with pytest.raises(ValueError, match="--gpus 0 must be >= 1"):
        launch.Resources(gpus=0)


def test_training_command_runs_accelerate_on_every_gpu_of_every_node(tmp_path):
    flags = launch.train_flags(launch.train_options(SPEC, tmp_path))
    assert flags[flags.index("--preset") + 1] == "sd2-256" and flags[flags.index("--seed") + 1] == "1"
    assert flags[flags.index("--output_dir") + 1] == str(
        tmp_path.resolve() / "g" / "gemma-norm_mean" / "train"
    )
    assert flags[flags.index("--text") + 1] == "online" and flags[flags.index("--progress") + 1] == "false"
    assert "--encoder" not in flags  # the default needs no flag
    one = launch.accelerate_command(flags, launch.Resources(gpus=1))
    assert one[1:6] == ["launch", "--num_processes", "1", "--num_machines", "1"] and "--multi_gpu" not in one
    cmd = launch.accelerate_command(
        flags, launch.Resources(gpus=4, nodes=2), machine_rank=1, main_address="gpu07"
    )
    text = " ".join(cmd)
    assert "--num_processes 8 --num_machines 2 --multi_gpu --machine_rank 1 --main_process_ip gpu07" in text
    assert "--main_process_port 29500" in text and cmd[cmd.index("-m") + 1] == "t2istudy.diffusion.train"
    assert cmd[-len(flags) :] == flags
    with pytest.raises(ValueError, match="main node's address"):
        launch.accelerate_command(flags, launch.Resources(nodes=2))


def test_rendezvous_reads_the_node_rank_and_the_first_host_from_slurm():
    env = {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08],cpu01"}
    assert launch.rendezvous(env) == (1, "gpu07")
    assert (
        "SLURM_JOB_NODELIST" not in os.environ
        or os.environ["SLURM_JOB_NODELIST"] != env["SLURM_JOB_NODELIST"]
    )
    with pytest.raises(ValueError, match="SLURM_NODEID not set"):
        launch.rendezvous({"SLURM_JOB_NODELIST": "a"})


def test_dry_run_plan_shows_jobs_resources_and_commands(tmp_path):
    plan = launch.format_plan(launch.plan_jobs([SPEC], tmp_path, launch.Resources(gpus=8, nodes=2)))
    assert plan.startswith("1 SLURM job(s), one per run, each 2 node(s) x 8 GPU(s) = 16 training processes")
    assert "--machine_rank '$SLURM_NODEID'" in plan and "1. train: " in plan and "2. sample and score" in plan
    assert launch.format_plan([]).startswith("nothing to submit")


def test_missing_slurm_commands_give_one_sentence_with_the_fix(monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda tool: None if tool == "sbatch" else "/usr/bin/srun")
    with pytest.raises(ValueError, match=r"needs sbatch on PATH.*--cluster local.*--launcher local") as err:
        launch.check_slurm_tools("slurm")
    assert "\n" not in str(err.value)
    launch.check_slurm_tools("local")  # submitit's local backend needs neither


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae"
    torch.manual_seed(0)
    vae = build_autoencoder(RECIPES["shapes-tiny"])
    vae.save_pretrained(path)
    return path


@pytest.mark.slow
def test_launched_training_phase_on_two_gloo_processes_equals_one_process(tmp_path, tiny_vae):
    """The launcher's own command, 2 processes on this CPU (accelerate --multi_gpu forms a gloo group without
    GPUs), on a VAE preset: the same per-step loss and weights as one process at the same global batch."""
    cache = build_tiny_cache(tmp_path / "text")
    kw = dict(
        preset="cpu-tiny-latent",
        vae_path=str(tiny_vae),
        latent_cache_dir=str(tmp_path / "latents"),
        max_train_steps=3,
        checkpointing_steps=3,
        adam_epsilon=1e-6,
        latents="cache",
    )
    one = train(tiny_train_options(cache, tmp_path / "one", train_batch_size=8, **kw))
    two = tiny_train_options(cache, tmp_path / "two", train_batch_size=4, **kw)
    cmd = launch.accelerate_command(launch.train_flags(two), launch.Resources(gpus=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    derived = json.loads((Path(two.output_dir) / "options.json").read_text())["derived"]
    assert (derived["num_processes"], derived["global_batch_size"]) == (2, 8)
    for x, y in zip(read_train_log(one), read_train_log(two.output_dir), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    a, b = final_weights(one), final_weights(two.output_dir)
    assert all(torch.allclose(a[k], b[k], atol=5e-5) for k in a)


# ---- grid run --launcher slurm -----------------------------------------------------------------------------------


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "name: g\nnotebook: notebooks/run.ipynb\nparams:\n  preset: sd2-256\n  train_options: {vae_path: /m/vae}\n"
        "axes:\n  encoder: [gemma3-270m]\n  strategy: [norm_mean, last]\n"
    )
    return path


def test_grid_dry_run_with_slurm_prints_the_plan(grid_file, tmp_path, capsys):
    from t2istudy.study import cli

    argv = ["grid", "run", str(grid_file), "--runs-dir", str(tmp_path / "runs"), "--launcher", "slurm"]
    assert cli.main([*argv, "--gpus", "8", "--nodes", "2", "--partition", "a100", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "'nodes': 2, 'tasks_per_node': 1, 'gpus_per_node': 8" in out and "'slurm_partition': 'a100'" in out
    assert "2 SLURM job(s), one per run, each 2 node(s) x 8 GPU(s) = 16 training processes" in out
    assert out.count("--num_processes 16 --num_machines 2 --multi_gpu") == 2 and "--strategy last" in out


def test_grid_run_with_slurm_and_no_sbatch_is_one_line_with_the_fix(grid_file, tmp_path, capsys, monkeypatch):
    from t2istudy.study import cli

    monkeypatch.setattr(launch.shutil, "which", lambda tool: None)
    argv = ["grid", "run", str(grid_file), "--runs-dir", str(tmp_path / "runs"), "--launcher", "slurm"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --launcher slurm needs sbatch and srun on PATH") and "\n" not in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_slurm_jobs_run_the_launcher_job_with_the_executor_parameters(grid_file, tmp_path, monkeypatch):
    """What run_grid hands submitit: the launcher's job function (training under accelerate, then the
    notebook) and one task per node with all its GPUs."""
    from t2istudy.study import cli, runner

    seen = {}

    class Executor:
        def __init__(self, folder, cluster):
            seen["cluster"] = cluster

        def update_parameters(self, **kw):
            seen["parameters"] = kw

        def map_array(self, fn, specs, *rest):
            seen["fn"], seen["specs"] = fn, specs
            done = [runner.RunResult(s.run_id, "done") for s in specs]
            return [
                type("Job", (), {"job_id": i, "result": lambda self, r=r: r})() for i, r in enumerate(done)
            ]

    monkeypatch.setattr(runner.submitit, "AutoExecutor", Executor)
    args = cli.build_parser().parse_args(
        ["grid", "run", str(grid_file), "--launcher", "slurm", "--gpus", "4"]
    )
    options = cli.launcher_options(args)
    results = runner.run_grid(grid_file, tmp_path / "runs", prepare=False, log=lambda m: None, **options)
    assert [r.state for r in results] == ["done", "done"]
    assert seen["parameters"]["gpus_per_node"] == 4 and seen["parameters"]["tasks_per_node"] == 1
    assert seen["fn"].func is launch.run_job and seen["fn"].keywords["resources"].processes == 4
    assert len(seen["specs"]) == 2


def test_a_job_holds_the_run_from_training_on_and_a_second_job_skips_it(tmp_path, monkeypatch):
    """Node 0 claims the run's lock before the training phase and hands it to the notebook's execution; a
    second job of the same run (a grid submitted twice) finds it held and skips it without training."""
    from t2istudy import run_store

    root, resources = tmp_path / "runs", launch.Resources(gpus=1)
    out = (root / SPEC.grid / SPEC.run_id).resolve()
    seen = {}

    def fake_training(cmd, **kw):
        seen["held while training"] = run_store.read_holder(out).pid == os.getpid()
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def fake_execute(spec, root, *, expect, force, claimed):
        seen["handed over"] = claimed is not None and claimed.lock.held()
        return launch.RunResult(spec.run_id, "done", path=str(out))

    monkeypatch.setattr(launch.subprocess, "run", fake_training)
    monkeypatch.setattr(launch, "execute_run", fake_execute)
    assert launch.run_job(SPEC, str(root), None, False, resources).state == "done"
    assert seen == {"held while training": True, "handed over": True}
    assert run_store.read_holder(out) is None  # released after the run

    other = run_store.claim(out)  # a live job holds the run now
    seen.clear()
    result = launch.run_job(SPEC, str(root), None, False, resources)
    assert result.state == "skipped" and "running elsewhere" in result.error and seen == {}  # no training
    other.lock.release()
