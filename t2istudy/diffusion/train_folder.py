"""The layout of a training run folder, in one place and without torch.

`t2istudy.diffusion.train` writes the folder; `grid status` (`t2istudy.study.run_results`, which stays free of
torch so that listing a grid takes a second) reads how far a killed run got. Both go through these names, so the writer
and the reader cannot drift apart:

    options.json                     every option, resolved, plus `derived`
    train_log.jsonl                  one JSON line per logging step: step, loss, lr, ...
    checkpoints/checkpoint-<step>/   a complete save; checkpoint-<step>.tmp/ is one cut short
    final/                           the trained weights; final/summary.json is written last
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

OPTIONS = "options.json"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
SUMMARY = "summary.json"  # in final/: steps, wall time, last loss


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a `checkpoint-<step>` folder name; None for anything else (e.g. `checkpoint-800.tmp`)."""
    name = Path(path).name
    prefix, _, step = name.rpartition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints in step order; a `.tmp` folder (a save that was interrupted) never counts."""
    found = [p for p in (Path(run_dir) / CHECKPOINTS).glob("checkpoint-*") if p.is_dir()]
    return sorted((p for p in found if checkpoint_step(p) is not None), key=checkpoint_step)


def read_train_log(run_dir: str | Path) -> list[dict]:
    """Every logged step of a run (`train_log.jsonl`), oldest first; [] before the first log."""
    log = Path(run_dir) / TRAIN_LOG
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def read_options(run_dir: str | Path) -> dict:
    """The run's options.json: every option, resolved, plus ``derived`` (input scale, token RMS, sizes)."""
    return json.loads((Path(run_dir) / OPTIONS).read_text())


def is_trained(run_dir: str | Path) -> bool:
    """Whether training finished: final/ (with its summary) is renamed into place only when complete."""
    return (Path(run_dir) / FINAL / SUMMARY).is_file()


def read_final_summary(run_dir: str | Path) -> dict:
    """final/summary.json of a finished run: steps, wall seconds of the last session, last logged loss."""
    return json.loads((Path(run_dir) / FINAL / SUMMARY).read_text())


def delete_checkpoints(run_dir: str | Path) -> None:
    """Drop checkpoints/ once final/ exists (they are only for resuming; final/ is what sampling reads)."""
    shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)


def is_training_folder(folder: str | Path) -> bool:
    """Whether `t2istudy.diffusion.train` has started writing here (its options or its first log line)."""
    return (Path(folder) / OPTIONS).is_file() or (Path(folder) / TRAIN_LOG).is_file()


def training_progress(run_dir: str | Path) -> str:
    """'step 650/800, last checkpoint-600': where an unfinished run stands and what a resume starts from."""
    run_dir = Path(run_dir)
    logged = read_train_log(run_dir)
    step = logged[-1]["step"] if logged else 0
    options = run_dir / OPTIONS
    total = read_options(run_dir).get("max_train_steps") if options.is_file() else None
    text = f"step {step}/{total}" if total else f"step {step}"
    if (run_dir / FINAL).is_dir():
        return text + ", trained (sampling and scoring next)"
    saved = complete_checkpoints(run_dir)
    return text + (f", last checkpoint-{checkpoint_step(saved[-1])}" if saved else ", no checkpoint yet")
