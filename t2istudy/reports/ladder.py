"""The ladder: the verdict on both tiers against training machine-minutes, for one preset and arm.

Why: "does this preset draw?" is a curve, not a number. One training run climbs rung by rung: train to
the rung's step count (resuming the previous rung's checkpoint: with a constant learning rate after
warm-up the first N steps of a long run are exactly the N-step run), sample both tiers from the final
(EMA) weights, judge them, append a row to ``<out>/ladder.csv``. Rerunning skips finished rungs.

Machine-minutes are wall seconds x threads / 60, recorded beside the load average: on a shared machine
they overstate the quiet-machine cost. A rung's cumulative training time is saved before it is judged, so
a ladder killed while judging keeps it; the time of a rung killed mid-training is lost (undercounted).
Each row records the commit it trained from and whether the tree was dirty (``git_commit``, ``git_dirty``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from t2istudy.diffusion.model import PRESETS, get_preset, replace_preset
from t2istudy.diffusion.options import TrainOptions, resolve_options
from t2istudy.diffusion.train import train
from t2istudy.diffusion.train_folder import CONSTANT_SCHEDULES, complete_checkpoints
from t2istudy.figure_files import save_figure
from t2istudy.study.provenance import git_state
from t2istudy.study.run import evaluate_tiers
from t2istudy.world.shapes import PALETTE, SHAPES

# {steps: [cumulative training seconds, load, cumulative training CPU seconds]}, written before each rung is
# judged; the CPU seconds (this process's, all threads) say what a rung costs when other work shares the cores
CLOCK = "train_clock.json"
COLUMNS = (
    "preset",
    "encoder",
    "strategy",
    "seed",
    "steps",
    "train_seconds",
    "threads",
    "machine_minutes",
    "load_average",
    "train_cpu_seconds",
    "guidance_scale",
    "git_commit",
    "git_dirty",
    "sample_noise",
    "sample_seconds",
)


def register_lever(base: str, name: str, changes: dict) -> str:
    """Register ``base`` with ``changes`` as preset ``<base>+<name>`` for this process; returns that name.

    Why: a lever is measured as a variant of a preset without adding it to PRESETS for good; its ladder
    folder keeps ``preset.json`` ({"base", "changes"}) so that anything loading the ladder's weights later
    (sampling, `benchmarks/sample_noise.py`) can register the same variant again (:func:`register_saved`).
    """
    preset = get_preset(base)
    if isinstance(changes.get("unet"), dict):
        changes = {**changes, "unet": {**preset.unet, **changes["unet"]}}
    full = f"{base}+{name}"
    PRESETS[full] = replace_preset(preset, name=full, **changes)
    return full


def register_saved(ladder_dir: str | Path) -> str | None:
    """Register the lever preset a ladder folder was trained with (its preset.json); None when it has none."""
    path = Path(ladder_dir) / "preset.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return register_lever(saved["base"], Path(ladder_dir).name, saved["changes"])


def check_schedule(preset: str, rungs: list[int], train_options: dict | None = None) -> None:
    """Refuse, before any training, a ladder of several rungs under a decaying learning-rate schedule: each
    rung resumes the previous one, which is the shorter run only while the rate stays constant (the trainer
    would refuse at the second rung, after the first one's minutes were spent)."""
    schedule = resolve_options(TrainOptions(preset=preset, **(train_options or {}))).lr_scheduler
    if len(rungs) > 1 and schedule not in CONSTANT_SCHEDULES:
        raise ValueError(
            f"The ladder has rungs {rungs} under lr_scheduler {schedule!r}, which spans max_train_steps, so a "
            f"rung cannot resume the one before it. Climb one rung per ladder (--rungs {rungs[-1]} with its "
            f"own --name), or use a constant schedule ({', '.join(CONSTANT_SCHEDULES)})."
        )


def rung_dir(ladder: Path, steps: int) -> Path:
    """Where a ladder's rung of ``steps`` steps was sampled and judged (its scores_<tier>.csv)."""
    return Path(ladder) / f"rung-{steps:05d}"


def climb(
    out: str | Path,
    rungs: list[int],
    *,
    preset: str,
    encoder: str = "gemma3-270m",
    strategy: str = "norm_mean",
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    threads: int = 1,
    guidance_scale: float | None = None,
    train_options: dict | None = None,
) -> pd.DataFrame:
    """Train to each rung in turn and judge both tiers there; returns the ladder table."""
    out = Path(out)
    sizes = sizes or {"geneval": 50, "heldout": 50}
    table_path = out / "ladder.csv"
    done = pd.read_csv(table_path) if table_path.is_file() else pd.DataFrame(columns=COLUMNS)
    train_dir = out / "train"
    clock = json.loads((out / CLOCK).read_text()) if (out / CLOCK).is_file() else {}
    check_schedule(preset, sorted({*rungs, *done["steps"].astype(int)}), train_options)
    for steps in sorted(rungs):
        if steps in set(done["steps"]):
            continue
        opts = TrainOptions(
            encoder=encoder,
            strategy=strategy,
            preset=preset,
            seed=seed,
            max_train_steps=steps,
            output_dir=str(train_dir),
            report_to="none",
            progress=False,
            num_threads=threads,
            checkpoints_total_limit=1,
            **(train_options or {}),
        )
        if complete_checkpoints(train_dir):
            opts.resume_from_checkpoint = "latest"
        commit, dirty = git_state()  # the code the rung trains with; a run from a dirty tree says so
        t0, cpu0 = time.time(), time.process_time()
        train(opts)
        if (
            str(steps) not in clock
        ):  # a rung trained earlier and judged now (killed in between) keeps its time
            clock[str(steps)] = [
                time.time() - t0 + max((c[0] for c in clock.values()), default=0.0),
                os.getloadavg()[0],
                time.process_time() - cpu0 + max((c[2] for c in clock.values() if len(c) > 2), default=0.0),
            ]
            (out / CLOCK).write_text(json.dumps(clock, indent=1))
        seconds, load, *cpu = clock[str(steps)]  # clocks written before the CPU column have none
        t0 = time.time()
        rung = rung_dir(out, steps)
        rung.mkdir(parents=True, exist_ok=True)
        results = evaluate_tiers(train_dir, sizes, out_dir=rung, guidance_scale=guidance_scale)
        row = {
            "preset": preset,
            "encoder": encoder,
            "strategy": strategy,
            "seed": seed,
            "steps": steps,
            "train_seconds": round(seconds, 1),
            "threads": threads,
            "machine_minutes": round(seconds * threads / 60, 2),
            "load_average": round(load, 2),
            "train_cpu_seconds": round(cpu[0], 1) if cpu else None,
            "guidance_scale": guidance_scale,
            "git_commit": commit,
            "git_dirty": dirty,
            "sample_noise": get_preset(preset).sample_noise,
            "sample_seconds": round(time.time() - t0, 1),
        }
        for tier, (scores, summary) in results.items():
            scores.drop(columns=["skills"]).to_csv(rung / f"scores_{tier}.csv", index=False)
            summary.to_csv(rung / f"summary_{tier}.csv")
            for group, values in summary["mean"].items():
                row[f"{tier}_{group}"] = round(float(values), 4)
        shutil.copy(train_dir / "options.json", rung / "options.json")
        done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        done.to_csv(table_path, index=False)
        (out / "ladder.json").write_text(json.dumps({"rungs": sorted(rungs), "sizes": sizes}, indent=1))
    return done


def collect(paths: list[str | Path]) -> pd.DataFrame:
    """Every ladder.csv under ``paths`` as one table (one row per rung)."""
    files = sorted({f for p in paths for f in Path(p).rglob("ladder.csv")})
    if not files:
        raise FileNotFoundError(f"No ladder.csv under {', '.join(map(str, paths))}: climb a ladder first.")
    table = pd.concat([pd.read_csv(f).assign(ladder=f.parent.name) for f in files], ignore_index=True)
    if (
        "sample_noise" not in table
    ):  # rungs judged before the column existed started every prompt from one draw
        table["sample_noise"] = None
    return table.assign(sample_noise=table["sample_noise"].fillna("shared"))


def plot(table: pd.DataFrame, out_dir: str | Path, stem: str = "ladder") -> list[Path]:
    """Verdict (all-or-nothing) on both tiers against training machine-minutes, one line per ladder."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True)
    for ax, (col, title) in zip(
        axes,
        [
            ("geneval_overall", "GenEval-style tier (seen compositions)"),
            ("heldout_overall", "held-out tier (new compositions)"),
        ],
        strict=True,
    ):
        for label, group in table.groupby("ladder"):  # the folder: preset (or lever), encoder, strategy, seed
            group = group.sort_values("machine_minutes")
            ax.plot(group["machine_minutes"], group[col], marker="o", label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training machine-minutes (1 thread; load in ladder.csv)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("verdict (all-or-nothing)")
    axes[0].axhline(0.5, color="gray", ls=":", lw=1)
    axes[1].axhline(0.2, color="gray", ls=":", lw=1)
    handles, labels = axes[0].get_legend_handles_labels()  # below both panels: no point hides behind it
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.042 * ((len(labels) + 1) // 2), 1, 1))
    written = save_figure(fig, out_dir, stem, table)
    md = Path(out_dir) / f"{stem}.md"
    md.write_text(markdown_table(table))
    return [*written, md]


_MD_COLUMNS = {  # ladder.csv column -> the docs table's header
    "steps": "steps",
    "machine_minutes": "machine-min",
    "seconds_per_step": "s/step",  # train_seconds / steps: minutes alone mix machines up to 2x apart
    "load_average": "load",
    "geneval_overall": "GenEval-style",
    "geneval_single_object": "single",
    "geneval_two_object": "two obj",
    "geneval_counting": "counting",
    "geneval_colors": "colours",
    "geneval_position": "position",
    "geneval_color_attr": "colour attr",
    "heldout_overall": "held-out",
    "sample_noise": "noise",
}


def markdown_table(table: pd.DataFrame) -> str:
    """The ladder as the Markdown table docs/training.md quotes (so its numbers are pasted, never typed)."""
    rows = table.sort_values(["ladder", "steps"]).assign(
        seconds_per_step=lambda t: t["train_seconds"] / t["steps"]
    )
    lines = ["| ladder | " + " | ".join(_MD_COLUMNS.values()) + " |", "|---" * (len(_MD_COLUMNS) + 1) + "|"]
    for _, r in rows.iterrows():
        cells = [
            str(r[c])
            if c == "sample_noise"
            else f"{r[c]:.0f}"
            if c == "steps"
            else f"{r[c]:.1f}"
            if c in ("machine_minutes", "load_average")
            else f"{r[c]:.3f}"
            if c.endswith("overall")
            else f"{r[c]:.2f}"
            for c in _MD_COLUMNS
        ]
        lines.append(f"| {r['ladder']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# What limits single objects: the verdict by object, and how often nothing is drawn

_OBJECT = {
    "single_object": rf"\b({'|'.join(SHAPES)})\b",  # the shape a one-object prompt names
    "colors": rf"\b((?:{'|'.join(PALETTE)}) (?:{'|'.join(SHAPES)}))\b",  # "yellow circle"
}


def object_breakdown(table: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """Per rung of ``table`` (from ``collect``): the single-object and colours tasks' verdict by the object
    the prompt names, and the share of its images in which the judge found no object at all.

    Why: a task mean hides which objects fail and how. "Draws nothing" (``empty``) and "draws the wrong or
    extra objects" (``verdict`` low, ``empty`` 0) need different levers.
    """
    rows = []
    for _, rung in table.iterrows():
        path = rung_dir(Path(root) / rung["ladder"], int(rung["steps"])) / "scores_geneval.csv"
        if not path.is_file():
            continue
        scores = pd.read_csv(path)
        for task, pattern in _OBJECT.items():
            part = scores[scores["task"] == task]
            part = part.assign(object=part["prompt"].str.extract(pattern)[0])
            for obj, group in part.dropna(subset=["object"]).groupby("object"):
                rows.append(
                    {
                        "ladder": rung["ladder"],
                        "steps": int(rung["steps"]),
                        "machine_minutes": rung["machine_minutes"],
                        "task": task,
                        "object": obj,
                        "prompts": len(group),
                        "verdict": round(float(group["score"].mean()), 4),
                        "empty": round(float((group["n_objects"] == 0).mean()), 4),
                    }
                )
    return pd.DataFrame(rows)


def write_object_breakdown(
    breakdown: pd.DataFrame, out_dir: str | Path, stem: str = "ladder_objects"
) -> list[Path]:
    """``<stem>.csv`` (long form) and ``<stem>.md``: single objects by shape as "verdict (empty share)", and
    the colours task's verdict by colour and shape, one row per rung."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / f"{stem}.csv"
    breakdown.to_csv(csv, index=False)
    lines = []
    for task, cell, title in [
        (
            "single_object",
            lambda r: f"{r.verdict:.2f} ({r.empty:.2f})",
            "single object: verdict (share empty)",
        ),
        ("colors", lambda r: f"{r.verdict:.2f}", "colours task: verdict"),
    ]:
        part = breakdown[breakdown["task"] == task]
        if part.empty:
            continue
        objects = sorted(part["object"].unique())
        lines += [
            f"{title}",
            "",
            "| ladder | steps | " + " | ".join(objects) + " |",
            "|---" * (len(objects) + 2) + "|",
        ]
        for (ladder, steps), rung in part.groupby(["ladder", "steps"]):
            by_object = {r.object: cell(r) for r in rung.itertuples()}
            lines.append(
                f"| {ladder} | {steps} | " + " | ".join(by_object.get(o, "-") for o in objects) + " |"
            )
        lines.append("")
    md = out_dir / f"{stem}.md"
    md.write_text("\n".join(lines))
    return [csv, md]
