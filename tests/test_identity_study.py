"""Issue 41, the study side: a grid's --dry-run resolves encoders and layer indices on this machine, and a run
folder that turns read-only mid-run ends that run FAILED in one line while the batch goes on."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
from test_cli import fake_notebook
from test_runner_hardening import executions, nb, read_only, write_grid  # noqa: F401 (fixtures)

from t2istudy.study import cli, runner

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


def test_a_run_folder_turning_read_only_mid_run_fails_that_run_in_one_line(
    tmp_path, nb, read_only, monkeypatch
):  # noqa: F811
    counter = tmp_path / "count.txt"
    grid = write_grid(tmp_path, nb, {"params": {"counter": str(counter)}, "axes": {"seed": [0, 1]}})
    root = tmp_path / "runs"
    real = papermill.execute_notebook

    def execute(notebook, output, *args, **kwargs):
        out = Path(output).parent
        if out.name == "seed0":  # the folder turns read-only while its notebook runs
            read_only(out)
            raise PermissionError(13, "Permission denied", str(output))
        return real(notebook, output, *args, **kwargs)

    monkeypatch.setattr(runner.papermill, "execute_notebook", execute)
    lines: list[str] = []
    results = runner.run_grid(grid, root, prepare=False, log=lines.append)
    by_run = {r.run_id: r for r in results}
    assert by_run["seed1"].state == "done" and executions(counter) == ["seed1"]  # the batch went on
    failed = by_run["seed0"]
    assert failed.state == "failed" and "\n" not in failed.error
    assert f"the run folder {root.resolve() / 'g' / 'seed0'} could not be written" in failed.error
    assert "Make it writable and run the grid again" in failed.error
    assert any("FAILED seed0" in line for line in lines) and not any("Traceback" in line for line in lines)
