"""The t2istudy command: argument parsing, grid dry-run/status on fixture runs, clear errors, train
delegation, and the study driver's progress, isolation and resume on fake notebooks."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from t2istudy import run_store
from t2istudy.study import cli, grids, paths, run_results
from t2istudy.study import pipeline as study

FIXTURE = Path(__file__).parent / "fixtures" / "runs"


def fake_notebook(path: Path, params: str, body: str = "") -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body or "pass")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def fixture_grid(tmp_path: Path) -> Path:
    nb = fake_notebook(
        tmp_path / "run.ipynb", 'encoder = ""\nstrategy = ""\nseed = 0\npreset = ""\nout_dir = ""'
    )
    grid = {
        "name": "fixture",
        "notebook": str(nb),
        "params": {"preset": "cpu-small"},
        "axes": {"encoder": ["gemma3-270m"], "strategy": ["last", "norm_mean"], "seed": [0, 1, 2]},
    }
    (tmp_path / "g.yaml").write_text(json.dumps(grid))
    return tmp_path / "g.yaml"


def test_parse_assignment_uses_yaml_values():
    assert cli.parse_assignment("seed=1") == ("seed", 1)
    assert cli.parse_assignment("cfg=3.0") == ("cfg", 3.0)
    assert cli.parse_assignment("train_options={pool_size: 256}") == ("train_options", {"pool_size": 256})
    assert cli.parse_assignment("strategy=norm_mean[rms,no_embed]") == ("strategy", "norm_mean[rms,no_embed]")
    assert cli.parse_assignment("strategy=layer:9") == ("strategy", "layer:9")
    assert cli.parse_assignment("strategy='layer:9'") == ("strategy", "layer:9")
    with pytest.raises(SystemExit, match="key=value"):
        cli.parse_assignment("seed")


def test_grid_status_and_dry_run_on_fixture_runs(fixture_grid, capsys):
    assert cli.main(["grid", "status", str(fixture_grid), "--runs-dir", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "done: 4  pending: 2" in out and "geneval" in out.splitlines()[0]
    assert "left: 2 runs x 1 s (median of 4 done)" in out  # every fixture run's DONE says 1 s
    assert "gemma3-270m__norm_mean__seed1" in out and "0.875" in out  # k=14 of 16 prompts
    assert cli.main(["grid", "run", str(fixture_grid), "--runs-dir", str(FIXTURE), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["done", "done", "pending"] * 2


def test_time_left_plans_from_the_median_done_run():
    table = pd.DataFrame(
        {
            "state": ["done", "done", "done", "pending", "failed", "interrupted"],
            "seconds": [1800.0, 2400.0, 9000.0, None, 60.0, None],  # one done run slowed by a busy machine
        }
    )
    # 3 runs left x 2,400 s = 2.0 worker-hours (the mean, 4,400 s, would say 3.7)
    assert run_results.time_left(table) == (
        "left: 3 runs x 2,400 s (median of 3 done) = 2.0 worker-hours, 1.0 h with --workers 2 at their pace"
    )
    assert run_results.time_left(table.assign(state="done")) is None  # nothing left
    assert run_results.time_left(table.assign(state="pending")) is None  # nothing ran yet


def test_status_names_a_mix_of_noise_rules_and_the_resample_command():
    table = pd.DataFrame(
        {"state": ["done"] * 3 + ["pending"], "sample_noise": ["shared", "per_prompt", "shared", None]}
    )
    assert run_results.noise_rules(table) == (
        "sample noise: per_prompt 1, shared 2 runs: mixed, so the analysis refuses this grid. `t2istudy grid "
        "resample <grid file>` samples them again under their preset's rule (trained weights reused)."
    )
    assert run_results.noise_rules(table.assign(sample_noise="shared")) is None  # one rule: nothing to say


def test_bad_input_gives_a_clear_error_and_exit_code_2(tmp_path, fixture_grid, capsys):
    bad = json.loads(fixture_grid.read_text()) | {"seeds": [0]}
    (tmp_path / "bad.yaml").write_text(json.dumps(bad))
    assert cli.main(["grid", "run", str(tmp_path / "bad.yaml"), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "unknown grid key(s) ['seeds']" in capsys.readouterr().err
    nb = json.loads(fixture_grid.read_text())["notebook"]
    assert cli.main(["notebook", nb, str(tmp_path / "r" / "1"), "-p", "sede=1"]) == 2
    assert "['sede'] are not declared" in capsys.readouterr().err
    assert cli.main(["grid", "status", str(tmp_path / "missing.yaml")]) == 2
    assert "Grid file not found" in capsys.readouterr().err


def test_train_is_delegated_to_the_training_script(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--encoder" in out and "--input_scale" in out


def test_study_lists_its_steps(capsys):
    assert cli.main(["study", "--quick", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [
        "grid",
        "layer-norms",
        "judge-validation",
        "probe",
        "analysis-tables",
        "analysis-figures",
        "analysis-tables-fraction",
        "analysis-figures-fraction",
        "analysis-tables-above_floor",
        "analysis-tables-geneval",  # quick.yaml asks for the GenEval-style tier (geneval_per_task: 1)
        "analysis-figures-geneval",
    ]
    steps = {s.name: s for s in study.default_study(quick=True)}
    assert (
        steps["grid"].grid == "grids/quick.yaml"
        and steps["analysis-tables"].params["figures_dir"] == "figures/quick"
        and steps["analysis-figures-fraction"].params["figures_dir"] == "figures/quick/fraction"
        and steps["analysis-figures-fraction"].params["probe_dir"] == "figures/quick/probe"
    )
    every = study.default_study(quick=False) + study.default_study(quick=True)
    for s in every + study.default_study(quick=False, grid="small"):  # notebooks declare these
        path = paths.REPO / (s.grid or s.notebook)
        if s.grid:  # small: 36; small2: 36 + one more seed of each arm of claim 3; quick: 4
            grid = grids.load_grid(path)
            assert len(grid.runs()) == {"small": 36, "small2": 38, "quick": 4}[grid.name]
        elif path.exists():
            declared = grids.notebook_parameters(path)
            assert set(s.params) <= set(declared), (s.name, sorted(declared))


@pytest.mark.slow
def test_study_runs_steps_isolates_failures_and_resumes(tmp_path, monkeypatch):
    counter = tmp_path / "count.txt"
    body = f'open({str(counter)!r}, "a").write(out_dir + "\\n")\nfrom t2istudy.study import run_folder\n'
    run_nb = fake_notebook(
        tmp_path / "run.ipynb",
        'x = 0\nout_dir = ""',
        body
        + (
            "import pandas as pd\nrows = pd.DataFrame({'skill': ['overall'], 'n': [1], 'mean': [x], 'ci_low': [x], 'ci_high': [x]})\n"
            "run_folder.write_record(out_dir, {'heldout': (pd.DataFrame({'id': ['1'], 'score': [x]}), rows)})"
        ),
    )
    side_nb = fake_notebook(tmp_path / "side.ipynb", 'n = 1\nout_dir = ""', body)
    (tmp_path / "g.yaml").write_text(
        json.dumps({"name": "g", "notebook": str(run_nb), "axes": {"x": [0, 1]}})
    )
    steps = [
        study.Step("grid", grid=str(tmp_path / "g.yaml")),
        study.Step("missing", notebook=str(tmp_path / "nope.ipynb"), out="nope/quick"),
        study.Step("side", notebook=str(side_nb), out="side/quick", params={"n": 2}),
        study.Step("analysis", notebook=str(side_nb), out="analysis/g", always=True),
    ]
    monkeypatch.setattr(study, "default_study", lambda quick, figures_dir, grid=None: steps)
    lines: list[str] = []
    root = tmp_path / "runs"
    assert study.run_study(quick=True, runs_dir=root, log=lines.append) is False
    assert any("missing: FAILED" in line and "does not exist" in line for line in lines)
    assert lines[-1].startswith("== study --quick finished in") and "1 step(s) failed" in lines[-1]
    assert run_store.run_state(root / "side" / "quick") == "done"
    first = counter.read_text().splitlines()
    assert len(first) == 4  # 2 grid runs + side + analysis
    lines.clear()
    study.run_study(quick=True, runs_dir=root, log=lines.append)
    again = counter.read_text().splitlines()[len(first) :]
    assert again == [str((root / "analysis" / "g").resolve())]  # only the always-rerun analysis executed


def test_launcher_flags_map_to_submitit_parameters():
    args = cli.build_parser().parse_args(
        [
            "grid",
            "run",
            "g.yaml",
            "--launcher",
            "slurm",
            "--partition",
            "gpu",
            "--gpus",
            "2",
            "--timeout-min",
            "90",
        ]
    )
    options = cli.launcher_options(args)
    job = options.pop("job")  # the launcher's job: training under accelerate on the job's GPUs first
    assert job.keywords["resources"].processes == 2
    assert options == {
        "workers": 1,
        "launcher": "slurm",
        "cluster": None,
        "slurm": {
            "timeout_min": 90,
            "nodes": 1,
            "tasks_per_node": 1,
            "gpus_per_node": 2,
            "cpus_per_task": 8,
            "mem_gb": 64,
            "slurm_partition": "gpu",
        },
    }
    local = cli.build_parser().parse_args(["study", "--quick", "--workers", "2"])
    assert cli.launcher_options(local) == {"workers": 2, "launcher": "local", "cluster": None, "slurm": None}


def test_the_study_runs_the_latent_grid_by_default_and_keeps_the_record_where_it_was():
    default = {s.name: s for s in study.default_study()}
    assert default["grid"].grid == "grids/small2.yaml"
    assert default["analysis-tables"].params["figures_dir"] == "figures/small2"
    assert default["analysis-tables-fraction"].params["figures_dir"] == "figures/small2/fraction"
    assert default["probe"].params["out_dir"] == "figures/probe"  # side notebooks: not per grid
    assert default["analysis-figures"].params["probe_dir"] == "figures/probe"
    scaling = {s.name: s for s in study.default_study(grid="scaling")}  # its own sweep: both Qwen2.5 sizes
    assert scaling["analysis-figures-geneval"].params["probe_dir"] == "figures/probe_scaling"
    record = {s.name: s for s in study.default_study(grid="small")}
    assert record["grid"].grid == "grids/small.yaml"
    assert record["analysis-tables"].params["figures_dir"] == "figures"  # cpu-small keeps its names
    assert record["analysis-tables"].out == "analysis/small/tables"
    with pytest.raises(ValueError, match=r"no grids/smal\.yaml; grids are \[.*'small2'"):
        study.default_study(grid="smal")
    with pytest.raises(ValueError, match="drop --quick"):
        study.default_study(quick=True, grid="small2")


def test_a_side_notebook_command_reruns_on_request_and_keeps_the_finished_run(tmp_path, monkeypatch, capsys):
    nb = fake_notebook(tmp_path / "side.ipynb", 'n = 1\nout_dir = ""', "print(n)")
    monkeypatch.setitem(cli.NOTEBOOK_COMMANDS, "upsampling", (str(nb), "upsampling"))
    root = tmp_path / "runs"
    assert cli.main(["upsampling", "--runs-dir", str(root)]) == 0
    assert cli.main(["upsampling", "--runs-dir", str(root)]) == 0
    assert "already complete: --rerun runs it again" in capsys.readouterr().out
    assert cli.main(["upsampling", "--runs-dir", str(root), "--rerun"]) == 0
    kept = list((root / "upsampling").glob("default.previous-*"))
    assert len(kept) == 1 and run_store.run_state(kept[0]) == "done"
    assert run_store.run_state(root / "upsampling" / "default") == "done"


# ---- issue 41: --dry-run resolves encoders and layer indices on this machine ----------------------------


STUDY_PARAMS = 'encoder = ""\nstrategy = ""\nseed = 0\npreset = ""\nout_dir = ""'


def study_grid(tmp_path: Path, encoders: list[str], strategies: list[str]) -> Path:
    notebook = fake_notebook(tmp_path / "run.ipynb", STUDY_PARAMS)
    grid = {
        "name": "dry",
        "notebook": str(notebook),
        "params": {"preset": "cpu-tiny"},
        "axes": {"encoder": encoders, "strategy": strategies, "seed": [0]},
    }
    (tmp_path / "g.yaml").write_text(json.dumps(grid))
    return tmp_path / "g.yaml"


def test_dry_run_names_an_unknown_encoder_and_a_layer_beyond_the_encoder(tmp_path, capsys):
    runs = ["--runs-dir", str(tmp_path / "runs"), "--dry-run"]
    good = study_grid(tmp_path, ["minilm-l6"], ["last", "layer:6", "layer:-7"])  # 7 hidden states
    assert cli.main(["grid", "run", str(good), *runs]) == 0
    capsys.readouterr()
    bad = study_grid(tmp_path, ["minilm-l6", "no-such-encoder"], ["layer:99", "last"])
    assert cli.main(["grid", "run", str(bad), *runs]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "run minilm-l6__layer-99__seed0 (encoder minilm-l6, strategy layer:99)" in err
    assert "out of range for an encoder with 7 hidden states" in err
    assert "run no-such-encoder__last__seed0" in err and "Unknown encoder 'no-such-encoder'" in err
    assert "minilm-l6__last__seed0" not in err  # the good arm is not named
    assert not (tmp_path / "runs").exists()
