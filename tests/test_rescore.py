"""Adding the judge's shuffled-prompt control to finished runs from their samples (t2istudy grid rescore)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from t2istudy import run_store
from t2istudy.scoring.scorers import get_scorer
from t2istudy.scoring.summaries import summarize
from t2istudy.study import grids, run_folder
from t2istudy.study.rescore import add_shuffled_control, add_shuffled_controls
from t2istudy.world.shapes import Obj, Scene, render
from t2istudy.world.shapes_benchmark import make_benchmark

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "run.ipynb"


def finished_run(root: Path) -> tuple[Path, list[Path], pd.DataFrame]:
    """A run of notebooks/run.ipynb scored before the control existed: 16 prompts, one wrong image."""
    out = root / "g" / "r"
    bench = make_benchmark(n_per_skill=2, seed=3)
    images = [render(s) for s in bench["scene"]]
    images[0] = render(Scene("white", [Obj("circle", "yellow", 0.2, 0.5, 0.5)]))
    files = []
    for i, image in enumerate(images):
        files.append(out / "samples" / f"{i:04d}-s1.png")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(files[-1])
    params = {"n_per_skill": 2, "benchmark_seed": 3, "sample_seed": 1}
    run_store.write_json(
        out / "params.json",
        {
            "schema_version": grids.SCHEMA_VERSION,
            "grid": "g",
            "run_id": "r",
            "notebook": str(NOTEBOOK),
            "params": params,
        },
    )
    table = get_scorer("judge", shuffled_control=False).score(files, bench)
    run_folder.write_record(out, {"heldout": (table, summarize(table))})
    run_store.write_json(out / "DONE", {"finished": "now"})
    return out, files, bench


def test_control_is_added_from_the_samples_and_old_columns_are_kept(tmp_path):
    out, files, bench = finished_run(tmp_path)
    before = pd.read_csv(out / "scores.csv")
    assert add_shuffled_control(out).startswith("added")
    after = pd.read_csv(out / "scores.csv")
    pd.testing.assert_frame_equal(after[before.columns], before)
    fresh = get_scorer("judge").score(files, bench)
    assert after["fraction_shuffled"].tolist() == fresh["fraction_shuffled"].tolist()
    assert after["fraction_shuffled"].mean() < after["fraction"].mean()  # ground truth beats stand-ins
    assert add_shuffled_control(out) == "has the control already"


def test_a_changed_verdict_or_a_missing_sample_leaves_the_scores_alone(tmp_path):
    out, files, _ = finished_run(tmp_path)
    scores = out / "scores.csv"
    table = pd.read_csv(scores)
    table.loc[0, "score"] = 1.0  # as if the judge had changed since the run
    table.to_csv(scores, index=False)
    stored = scores.read_bytes()
    with pytest.raises(ValueError, match="judge's score now differs .* on 1 prompts"):
        add_shuffled_control(out)
    assert scores.read_bytes() == stored
    files[5].unlink()
    with pytest.raises(FileNotFoundError, match="1 of 16 samples are missing"):
        add_shuffled_control(out)
    log: list[str] = []
    assert add_shuffled_controls(tmp_path, "g", log=log.append) == 1 and "not changed" in log[0]
