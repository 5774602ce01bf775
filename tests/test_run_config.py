"""A run is one function: its configuration (`RunConfig`), the tiers as data, and one record writer/reader.

The run notebook's parameters cell mirrors RunConfig's defaults; committed runs written in the older layout
(the held-out tier at metrics.json's top level) read through the same reader, unchanged on disk; the command
line answers `--help` and `grid status` without loading torch, and every training flag has its comment as help.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import papermill
import pytest

from t2istudy.diffusion import train as train_script
from t2istudy.diffusion.options import TrainOptions, option_help
from t2istudy.study import run_folder, run_results
from t2istudy.study.run_config import RunConfig
from t2istudy.study.tiers import TIERS

REPO = Path(__file__).resolve().parents[1]
SMALL2_RUN = REPO / "runs" / "small2" / "gemma3-270m__last__seed0"


def test_the_run_notebook_declares_exactly_the_run_settings_with_their_defaults():
    declared = papermill.inspect_notebook(str(REPO / "notebooks" / "run.ipynb"))
    defaults = {name: ast.literal_eval(p["default"]) for name, p in declared.items() if name != "out_dir"}
    assert defaults == {name: getattr(RunConfig(), name) for name in RunConfig.names()}


def test_from_params_fills_defaults_and_names_a_typo_with_the_closest_setting():
    config = RunConfig.from_params({"encoder": "minilm-l6", "geneval_per_task": 0, "train_options": None})
    assert (config.encoder, config.strategy, config.train_options) == ("minilm-l6", "norm_mean", {})
    assert [t.name for t in config.tiers()] == ["heldout"]  # size 0 skips the GenEval-style tier
    assert [t.name for t in RunConfig().tiers()] == ["heldout", "geneval"]
    assert [t.name for t in RunConfig(benchmark="genai-bench").tiers()] == ["genai-bench"]
    with pytest.raises(ValueError, match=r"'n_per_skil' \(did you mean 'n_per_skill'\?\) not a run setting"):
        RunConfig.from_params({"n_per_skil": 3})
    assert RunConfig.from_params({"seed": 2, "notebook_global": 1}, known_only=True).seed == 2


def test_train_options_come_from_the_config_in_one_place(tmp_path):
    config = RunConfig.from_params({"preset": "cpu-tiny", "seed": 3, "train_options": {"pool_size": 24}})
    opts = config.to_train_options(config.train_dir(tmp_path))
    assert isinstance(opts, TrainOptions)
    assert (opts.preset, opts.seed, opts.pool_size, opts.output_dir) == (
        "cpu-tiny",
        3,
        24,
        str(tmp_path / "train"),
    )
    assert (opts.report_to, opts.progress) == ("none", False)
    assert RunConfig(shared_train_dir="shared/x").train_dir(tmp_path) == Path("shared/x")
    bad = RunConfig.from_params({"train_options": {"pool_sise": 1, "seed": 1, "learning_rate": "1e-3"}})
    problems = "\n".join(bad.option_problems())
    assert "did you mean 'pool_size'" in problems and "notebook parameter 'seed'" in problems
    assert "YAML reads 1e-3 as a string" in problems
    with pytest.raises(ValueError, match="geneval_per_task=-1: n_per_task=-1 must be >= 1"):
        RunConfig(geneval_per_task=-1).check()


def test_one_writer_puts_every_tier_under_tiers_and_one_reader_reads_it(tmp_path):
    held = pd.DataFrame(
        {
            "id": ["1", "2"],
            "prompt": ["a", "b"],
            "skills": [("attribute",), ("counting",)],
            "score": [1.0, 0.0],
        }
    )
    held_summary = TIERS["heldout"].summarize(held, n_boot=10)
    gen = pd.DataFrame(
        {"id": [f"g{i}" for i in range(6)], "prompt": ["p"] * 6, "skills": [("x",)] * 6, "score": [1.0] * 6}
    ).assign(task=["single_object", "two_object", "counting", "colors", "position", "color_attr"])
    gen_summary = TIERS["geneval"].summarize(gen, n_boot=10)
    run_folder.write_record(
        tmp_path, {"heldout": (held, held_summary), "geneval": (gen, gen_summary)}, {"x": 1}
    )
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert set(stored["tiers"]) == {"heldout", "geneval"} and "overall" not in stored and stored["x"] == 1
    assert list(stored["tiers"]["heldout"]["groups"])[:2] == [
        "basic",
        "advanced",
    ]  # as runs always listed them
    assert pd.read_csv(tmp_path / "scores.csv")["skills"].tolist() == ["attribute", "counting"]
    assert "skills" not in pd.read_csv(tmp_path / "scores_geneval.csv").columns  # grouped by task
    metrics = run_folder.read_metrics(tmp_path)
    assert run_folder.tier_stats(metrics, "heldout")["overall"]["mean"] == 0.5
    assert run_folder.tier_stats(metrics, "geneval")["overall"]["mean"] == 1.0


def test_a_committed_small2_run_reads_through_the_adapter_unchanged_on_disk():
    """runs/small2 was written before every tier lived under metrics["tiers"]: the held-out tier at the top
    level, the GenEval-style tier's groups under "tasks". The reader gives both in today's shape."""
    stored = json.loads((SMALL2_RUN / "metrics.json").read_text())
    assert "overall" in stored and "heldout" not in stored["tiers"]  # the older layout, not rewritten
    metrics = run_folder.read_metrics(SMALL2_RUN)
    held = run_folder.tier_stats(metrics, "heldout")
    assert held["overall"] == stored["overall"] and held["basic"] == stored["basic"]
    assert {k: held[k] for k in stored["skills"]} == stored["skills"]
    assert run_folder.tier_stats(metrics, "geneval") == {
        "overall": stored["tiers"]["geneval"]["overall"],
        **stored["tiers"]["geneval"]["tasks"],
    }
    table = run_results.load_metrics(REPO / "runs", "small2").set_index(["run_id", "skill"])
    assert table.loc[(SMALL2_RUN.name, "overall"), "mean"] == stored["overall"]["mean"]
    geneval = run_results.load_metrics(REPO / "runs", "small2", tier="geneval").set_index(["run_id", "skill"])
    assert geneval.loc[(SMALL2_RUN.name, "overall"), "mean"] == stored["tiers"]["geneval"]["overall"]["mean"]


@pytest.mark.parametrize(
    "argv", [["--help"], ["grid", "status", "grids/quick.yaml", "--runs-dir", "tests/fixtures/runs"]]
)
def test_help_and_grid_status_do_not_import_torch(argv):
    code = (
        "import sys\nfrom t2istudy.study import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch-free')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "torch-free", result.stdout + result.stderr


def test_every_training_flag_has_its_comment_as_help_and_usage_names_the_subcommand():
    helps = option_help()
    assert set(helps) == {f for f in TrainOptions.__dataclass_fields__} and all(helps.values())
    assert helps["pool_size"] == "shapes: scenes in the fixed training pool (every caption gets cached)"
    assert (
        helps["vae_path"].startswith("local diffusers AutoencoderKL folder")
        and "trained once" in helps["vae_path"]
    )
    assert not any(text.startswith("==") for text in helps.values())  # section headings belong to no flag
    text = train_script.build_parser().format_help()
    assert text.startswith("usage: t2istudy train ") and "scenes in the fixed training pool" in text
