"""The batch runner on a tiny fake notebook: grid expansion, skip-if-complete, failure isolation,
resume after kill, parallel workers, the submitit path (local executor) and schema errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from t2istudy import run_store
from t2istudy.study import grids, paths, run_folder, run_results, runner

FAKE_SOURCE = """
import json, time
from pathlib import Path
import pandas as pd
from t2istudy.study import grids, paths, run_folder, run_results, runner
out = Path(out_dir)
(out / "ignored_while_running.txt").write_text(str((out / ".gitignore").exists()))
with open(Path(counter), "a") as f:  # one line per execution: lets tests count re-executions
    f.write(out.name + "\\n")
if fail:
    raise ValueError("deliberate failure in cell 2")
while sleep_while and (Path(sleep_while) / out.name).exists():  # a per-run "hold" file
    time.sleep(0.2)
scores = pd.DataFrame({"id": ["1", "2"], "prompt": ["a", "b"], "skills": [("color",), ("count",)],
                       "score": [x, 1.0 - x]})
summary = pd.DataFrame({"skill": ["color", "count", "overall"], "n": [1, 1, 2],
                        "mean": [x, 1.0 - x, 0.5], "ci_low": [x, 1 - x, 0.0], "ci_high": [x, 1 - x, 1.0]})
run_folder.write_record(out, {"heldout": (scores, summary)}, {"train_seconds": 1.5})
"""


def make_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'out_dir = ""\nx = 0.25\nfail = False\nsleep_while = ""\ncounter = "count.txt"\nencoder = "a"\nseed = 0'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(FAKE_SOURCE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def nb(tmp_path: Path) -> Path:
    return make_notebook(tmp_path / "fake.ipynb")


def write_grid(tmp_path: Path, nb: Path, body: dict, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"name": "g", "notebook": str(nb), **body}))
    return path


def executions(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


def test_grid_expansion_product_exclude_include(tmp_path, nb):
    grid = grids.load_grid(
        write_grid(
            tmp_path,
            nb,
            {
                "params": {"x": 0.5},
                "axes": {"encoder": ["gemma3-270m", "minilm-l6"], "seed": [0, 1, 2]},
                "exclude": [{"encoder": "minilm-l6", "seed": 2}],
                "include": [{"encoder": "norm_mean[standardize]", "seed": 7}],
            },
        )
    )
    specs = grid.runs()
    assert len(specs) == 2 * 3 - 1 + 1
    ids = [s.run_id for s in specs]
    assert ids[:3] == ["gemma3-270m__seed0", "gemma3-270m__seed1", "gemma3-270m__seed2"]
    assert "minilm-l6__seed2" not in ids
    assert ids[-1] == "norm_mean-standardize__seed7"
    assert specs[0].params == {"x": 0.5, "encoder": "gemma3-270m", "seed": 0}
    assert grids.make_run_id({"strategy": "layer[9]", "cfg": 3.0}) == "layer-9__cfg3.0"


def test_a_string_parameter_names_the_runs_own_values_in_braces():
    params = {
        "encoder": "gemma3-270m",
        "seed": 2,
        "out": "runs/small2/{encoder}__seed{seed}/train",
        "json": '{"backend": "local"}',  # not a placeholder: left as it is
        "unknown": "{nope}",  # no such parameter: left as it is
        "n": 3,
    }
    filled = grids.fill_placeholders(params)
    assert filled["out"] == "runs/small2/gemma3-270m__seed2/train"
    assert filled["json"] == '{"backend": "local"}' and filled["unknown"] == "{nope}" and filled["n"] == 3
    with pytest.raises(ValueError, match=r"\{a\} is itself a template"):
        grids.fill_placeholders({"a": "{b}", "b": 1, "c": "{a}"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"axes": {"seed": [0]}, "sweep": {}}, "unknown grid key"),
        ({"axes": {"sede": [0, 1]}}, "not declared by"),
        ({"params": {"lr": 1e-3}}, "not declared by"),
        ({"axes": {"seed": []}}, "non-empty list"),
        ({"params": {"seed": 0}, "axes": {"seed": [0, 1]}}, "both 'params' and 'axes'"),
        ({"axes": {"x": [0.5]}, "include": [{"x": 0.5}]}, "same id"),
    ],
)
def test_bad_grids_are_rejected_with_a_clear_error(tmp_path, nb, body, message):
    with pytest.raises(ValueError, match=message):
        grids.load_grid(write_grid(tmp_path, nb, body)).runs()


def test_grid_file_not_found_and_notebook_without_parameters(tmp_path):
    with pytest.raises(FileNotFoundError, match="Grid file not found"):
        grids.load_grid(tmp_path / "nope.yaml")
    bare = nbformat.v4.new_notebook()
    bare.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(bare, tmp_path / "bare.ipynb")
    with pytest.raises(ValueError, match="tagged 'parameters'"):
        grids.load_grid(write_grid(tmp_path, tmp_path / "bare.ipynb", {"axes": {"x": [1]}}))


def test_failure_isolation_skip_if_complete_and_status(tmp_path, nb):
    counter = tmp_path / "count.txt"
    grid = write_grid(
        tmp_path,
        nb,
        {
            "params": {"counter": str(counter)},
            "axes": {"x": [0.25, 0.75], "fail": [False]},
            "include": [{"x": 0.5, "fail": True}],
        },
    )
    root = tmp_path / "runs"
    results = {r.run_id: r for r in runner.run_grid(grid, root, log=lambda *_: None)}
    assert {k: r.state for k, r in results.items()} == {
        "x0.25__failFalse": "done",
        "x0.75__failFalse": "done",
        "x0.5__failTrue": "failed",
    }
    assert "deliberate failure in cell 2" in results["x0.5__failTrue"].error
    failed_dir = root / "g" / "x0.5__failTrue"
    assert "deliberate failure" in json.loads((failed_dir / "FAILED").read_text())["error"]
    error_nb = nbformat.read(failed_dir / "notebook.ipynb", as_version=4)
    assert any(
        o.get("ename") == "ValueError" for c in error_nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert not (failed_dir / "DONE").exists()
    for run_dir in (p.parent for p in (root / "g").glob("*/params.json")):  # ignored while running only
        assert (run_dir / "ignored_while_running.txt").read_text() == "True"
        assert not (run_dir / ".gitignore").exists()

    done = root / "g" / "x0.75__failFalse"
    params = json.loads((done / "params.json").read_text())
    assert params["schema_version"] == grids.SCHEMA_VERSION
    assert params["params"] == {"counter": str(counter), "x": 0.75, "fail": False}
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["tiers"]["heldout"]["overall"] == {"n": 2, "mean": 0.5, "ci_low": 0.0, "ci_high": 1.0}
    assert metrics["tiers"]["heldout"]["groups"]["color"]["mean"] == 0.75 and metrics["train_seconds"] == 1.5
    assert pd.read_csv(done / "scores.csv")["skills"].tolist() == ["color", "count"]
    assert sorted(executions(counter)) == sorted(results)

    status = run_results.grid_status(grid, root).set_index("run_id")
    assert status["state"].to_dict() == {
        "x0.25__failFalse": "done",
        "x0.75__failFalse": "done",
        "x0.5__failTrue": "failed",
    }
    assert status.loc["x0.75__failFalse", "overall"] == 0.5

    # second batch: complete runs are skipped, the failed one is retried (and keeps failing)
    again = {r.run_id: r.state for r in runner.run_grid(grid, root, log=lambda *_: None)}
    assert again == {"x0.25__failFalse": "skipped", "x0.75__failFalse": "skipped", "x0.5__failTrue": "failed"}
    assert executions(counter).count("x0.5__failTrue") == 2 and len(executions(counter)) == 4
    assert (failed_dir / "notebook.previous.ipynb").exists()

    metrics = run_results.load_metrics(root, "g")
    assert sorted(metrics["run_id"].unique()) == ["x0.25__failFalse", "x0.75__failFalse"]
    row = metrics[(metrics.run_id == "x0.25__failFalse") & (metrics.skill == "count")].iloc[0]
    assert (row["mean"], row["x"], row["train_seconds"]) == (0.75, 0.25, 1.5)
    scores = run_results.load_scores(root, "g")
    assert len(scores) == 4 and scores["score"].sum() == pytest.approx(2.0)


def test_done_run_with_changed_parameters_is_an_error(tmp_path, nb):
    counter = tmp_path / "count.txt"
    body = {"params": {"counter": str(counter), "x": 0.25}, "axes": {"seed": [0]}}
    root = tmp_path / "runs"
    runner.run_grid(write_grid(tmp_path, nb, body), root, log=lambda *_: None)
    body["params"]["x"] = 0.5
    with pytest.raises(ValueError, match=r"different values for \['x'\]"):
        runner.run_grid(write_grid(tmp_path, nb, body), root, log=lambda *_: None)


def test_older_schema_is_rejected(tmp_path, nb):
    grid = write_grid(tmp_path, nb, {"axes": {"seed": [0]}})
    old = tmp_path / "runs" / "g" / "seed0"
    old.mkdir(parents=True)
    (old / "params.json").write_text(json.dumps({"schema_version": 0, "params": {}}))
    with pytest.raises(ValueError, match="schema version 0"):
        runner.run_grid(grid, tmp_path / "runs", log=lambda *_: None)
    with pytest.raises(ValueError, match="Move that runs/ directory aside"):
        run_results.load_metrics(tmp_path / "runs")


@pytest.mark.slow
def test_resume_after_kill_loses_no_finished_run(tmp_path, nb):
    counter, hold = tmp_path / "count.txt", tmp_path / "hold"
    (hold / "seed1").mkdir(parents=True)  # the run seed1 blocks until this is removed
    grid = write_grid(
        tmp_path,
        nb,
        {"params": {"counter": str(counter), "sleep_while": str(hold)}, "axes": {"seed": [2, 0, 1]}},
    )
    root = tmp_path / "runs"
    script = f"from t2istudy.study import runner; runner.run_grid({str(grid)!r}, {str(root)!r})"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while executions(counter) != ["seed2", "seed0", "seed1"] and time.time() < deadline:
            time.sleep(0.5)
        assert executions(counter) == ["seed2", "seed0", "seed1"]  # seed1 is now blocked on `hold`
        assert run_store.run_state(root / "g" / "seed1") == "running"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert run_store.run_state(root / "g" / "seed0") == "done"
    assert run_store.run_state(root / "g" / "seed1") == "interrupted"
    (hold / "seed1").rmdir()
    states = {r.run_id: r.state for r in runner.run_grid(grid, root, log=lambda *_: None)}
    assert states == {"seed0": "skipped", "seed2": "skipped", "seed1": "done"}
    assert executions(counter) == ["seed2", "seed0", "seed1", "seed1"]


@pytest.mark.slow
def test_parallel_workers_and_submitit_local_executor(tmp_path, nb):
    counter = tmp_path / "count.txt"
    grid = write_grid(tmp_path, nb, {"params": {"counter": str(counter)}, "axes": {"seed": [0, 1]}})
    lines: list[str] = []
    results = runner.run_grid(grid, tmp_path / "local", workers=2, log=lines.append)
    assert sorted((r.run_id, r.state) for r in results) == [("seed0", "done"), ("seed1", "done")]
    assert any("workers=2" in line for line in lines)

    results = runner.run_grid(
        grid,
        tmp_path / "slurm",
        launcher="slurm",
        cluster="local",
        slurm={"timeout_min": 5},
        log=lines.append,
    )
    assert sorted((r.run_id, r.state) for r in results) == [("seed0", "done"), ("seed1", "done")]
    assert list((tmp_path / "slurm" / "g" / ".submitit").iterdir())  # submitit's job folders
    status = run_results.grid_status(grid, tmp_path / "slurm")
    assert status["state"].tolist() == ["done", "done"] and status["overall"].tolist() == [0.5, 0.5]
    assert sorted(executions(counter)) == ["seed0", "seed0", "seed1", "seed1"]


def test_a_run_written_by_hand_is_read_but_not_complete_until_marked(tmp_path):
    """`run()` writes the record, never DONE: a folder written outside the runner is readable but stays
    'interrupted' (not counted) until DONE is written, the runner's last act."""
    out = tmp_path / "runs" / "manual" / "r1"
    scores = pd.DataFrame({"id": ["1"], "prompt": ["a"], "skills": [("color", "count")], "score": [1.0]})
    summary = pd.DataFrame(
        {"n": [1, 1], "mean": [1.0, 1.0], "ci_low": [1.0, 1.0], "ci_high": [1.0, 1.0]},
        index=["color", "overall"],
    )
    run_folder.write_record(out, {"heldout": (scores, summary)})
    run_store.write_json(
        out / "params.json", {"schema_version": grids.SCHEMA_VERSION, "grid": "manual", "run_id": "r1"}
    )
    assert run_store.run_state(out) == "interrupted"
    run_store.write_json(out / "DONE", {"finished": run_store.now()})
    assert run_store.run_state(out) == "done"
    assert run_results.load_scores(tmp_path / "runs")["skills"].tolist() == ["color|count"]


def test_fake_notebook_source_compiles():
    # a syntax error in the fake notebook would show up as confusing "failed" runs in the tests above
    compile(FAKE_SOURCE, "fake", "exec")


def test_parameter_line_papermill_cannot_parse_is_reported(tmp_path, nb):
    bad = nbformat.read(nb, as_version=4)
    bad.cells[0].source += "\nsteps = 3  # keep >= 2"
    nbformat.write(bad, tmp_path / "bad.ipynb")
    assert "steps" not in grids.notebook_parameters(tmp_path / "bad.ipynb")  # papermill skipped the line
    assert grids.unparsable_parameters(tmp_path / "bad.ipynb") == {"steps": "steps = 3  # keep >= 2"}
    grids.check_parameters(tmp_path / "bad.ipynb", {"x": 1})  # fine while 'steps' is not set
    with pytest.raises(ValueError, match="'steps' on a line papermill cannot parse.*only one '='"):
        grids.check_parameters(tmp_path / "bad.ipynb", {"steps": 1})


def test_at_repo_root_moves_out_of_notebooks_only_in_a_checkout(tmp_path, monkeypatch):
    for d in ("t2istudy", "grids", "notebooks", "other/notebooks"):
        (tmp_path / d).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "notebooks")
    assert paths.at_repo_root() == tmp_path
    monkeypatch.chdir(tmp_path / "other" / "notebooks")
    assert paths.at_repo_root() == tmp_path / "other" / "notebooks"  # not a checkout: stay


def test_cache_waves_build_each_cache_entry_once_before_the_rest():
    specs = [
        grids.RunSpec("g", f"{e}-{st}-{seed}", "nb", {"encoder": e, "strategy": st, "seed": seed})
        for e in ("a", "b")
        for st in ("last", "mean")
        for seed in (0, 1, 2)
    ]
    wave1, wave2 = runner.cache_waves(specs)
    assert [s.run_id for s in wave1] == ["a-last-0", "a-mean-0", "b-last-0", "b-mean-0"]
    assert len(wave2) == 8 and not set(wave1) & set(wave2)
    assert runner.cache_waves(specs[:1]) == [specs[:1]]
    # Entries of a-last and b-* exist: only a-mean's seeds would build one, so only two of them wait.
    building = {"a-mean-0", "a-mean-1", "a-mean-2"}
    wave1, wave2 = runner.cache_waves(specs, building)
    assert [s.run_id for s in wave2] == ["a-mean-1", "a-mean-2"] and len(wave1) == 10
    assert runner.cache_waves(specs, set()) == [specs]


def test_bad_strategy_or_preset_fails_before_any_run(tmp_path):
    nb = make_notebook(tmp_path / "nb.ipynb")
    bad = nbformat.read(nb, as_version=4)
    declared = (
        "strategy = 'last'",
        "preset = 'cpu-tiny'",
        "geneval_per_task = 0",
        "prompt_upsampling = None",
    )
    bad.cells[0].source += "\n" + "\n".join(declared)
    nbformat.write(bad, nb)
    counter = tmp_path / "count.txt"
    for params, message in [
        ({"strategy": "norm_maen"}, "run norm_maen: .*norm_maen"),
        ({"preset": "cpu-huge"}, "Unknown preset"),
        ({"geneval_per_task": 100}, "geneval_per_task=100: Only 63 distinct single_object prompts"),
        ({"prompt_upsampling": "remote:gpt-4o"}, "run remote-gpt-4o: Unknown upsampling backend"),
    ]:
        grid = write_grid(
            tmp_path, nb, {"params": {"counter": str(counter)}, "axes": {k: [v] for k, v in params.items()}}
        )
        with pytest.raises(ValueError, match=message):
            runner.run_grid(grid, tmp_path / "runs", log=lambda *_: None)
    assert not counter.exists() and not (tmp_path / "runs").exists()  # nothing executed, nothing written


@pytest.mark.slow
def test_run_notebook_end_to_end_on_a_tiny_model(tmp_path):
    """notebooks/run.ipynb against the real package: encode, train, sample, score, write the run; a
    guidance sweep sharing one trained model (as grids/cfg_tune.yaml does) trains it only once."""
    notebook = Path(__file__).parent.parent / "notebooks" / "run.ipynb"
    shared = tmp_path / "shared_train"
    grid = write_grid(
        tmp_path,
        notebook,
        {
            "params": {
                "preset": "cpu-tiny",
                "max_train_steps": 4,
                "n_per_skill": 1,
                "sample_steps": 2,
                "encoder": "minilm-l6",
                "strategy": "norm_mean",
                "shared_train_dir": str(shared),
                "train_options": {"pool_size": 32, "cache_dir": str(tmp_path / "cache")},
            },
            "axes": {"guidance_scale": [2.0, 3.0]},
        },
    )
    results = runner.run_grid(grid, tmp_path / "runs", log=lambda *_: None)
    assert [r.state for r in results] == ["done", "done"], [r.error for r in results]
    first, second = (json.loads((Path(r.path) / "metrics.json").read_text()) for r in results)
    assert first["tiers"]["heldout"]["overall"]["n"] == 8 and first["n_prompts"] == 8  # 1 per covered skill
    assert (first["guidance_scale"], second["guidance_scale"]) == (2.0, 3.0)
    assert first["max_train_steps"] == 4 and first["input_scale_value"] == second["input_scale_value"]
    assert (first["trained_here"], second["trained_here"]) == (True, False)  # the second reused the model
    out = Path(results[0].path)
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 8 and set(scores["score"]) <= {0.0, 1.0}
    assert len(list((out / "samples").glob("*-s0.png"))) == 8
    assert (shared / "final" / "summary.json").exists() and not (out / "train").exists()
    assert not (shared / "checkpoints").exists()  # keep_checkpoints=False
    # another arm pointed at the same model is refused, not credited with it
    other = json.loads(grid.read_text())
    other["name"], other["params"]["seed"], other["axes"] = "other", 1, {"guidance_scale": [2.0]}
    grid.write_text(json.dumps(other))
    (refused,) = runner.run_grid(grid, tmp_path / "runs", log=lambda *_: None)
    assert refused.state == "failed" and "--seed: 0 -> 1" in refused.error, refused.error


def test_run_marked_running_on_another_host_is_skipped_unless_asked(tmp_path, nb):
    counter = tmp_path / "count.txt"
    grid = write_grid(tmp_path, nb, {"params": {"counter": str(counter)}, "axes": {"seed": [0]}})
    out = tmp_path / "runs" / "g" / "seed0"
    out.mkdir(parents=True)
    (out / "params.json").write_text(json.dumps({"schema_version": grids.SCHEMA_VERSION, "params": {}}))
    (out / "RUNNING").write_text(json.dumps({"pid": 1, "host": "node-17", "started": "2026-11-26T00:00:00"}))
    assert run_store.run_state(out) == "running"
    status = run_results.grid_status(grid, tmp_path / "runs").set_index("run_id")
    assert status.loc["seed0", "progress"] is None  # no training folder yet
    train = out / "train"
    (train / "checkpoints" / "checkpoint-600").mkdir(parents=True)
    (train / "checkpoints" / "checkpoint-400").mkdir()
    (train / "checkpoints" / "checkpoint-800.tmp").mkdir()  # a save cut short: not a checkpoint
    (train / "options.json").write_text(json.dumps({"max_train_steps": 800}))
    (train / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.1}) + "\n" for s in (640, 650))
    )
    status = run_results.grid_status(grid, tmp_path / "runs").set_index("run_id")
    assert status.loc["seed0", "progress"] == "step 650/800, last checkpoint-600"
    (train / "final").mkdir()  # training finished (checkpoints are then dropped), sampling goes on
    status = run_results.grid_status(grid, tmp_path / "runs").set_index("run_id")
    assert status.loc["seed0", "progress"] == "step 650/800, trained (sampling and scoring next)"
    (result,) = runner.run_grid(grid, tmp_path / "runs", log=lambda *_: None)
    assert (result.state, "--rerun-running" in result.error) == ("skipped", True) and not counter.exists()
    (result,) = runner.run_grid(grid, tmp_path / "runs", rerun_running=True, log=lambda *_: None)
    assert result.state == "done" and executions(counter) == ["seed0"]


@pytest.mark.slow
def test_resample_redraws_a_shared_noise_run_keeps_its_training_record_and_old_results(tmp_path, monkeypatch):
    """A finished run recorded as sampled under "shared" noise (as runs before the rule were) is sampled and
    scored again under its preset's "per_prompt" rule: same trained weights, training time kept, the old
    results kept under previous/shared/; a second pass does nothing; a run without weights is refused."""
    from t2istudy.study import run
    from t2istudy.study.run import resample_grid, resample_run

    notebook = Path(__file__).parent.parent / "notebooks" / "run.ipynb"
    params = {
        "preset": "cpu-tiny",
        "max_train_steps": 4,
        "n_per_skill": 1,
        "geneval_per_task": 1,
        "sample_steps": 2,
        "encoder": "minilm-l6",
        "strategy": "norm_mean",
        "keep_checkpoints": False,
        "train_options": {"pool_size": 32, "cache_dir": str(tmp_path / "cache")},
    }
    grid = write_grid(tmp_path, notebook, {"name": "g", "params": params, "axes": {"seed": [0]}})
    (result,) = runner.run_grid(grid, tmp_path / "runs", log=lambda *_: None)
    assert result.state == "done", result.error
    out = Path(result.path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sample_noise"] == "per_prompt"  # cpu-tiny's rule, recorded by the notebook
    old = {k: v for k, v in metrics.items() if k != "sample_noise"}  # as a run from before the rule
    (out / "metrics.json").write_text(json.dumps(old))

    def killed(*args, **kwargs):
        raise RuntimeError("killed while writing the record")

    with monkeypatch.context() as patch:  # a kill before the record is written: the run's files are untouched
        patch.setattr(run.run_folder, "write_record", killed)
        with pytest.raises(RuntimeError, match="killed"):
            resample_run(out)
    assert json.loads((out / "metrics.json").read_text()) == old  # read as drawn under 'shared' (no key)
    assert "sampled under 'per_prompt' already" not in resample_run(out)
    new = json.loads((out / "metrics.json").read_text())
    assert new["sample_noise"] == "per_prompt" and new["resampled"]["from"] == "shared"
    assert new["train_seconds"] == old["train_seconds"] and new["trained_here"] is True
    assert new["tiers"]["heldout"]["overall"]["n"] == old["tiers"]["heldout"]["overall"]["n"]
    assert "geneval" in new["tiers"]
    assert json.loads((out / "previous" / "shared" / "metrics.json").read_text()) == old
    assert (out / "previous" / "shared" / "scores_geneval.csv").is_file() and (out / "DONE").is_file()
    assert resample_run(out) == "sampled under 'per_prompt' already"
    held = run_store.claim(out)  # a runner or another re-sampler holds the run: left alone
    with pytest.raises(ValueError, match="is held by pid .*not re-sampled here"):
        resample_run(out)
    held.lock.release()
    (out / "metrics.json").write_text(json.dumps(old))
    shutil.rmtree(out / "train" / "final")
    lines: list[str] = []
    assert resample_grid(tmp_path / "runs", "g", log=lines.append) == 1
    assert "not changed" in lines[0] and "git-ignored" in lines[0] and "machine that trained" in lines[0]
