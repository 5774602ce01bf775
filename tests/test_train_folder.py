"""The training folder's layout, shared by the trainer (writes it) and `grid status` (reads it, torch-free)."""

import json
import subprocess
import sys

from t2istudy.diffusion import train_folder as tf


def test_checkpoint_step_reads_only_complete_checkpoint_names():
    assert tf.checkpoint_step("runs/x/checkpoints/checkpoint-1200") == 1200
    assert tf.checkpoint_step("checkpoint-800.tmp") is None  # a save cut short
    assert tf.checkpoint_step("checkpoint-") is None
    assert tf.checkpoint_step("ckpt-800") is None


def test_checkpoints_sort_by_step_not_by_name(tmp_path):
    for name in ("checkpoint-900", "checkpoint-1000", "checkpoint-50", "checkpoint-1100.tmp"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-2000").write_text("a file, not a save")
    assert [p.name for p in tf.complete_checkpoints(tmp_path)] == [
        "checkpoint-50",
        "checkpoint-900",
        "checkpoint-1000",
    ]


def test_progress_of_a_run_killed_before_its_first_log(tmp_path):
    assert not tf.is_training_folder(tmp_path)
    (tmp_path / tf.OPTIONS).write_text(json.dumps({"max_train_steps": 1200}))
    assert tf.is_training_folder(tmp_path)
    assert tf.training_progress(tmp_path) == "step 0/1200, no checkpoint yet"
    (tmp_path / tf.TRAIN_LOG).write_text(json.dumps({"step": 1000, "loss": 0.2}) + "\n")
    (tmp_path / "checkpoints" / "checkpoint-1000").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-200").mkdir()
    assert tf.training_progress(tmp_path) == "step 1000/1200, last checkpoint-1000"


def test_grid_status_does_not_import_torch():
    """Listing a grid must stay quick: the read side (grids, run_results) reaches the training folder
    through train_folder only, and none of it imports torch."""
    code = "import sys, t2istudy.study.run_results, t2istudy.study.grids, t2istudy.diffusion.train_folder; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
