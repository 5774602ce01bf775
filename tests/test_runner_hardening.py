"""The runner under stress (issue 22): two runners on one grid, a grid edited under half-done runs, torn
and corrupt run files, one bad run in `grid prepare`, typos in train_options, a read-only runs folder."""

from __future__ import annotations

import builtins
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from helpers import FakeEncoder

from t2istudy import run_store
from t2istudy.diffusion.data import shapes_pool
from t2istudy.study import cli, grids, prepare, run_results, runner
from t2istudy.text.cache import EmbeddingCache

REPO = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda *_: None}

# A stand-in for the run notebook: "trains" by appending to train/train_log.jsonl from the last logged
# step on (as a resumed run does), keeps a checkpoint, counts its executions, can be made to fail.
SOURCE = """
import json, time
from pathlib import Path
import pandas as pd
from t2istudy import run_store
from t2istudy.study import run_folder
out = Path(out_dir)
train = out / "train"
(train / "checkpoints" / "checkpoint-2").mkdir(parents=True, exist_ok=True)
with open(counter, "a") as f:
    f.write(out.name + "\\n")
log = train / "train_log.jsonl"
last = max([r["step"] for r in run_store.read_jsonl(log)], default=0)
for step in range(last + 1, last + 1 + steps):
    with open(log, "a") as f:
        f.write(json.dumps({"step": step, "loss": 0.1}) + "\\n")
    time.sleep(pause)
if fail_flag and Path(fail_flag).exists():
    raise ValueError("deliberate failure")
scores = pd.DataFrame({"id": ["1"], "prompt": ["a"], "skills": [("color",)], "score": [x]})
summary = pd.DataFrame({"skill": ["overall"], "n": [1], "mean": [x], "ci_low": [x], "ci_high": [x]})
run_folder.write_record(out, {"heldout": (scores, summary)})
"""
PARAMS = (
    'out_dir = ""\nx = 0.5\ncounter = "count.txt"\nsteps = 3\npause = 0.0\nfail_flag = ""\n'
    "seed = 0\ntrain_options = {}"
)


@pytest.fixture()
def nb(tmp_path: Path) -> Path:
    notebook = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    notebook.cells = [params, nbformat.v4.new_code_cell(SOURCE)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "fake.ipynb")
    return tmp_path / "fake.ipynb"


def write_grid(tmp_path: Path, nb: Path, body: dict, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "g", "notebook": str(nb), **body}))
    return path


def executions(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


def fake_done(out: Path, params: dict, metrics: bool = True) -> Path:
    """A finished run written by hand (no kernel): params.json, DONE and metrics.json."""
    out.mkdir(parents=True)
    record = {"schema_version": grids.SCHEMA_VERSION, "grid": out.parent.name, "run_id": out.name}
    (out / "params.json").write_text(json.dumps({**record, "notebook": "nb", "params": params}))
    (out / "DONE").write_text(json.dumps({"finished": "2026-01-01T00:00:00+00:00", "seconds": 1.0}))
    if metrics:
        overall = {"n": 1, "mean": 0.5, "ci_low": 0.5, "ci_high": 0.5}
        (out / "metrics.json").write_text(json.dumps({"schema_version": 1, "overall": overall, "skills": {}}))
    return out


# ---------------------------------------------------------------------------------------------
# 1. Two runners, one grid: the lock


@pytest.mark.slow
def test_two_grid_run_processes_execute_every_run_exactly_once(tmp_path, nb):
    counter = tmp_path / "count.txt"
    grid = write_grid(
        tmp_path, nb, {"params": {"counter": str(counter), "pause": 0.3}, "axes": {"seed": [0, 1, 2]}}
    )
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "t2istudy", "grid", "run", str(grid), "--runs-dir", str(root)]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=900)[0] for p in procs]  # ~30 s on 2 idle cores
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(executions(counter)) == ["seed0", "seed1", "seed2"], outputs  # each run exactly once
    for seed in (0, 1, 2):
        out = root / "g" / f"seed{seed}"
        assert (out / "DONE").exists() and not (out / "FAILED").exists()
        assert not (out / run_store.LOCK).exists()
        steps = [r["step"] for r in run_store.read_jsonl(out / "train" / "train_log.jsonl")]
        assert steps == sorted(set(steps)) == [1, 2, 3]  # strictly increasing: one writer
    status = run_results.grid_status(grid, root)
    assert status["state"].tolist() == ["done"] * 3


def test_lock_is_exclusive_and_a_stale_one_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    first = run_store.claim(out)
    assert first.lock is not None and first.lock.held()
    second = run_store.claim(out)
    assert second.lock is None and second.holder.pid == os.getpid()  # a live holder keeps the run
    assert run_store.run_state(out) == "running"
    first.lock.release()
    assert not (out / run_store.LOCK).exists()

    # A process killed on this host: its pid is gone, the lock is stale and taken over.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    info = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then", "token": "old"}
    (out / run_store.LOCK).write_text(json.dumps(info))
    assert run_store.run_state(out) == "interrupted"
    taken = run_store.claim(out)
    assert taken.lock is not None and "stale lock" in taken.note and "not running" in taken.note
    taken.lock.release()

    # Another host: alive while it beats; stale once its heartbeat is older than STALE_SECONDS.
    other = {"pid": 1, "host": "node-17", "started": "then", "token": "job"}
    (out / run_store.LOCK).write_text(json.dumps(other))
    assert run_store.claim(out).lock is None and run_store.run_state(out) == "running"
    old = time.time() - run_store.STALE_SECONDS - 60
    os.utime(out / run_store.LOCK, (old, old))
    assert run_store.run_state(out) == "interrupted"
    taken = run_store.claim(out)
    assert taken.lock is not None and "no heartbeat" in taken.note
    taken.lock.release()

    # --rerun-running takes over another host's fresh lock, never a live pid on this host.
    (out / run_store.LOCK).write_text(json.dumps(other))
    forced = run_store.claim(out, force=True)
    assert forced.lock is not None
    assert run_store.claim(out, force=True).lock is None  # this process holds it now, and is alive
    forced.lock.release()


def test_run_is_rechecked_under_the_lock_right_before_it_executes(tmp_path, nb):
    counter = tmp_path / "count.txt"
    grid = grids.load_grid(
        write_grid(tmp_path, nb, {"params": {"counter": str(counter)}, "axes": {"seed": [0]}})
    )
    (spec,) = grid.runs()
    root = tmp_path / "runs"
    out = grids.run_path(root, spec)
    out.mkdir(parents=True)
    held = run_store.claim(out)  # another runner claimed it after this one planned
    result = runner.execute_run(spec, root)
    assert (
        result.state == "skipped"
        and "running elsewhere" in result.error
        and f"pid {os.getpid()}" in result.error
    )
    held.lock.release()
    # The plan saw no markers; another runner failed the run meanwhile: not executed a second time.
    (out / "FAILED").write_text(json.dumps({"error": "boom"}))
    result = runner.execute_run(spec, root, expect={})
    assert result.state == "skipped" and "failed meanwhile in another runner" in result.error
    assert not executions(counter) and not (out / run_store.LOCK).exists()


def test_done_beside_failed_is_never_done_and_is_run_again(tmp_path, nb):
    counter = tmp_path / "count.txt"
    grid = write_grid(tmp_path, nb, {"params": {"counter": str(counter)}, "axes": {"seed": [0]}})
    root = tmp_path / "runs"
    out = fake_done(root / "g" / "seed0", {"counter": str(counter), "seed": 0})
    (out / "FAILED").write_text(json.dumps({"error": "boom", "seconds": 1.0}))
    assert run_store.run_state(out) == "corrupt"
    row = run_results.grid_status(grid, root).iloc[0]
    assert row["state"] == "corrupt" and "DONE and FAILED" in row["error"]
    (result,) = runner.run_grid(grid, root, **QUIET)
    assert result.state == "done" and executions(counter) == ["seed0"]
    assert (out / "DONE").exists() and not (out / "FAILED").exists()


def test_grid_record_names_the_notebook_as_params_json_does(tmp_path, nb, monkeypatch):
    # grid.json is committed with the runs: it names the notebook from the working directory (the repository
    # root under the CLI), as each run's params.json does, not by this machine's absolute path.
    monkeypatch.chdir(tmp_path)
    grid = write_grid(
        tmp_path, nb, {"params": {"counter": str(tmp_path / "count.txt")}, "axes": {"seed": [0]}}
    )
    (result,) = runner.run_grid(grid, tmp_path / "runs", **QUIET)
    assert result.state == "done"
    record = json.loads((tmp_path / "runs" / "g" / "grid.json").read_text())
    params = json.loads((tmp_path / "runs" / "g" / "seed0" / "params.json").read_text())
    assert record["notebook"] == params["notebook"] == "fake.ipynb"


# ---------------------------------------------------------------------------------------------
# 2. A grid edited under a half-done run


def test_resuming_with_changed_options_is_refused_listing_each_difference(tmp_path, nb, capsys):
    counter, flag = tmp_path / "count.txt", tmp_path / "fail"
    flag.touch()
    body = {
        "params": {
            "counter": str(counter),
            "fail_flag": str(flag),
            "train_options": {"learning_rate": 5.0e-4, "num_threads": 1},
        },
        "axes": {"seed": [0]},
    }
    grid = write_grid(tmp_path, nb, body)
    root = tmp_path / "runs"
    (first,) = runner.run_grid(grid, root, **QUIET)
    assert (
        first.state == "failed" and (root / "g" / "seed0" / "train" / "checkpoints" / "checkpoint-2").is_dir()
    )
    flag.unlink()

    body["params"]["train_options"] = {"learning_rate": 1.0e-3, "num_threads": 2}
    body["params"]["x"] = 0.75
    grid = write_grid(tmp_path, nb, body)
    (result,) = runner.run_grid(grid, root, **QUIET)
    assert result.state == "failed" and executions(counter) == ["seed0"]  # not executed
    assert "train_options.learning_rate: 0.0005 when it started, 0.001 in the grid now" in result.error
    assert "x: (the notebook's default) when it started, 0.75 in the grid now" in result.error
    assert "num_threads" not in result.error  # threads do not change results
    assert "checkpoint-2" in result.error and "Fix:" in result.error and "mv " in result.error
    assert cli.main(["grid", "run", str(grid), "--runs-dir", str(root)]) == 1
    assert "REFUSED run seed0" in capsys.readouterr().out

    # Only a result-neutral option changed: the run resumes.
    body["params"]["train_options"] = {"learning_rate": 5.0e-4, "num_threads": 2}
    del body["params"]["x"]
    (result,) = runner.run_grid(write_grid(tmp_path, nb, body), root, **QUIET)
    assert result.state == "done" and executions(counter) == ["seed0", "seed0"]


def test_changed_parameters_without_training_state_start_afresh(tmp_path, nb):
    counter, flag = tmp_path / "count.txt", tmp_path / "fail"
    body = {"params": {"counter": str(counter), "fail_flag": str(flag), "x": 0.25}, "axes": {"seed": [0]}}
    root = tmp_path / "runs"
    out = root / "g" / "seed0"
    out.mkdir(parents=True)  # started with x=0.25, killed before its first checkpoint
    record = {"schema_version": grids.SCHEMA_VERSION, "grid": "g", "run_id": "seed0", "notebook": str(nb)}
    (out / "params.json").write_text(json.dumps({**record, "params": {**body["params"], "seed": 0}}))
    body["params"]["x"] = 0.5
    (result,) = runner.run_grid(write_grid(tmp_path, nb, body), root, **QUIET)
    assert result.state == "done"


# ---------------------------------------------------------------------------------------------
# 3. Torn and corrupt files: status never fails for the whole grid


def test_read_jsonl_drops_a_torn_last_line_and_names_a_damaged_one(tmp_path):
    log = tmp_path / "train_log.jsonl"
    assert run_store.read_jsonl(log) == []
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match=r"train_log.jsonl: dropped its torn last line 3"):
        assert [r["step"] for r in run_store.read_jsonl(log)] == [1, 2]
    log.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(run_store.CorruptFile, match=r"train_log.jsonl line 2 is not valid JSON") as err:
        run_store.read_jsonl(log)
    assert "checkpoints and weights are kept" in str(err.value) and f"mv {log} {log}.bad" in str(err.value)


def test_status_shows_each_damaged_run_with_a_fix_and_analysis_warns(tmp_path, nb, capsys):
    grid = write_grid(tmp_path, nb, {"axes": {"seed": [0, 1, 2, 3, 4, 5]}})
    g = tmp_path / "runs" / "g"
    params = {"seed": 0}

    def interrupted(seed: int, log: str) -> None:
        train = g / f"seed{seed}" / "train"
        (train / "checkpoints" / "checkpoint-20").mkdir(parents=True)
        (train / "options.json").write_text(json.dumps({"max_train_steps": 40}))
        (train / "train_log.jsonl").write_text(log)
        record = {"schema_version": grids.SCHEMA_VERSION, "params": {"seed": seed}}
        (g / f"seed{seed}" / "params.json").write_text(json.dumps(record))

    interrupted(0, '{"step": 10}\n{"step": 20}\n{"step": 2')  # killed mid-append: a torn last line
    interrupted(1, '{"step": 10}\n{"ste\n{"step": 30}\n')  # damaged in the middle
    fake_done(g / "seed2", {**params, "seed": 2})
    (g / "seed2" / "metrics.json").write_text('{"overall": {"mean": 0.')  # corrupt metrics.json
    fake_done(g / "seed3", {**params, "seed": 3}, metrics=False)  # DONE but no metrics.json
    fake_done(g / "seed4", {**params, "seed": 4})
    (g / "seed4" / "FAILED").write_text("{}")  # both markers
    fake_done(g / "seed5", {**params, "seed": 5})  # the one good run
    (g / "seed5" / "scores.csv").write_text("id,prompt,skills,score\n")  # a scored run has its prompts' file
    (g / "grid.json").write_text("{}")  # a grid's runs: metrics.json is required

    status = run_results.grid_status(grid, tmp_path / "runs").set_index("run_id")
    assert status["state"].to_dict() == {
        "seed0": "interrupted",
        "seed1": "corrupt",
        "seed2": "corrupt",
        "seed3": "corrupt",
        "seed4": "corrupt",
        "seed5": "done",
    }
    assert status.loc["seed0", "progress"] == "step 20/40, last checkpoint-20"
    assert "torn last line" in status.loc["seed0", "error"]
    assert status.loc["seed1", "error"].startswith("corrupt: train/train_log.jsonl:")
    assert status.loc["seed2", "error"].startswith("corrupt: ")
    assert "metrics.json is not valid JSON" in status.loc["seed2", "error"]
    assert status.loc["seed3", "error"].startswith("incomplete: ") and pd_isna(status.loc["seed3", "overall"])
    assert "--only seed3" in status.loc["seed3", "error"]
    assert all("delete" not in e for e in status["error"].dropna())
    assert status.loc["seed5", "overall"] == 0.5

    assert cli.main(["grid", "status", str(grid), "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "seed1: corrupt: train/train_log.jsonl" in out and "corrupt: 4" in out

    with pytest.warns(UserWarning) as caught:
        metrics = run_results.load_metrics(tmp_path / "runs", "g")
    assert metrics["run_id"].unique().tolist() == ["seed5"]
    skipped = " ".join(str(w.message) for w in caught)
    assert all(f"skipping run {g / f'seed{s}'}" in skipped for s in (2, 3, 4))


def pd_isna(value) -> bool:
    return value is None or value != value


# ---------------------------------------------------------------------------------------------
# 4. One bad run in `grid prepare`


def test_prepare_builds_the_good_runs_caches_and_names_each_bad_run(tmp_path, monkeypatch, capsys):
    def load_encoder(name, max_length=None, **_):
        if name == "fake-broken":
            raise OSError("no such model on this machine")
        return FakeEncoder(name=name)

    monkeypatch.setattr("t2istudy.text.encoders.load_encoder", load_encoder)
    grid = {
        "name": "prep",
        "notebook": str(REPO / "notebooks" / "run.ipynb"),
        "params": {
            "preset": "cpu-tiny",
            "n_per_skill": 1,
            "geneval_per_task": 0,
            "train_options": {"pool_size": 24, "cache_dir": str(tmp_path / "cache")},
        },
        "axes": {"encoder": ["fake-a", "fake-broken"], "strategy": ["last"]},
        "include": [{"encoder": "fake-a", "strategy": "mean", "train_options": {"pool_sise": 24}}],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(prepare.PrepareError) as err:
        prepare.prepare_grid(path, tmp_path / "runs", **QUIET)
    typo = "fake-a__mean__pool_sise-24"
    assert set(err.value.bad) == {"fake-broken__last", typo}
    assert "no such model" in err.value.bad["fake-broken__last"]
    assert "pool_sise" in err.value.bad[typo] and "did you mean 'pool_size'" in err.value.bad[typo]
    captions = shapes_pool(24, 0, 16).captions
    assert EmbeddingCache.find(tmp_path / "cache", "fake-a", "last", captions) is not None  # the good run's

    assert cli.main(["grid", "prepare", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    message = capsys.readouterr().err
    assert "2 run(s) could not be prepared" in message and "fake-broken__last" in message


# ---------------------------------------------------------------------------------------------
# 5. Typos and syntax errors in grid files


def test_train_options_typo_is_named_with_the_grid_file_and_the_closest_name(tmp_path, capsys):
    notebook = str(REPO / "notebooks" / "run.ipynb")
    body = {"name": "t", "notebook": notebook, "params": {"preset": "cpu-tiny"}, "axes": {"seed": [0, 1]}}
    cases = [
        (
            {"pool_sise": 64},
            r"train_options.pool_sise is not a training option \(did you mean 'pool_size'\?\)",
        ),
        ({"learning_rate": "1e-3"}, r"'1e-3' is a str, expected a number \(YAML reads 1e-3 as a string"),
        ({"text": "cahce"}, r"--text 'cahce' is not valid"),
        ({"seed": 3}, r"train_options.seed: set it as the notebook parameter 'seed'"),
    ]
    for options, message in cases:
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({**body, "params": {**body["params"], "train_options": options}}))
        with pytest.raises(ValueError, match=message) as err:
            runner.run_grid(path, tmp_path / "runs", **QUIET)
        assert str(err.value).startswith(f"{path}: ") and "runs seed0, seed1" in str(err.value)
        assert cli.main(["grid", "run", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]) == 2
        assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written


def test_yaml_syntax_error_names_the_grid_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: g\nnotebook: nb.ipynb\naxes:\n  seed: [0, 1\n  strategy: [last]\n")
    with pytest.raises(ValueError, match=rf"{path}, line \d+, column \d+: not valid YAML") as err:
        grids.load_grid(path)
    assert "<unicode string>" not in str(err.value)
    assert cli.main(["grid", "status", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 6. A read-only runs folder


@pytest.fixture()
def read_only(monkeypatch):
    """Make a folder unwritable: chmod, or (as root, whom chmod does not stop) refuse writes under it."""

    def apply(folder: Path) -> None:
        folder = folder.resolve()
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(0o555 if path.is_dir() else 0o444)
            return

        def under(path) -> bool:
            try:
                return Path(os.fspath(path)).resolve().is_relative_to(folder)
            except TypeError:
                return False

        def refuse(original, arg=0):
            def wrapper(*args, **kwargs):
                target = args[arg] if len(args) > arg else None
                writing = original is not os.open or (args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                if target is not None and writing and under(target):
                    raise PermissionError(13, "Permission denied", os.fspath(target))
                return original(*args, **kwargs)

            return wrapper

        def guarded_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and under(file):
                raise PermissionError(13, "Permission denied", os.fspath(file))
            return real_open(file, mode, *args, **kwargs)

        real_open = builtins.open
        monkeypatch.setattr(builtins, "open", guarded_open)
        for name in ("open", "replace", "rename", "link", "unlink", "mkdir", "utime"):
            monkeypatch.setattr(os, name, refuse(getattr(os, name)))
        for name in ("mkdir", "touch", "unlink", "write_text"):
            monkeypatch.setattr(pathlib.Path, name, refuse(getattr(pathlib.Path, name)))

    return apply


def test_read_only_runs_folder_all_done_exits_0_else_names_the_folder(tmp_path, nb, read_only, capsys):
    counter = tmp_path / "count.txt"
    grid = write_grid(tmp_path, nb, {"params": {"counter": str(counter)}, "axes": {"seed": [0, 1]}})
    root = tmp_path / "runs"
    for seed in (0, 1):
        fake_done(root / "g" / f"seed{seed}", {"counter": str(counter), "seed": seed})
    read_only(root)
    assert cli.main(["grid", "run", str(grid), "--runs-dir", str(root)]) == 0
    assert "nothing to run" in capsys.readouterr().out

    wider = write_grid(tmp_path, nb, {"params": {"counter": str(counter)}, "axes": {"seed": [0, 1, 2]}})
    assert cli.main(["grid", "run", str(wider), "--runs-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"The runs folder {root / 'g'} is not writable" in err and "--runs-dir" in err
    assert "Traceback" not in err and not executions(counter)


def test_concurrent_write_json_to_one_file_never_fails(tmp_path):
    """Two `grid run`s both write grid.json (CI saw one die renaming a temp file the other had renamed
    away): each writer's temp name is its own, so writers racing on one file all succeed, last one wins."""
    import threading

    target, errors = tmp_path / "grid.json", []

    def writer(k: int) -> None:
        try:
            for i in range(200):
                run_store.write_json(target, {"writer": k, "i": i})
        except OSError as err:  # the old fixed "grid.json.tmp" raised FileNotFoundError here
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["i"] == 199
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json"]  # no temp file left behind
