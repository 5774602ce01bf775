"""A training run folder (its layout is `t2istudy.run_store`'s): what is in it and how far it got, without torch.

`t2istudy.diffusion.train` writes the folder; `grid status` (`t2istudy.study.run_results`, which stays free of
torch so that listing a grid takes a second) reads how far a killed run got. Both go through these functions.
It also holds what a resume may change (`result_changing_differences`): the grid layer asks the same question
before it resumes a run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from t2istudy.run_store import (
    CHECKPOINTS,
    FINAL,
    OPTIONS,
    SUMMARY,
    TRAIN_LOG,
    read_json,
    read_jsonl,
    write_text,
)

# Options that do not change the trained weights: how fast, where, how often to log or save, when to stop.
# Every other option changes the result, so a resume that changes one is refused (a new option is
# result-changing until it is listed here).
RESULT_NEUTRAL = frozenset(
    {
        "output_dir",
        "runs_root",
        "cache_dir",
        "latent_cache_dir",
        "autoencoder_dir",
        "dataloader_num_workers",
        "on_bad",  # skip or stop: a run that finished read the same pairs either way
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "stop_after_steps",
        "logging_steps",
        "report_to",
        "num_threads",
        "progress",
    }
)
# LR schedules that do not depend on max_train_steps: the first N steps of a longer run are the N-step run,
# so a resume may extend it (the ladder climbs this way).
CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")
RECORD_KEYS = ("derived", "resumed_with_changes")  # options.json entries that are not options


def changed_options(old: dict, new: dict) -> dict[str, tuple]:
    """Every option whose value differs, ``{name: (old, new)}``, for two options.json-like dicts.

    Options missing on either side (an options.json written before the option existed) are not compared.
    With ``derived.global_batch_size`` on both sides, a different number of processes shows up as
    ``global_batch_size``.
    """
    found = {
        key: (old[key], new[key])
        for key in old
        if key in new and key not in RECORD_KEYS and old[key] != new[key]
    }
    batch = [d.get("derived", {}).get("global_batch_size") for d in (old, new)]
    if None not in batch and batch[0] != batch[1]:
        found["global_batch_size"] = tuple(batch)
    return found


def result_changing_differences(old: dict, new: dict) -> dict[str, tuple]:
    """The differences, ``{name: (old, new)}``, that would change a run's result if it were resumed with
    ``new`` after being trained with ``old`` (both resolved options, as in options.json).

    Everything outside ``RESULT_NEUTRAL`` counts, except a larger ``max_train_steps`` under a constant LR
    schedule (``CONSTANT_SCHEDULES``): that only trains further along the same curve. A ``vae_path`` of None
    in ``new`` means the preset's own autoencoder, which options.json records as its folder: it is not
    compared (the trainer fills it in before it asks).
    """
    found = {k: v for k, v in changed_options(old, new).items() if k not in RESULT_NEUTRAL}
    if new.get("vae_path") is None:
        found.pop("vae_path", None)
    steps = found.get("max_train_steps")
    if (
        steps is not None
        and None not in steps
        and steps[1] > steps[0]
        and old.get("lr_scheduler") == new.get("lr_scheduler")
        and new.get("lr_scheduler") in CONSTANT_SCHEDULES
    ):
        del found["max_train_steps"]
    return found


def describe_differences(differences: dict[str, tuple], options: dict | None = None) -> str:
    """One line per difference, ``  --seed: 0 -> 1``, with why where it is not obvious."""
    lines = []
    for key, (old, new) in differences.items():
        name = f"--{key}" if key != "global_batch_size" else "global batch size"
        line = f"  {name}: {old!r} -> {new!r}"
        if key == "max_train_steps":
            schedule = (options or {}).get("lr_scheduler")
            if schedule in CONSTANT_SCHEDULES:
                line += " (with a constant schedule it may grow, not shrink)"
            else:
                line += f" (--lr_scheduler {schedule} spans max_train_steps: the steps already trained followed another schedule)"
        elif key == "global_batch_size":
            line += " (train_batch_size x processes x gradient_accumulation_steps)"
        lines.append(line)
    return "\n".join(lines)


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a `checkpoint-<step>` folder name; None for anything else (e.g. `checkpoint-800.tmp-...`)."""
    name = Path(path).name
    prefix, _, step = name.rpartition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints in step order; a `.tmp` folder (a save that was interrupted) never counts."""
    found = [p for p in (Path(run_dir) / CHECKPOINTS).glob("checkpoint-*") if p.is_dir()]
    return sorted((p for p in found if checkpoint_step(p) is not None), key=checkpoint_step)


def read_train_log(run_dir: str | Path) -> list[dict]:
    """Every logged step of a run (`train_log.jsonl`), oldest first; [] before the first log. A torn last
    line is dropped with a warning, a damaged one raises naming the line (`run_store.read_jsonl`)."""
    return read_jsonl(Path(run_dir) / TRAIN_LOG, key="step")


def trim_train_log(run_dir: str | Path, step: int) -> None:
    """Keep the log lines up to ``step`` (a resume from checkpoint-<step> logs the later steps again), and
    drop a torn last line, so the log stays strictly increasing. Rewritten through a rename."""
    log = Path(run_dir) / TRAIN_LOG
    if log.is_file():
        kept = [r for r in read_train_log(run_dir) if r["step"] <= step]
        write_text(log, "".join(json.dumps(r) + "\n" for r in kept))


def read_options(run_dir: str | Path) -> dict:
    """The run's options.json: every option, resolved, plus ``derived`` (input scale, token RMS, sizes)."""
    return read_json(Path(run_dir) / OPTIONS)


def is_trained(run_dir: str | Path) -> bool:
    """Whether training finished: final/ (with its summary) is renamed into place only when complete."""
    return (Path(run_dir) / FINAL / SUMMARY).is_file()


def read_final_summary(run_dir: str | Path) -> dict:
    """final/summary.json of a finished run: steps, wall seconds of the last session, last logged loss."""
    return read_json(Path(run_dir) / FINAL / SUMMARY)


def delete_checkpoints(run_dir: str | Path) -> None:
    """Drop checkpoints/ once final/ exists (they are only for resuming; final/ is what sampling reads)."""
    shutil.rmtree(Path(run_dir) / CHECKPOINTS, ignore_errors=True)


def is_training_folder(folder: str | Path) -> bool:
    """Whether `t2istudy.diffusion.train` has started writing here (its options or its first log line)."""
    return (Path(folder) / OPTIONS).is_file() or (Path(folder) / TRAIN_LOG).is_file()


def training_progress(run_dir: str | Path) -> str:
    """'step 650/800, last checkpoint-600': where an unfinished run stands and what a resume starts from."""
    run_dir = Path(run_dir)
    logged = read_jsonl(run_dir / TRAIN_LOG)
    step = logged[-1].get("step", 0) if logged else 0
    options = run_dir / OPTIONS
    total = read_options(run_dir).get("max_train_steps") if options.is_file() else None
    text = f"step {step}/{total}" if total else f"step {step}"
    if (run_dir / FINAL).is_dir():
        return text + ", trained (sampling and scoring next)"
    saved = complete_checkpoints(run_dir)
    return text + (f", last checkpoint-{checkpoint_step(saved[-1])}" if saved else ", no checkpoint yet")
