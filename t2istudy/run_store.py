"""A run folder on disk: its layout, atomic writes, the one torn-line JSONL reader, its states, markers and lock.

Two kinds of folder share these rules. A training folder (`t2istudy.diffusion.train` writes it):

    options.json                     every option, resolved, plus `derived`
    train_log.jsonl                  one JSON line per logging step: step, loss, lr, ...
    checkpoints/checkpoint-<step>/   a complete save (checkpoint-<step>.tmp-<host>-<pid>-<random>/: one in progress)
    final/                           the trained weights; final/summary.json is written last

A study run (`t2istudy.study.runner` executes `notebooks/run.ipynb` into it):

    params.json     schema_version, grid, run_id, notebook, the grid's parameters, provenance
    notebook.ipynb  the executed notebook (kept, error highlighted, when a cell fails)
    metrics.json    metrics["tiers"][tier] = {overall, groups} for every benchmark tier, plus training facts
    scores*.csv     one row per benchmark prompt, one file per tier (needed for paired CIs)
    train/ samples/ logs/   heavy or noisy, git-ignored
    RUNNING         the lock of the process executing the run: pid, host, token; its mtime is the heartbeat
    .gitignore      "*" while it runs: a commit made meanwhile cannot pick up a half-written run
    FAILED          the error, when the run failed (the next batch retries it)
    DONE            written last: a run is complete only when DONE exists (and, for a grid's runs, a readable
                    metrics.json; DONE beside FAILED is never complete)

Why markers written last and a lock: a batch can be killed at any moment (a laptop lid, a SLURM time limit)
and started again; finished runs are never executed twice or lost, a half-written run is executed again, and
two runners on one grid never train the same run into one folder. The lock is written whole to a temporary
file and hard-linked into place (``link`` fails when the name exists: an atomic create, also on NFS); a lock
whose pid is dead on this host, or whose heartbeat is older than ``STALE_SECONDS``, is taken over.

Torch-free and below every subpackage (only `staging` beneath it): `grid status` reads it in a second.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from t2istudy.staging import running, temporary_name

# A training folder
OPTIONS = "options.json"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
SUMMARY = "summary.json"  # in final/: steps, wall time, last loss
# A study run
PARAMS = "params.json"
METRICS = "metrics.json"
DONE, FAILED, LOCK = "DONE", "FAILED", "RUNNING"
END_MARKERS = (DONE, FAILED)

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0  # no heartbeat for 10 min: the holder is gone (20 missed beats)
UNREADABLE_GRACE_SECONDS = 60.0  # a lock that cannot be read yet may be one being written (old runners)


class CorruptFile(ValueError):
    """A run file that cannot be read (a write cut short, an edit): names the file and a fix that keeps
    the run's weights. A ValueError, so that the command line prints it without a traceback."""

    def __init__(self, path: Path, reason: str, fix: str = ""):
        self.path, self.reason = Path(path), reason
        fix = fix or (
            f"Move it aside (mv {path} {path}.bad) and run the grid again: the run is executed again and "
            f"keeps its trained weights."
        )
        super().__init__(f"{path} {reason}. {fix}")


# ---- reading and writing ---------------------------------------------------------------------------------


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object; :class:`CorruptFile` naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CorruptFile(path, f"is not valid JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise CorruptFile(path, f"is not text ({err})") from err
    if not isinstance(data, dict):
        raise CorruptFile(path, f"holds a {type(data).__name__}, not a JSON object")
    return data


def read_jsonl(path: str | Path, key: str | None = None) -> list[dict[str, Any]]:
    """A JSON-lines log (``train_log.jsonl``), tolerant of the one tear a kill or a power loss can cause.

    Blank and NUL-only lines (power loss) are skipped. A torn last line is dropped with a warning naming the
    file (the run resumes from its checkpoint and logs that step again). A bad line before the last one is
    damage, not a tear: :class:`CorruptFile` naming the file, the line and the fix. ``key``: every record
    must hold that integer field (``step``). [] when the file is absent.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    lines = [(n, line) for n, line in enumerate(text, 1) if line.strip(" \t\r\x00")]
    records = []
    for k, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a {type(record).__name__}, not a JSON object")
            if key is not None and not isinstance(record.get(key), int):
                raise ValueError(f"no integer {key!r}")
        except ValueError as err:
            if k == len(lines) - 1:
                warnings.warn(
                    f"{path}: dropped its torn last line {number} ({line[:40]!r}), a write cut short by a kill "
                    "or a power loss; the lines before it are kept.",
                    stacklevel=2,
                )
                break
            raise CorruptFile(
                path,
                f"line {number} is not valid JSON ({err}) and is not the last line, so not a torn write",
                fix=(
                    f"Move the log aside (mv {path} {path}.bad): the log only records progress; the run's "
                    f"checkpoints and weights are kept and the next `grid run` resumes it."
                ),
            ) from err
        records.append(record)
    return records


def write_text(path: str | Path, text: str) -> None:
    """Write atomically (temp file + rename) so that a kill never leaves half a file. The temp name is unique
    to its writer: two processes writing one file (two `grid run`s writing grid.json) never share it."""
    path = Path(path)
    tmp = path.with_name(temporary_name(path.name))
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """:func:`write_text` of a JSON object (numpy scalars, tuples and paths as JSON values)."""
    write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def now() -> str:
    """The time for markers and records: UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- states and markers ----------------------------------------------------------------------------------


def markers(out: Path) -> dict[str, int]:
    """The run's end markers and their mtimes: what a runner saw when it planned, compared again right
    before it executes, so that a run another runner finished (or failed) meanwhile is not run twice."""
    found = {}
    for name in END_MARKERS:
        try:
            found[name] = (Path(out) / name).stat().st_mtime_ns
        except FileNotFoundError:
            pass
    return found


def run_state(run_dir: Path, *, metrics: bool = False) -> str:
    """done | failed | running | interrupted | pending | corrupt (see :func:`run_problem`).

    ``metrics``: the run must also have a readable metrics.json to be done (a grid's runs: the runner
    requires it), so that a run whose metrics were lost is executed again instead of counted.
    """
    run_dir = Path(run_dir)
    if run_problem(run_dir, metrics=metrics):
        return "corrupt"
    if (run_dir / DONE).exists():
        return "done"
    if (run_dir / FAILED).exists():
        return "failed"
    holder = read_holder(run_dir)
    if holder is not None:
        return "interrupted" if holder.stale_reason() else "running"
    return "interrupted" if (run_dir / PARAMS).exists() else "pending"


def run_problem(run_dir: Path, *, metrics: bool = False) -> str | None:
    """Why a run that looks finished cannot count as done; None when nothing is wrong.

    DONE beside FAILED (two processes finished one run, or a run finished by hand after a failure), and,
    with ``metrics``, DONE with metrics.json missing or unreadable. `grid run` executes such a run again:
    it reuses its trained weights (train/final) and only samples and scores again.
    """
    run_dir = Path(run_dir)
    if not (run_dir / DONE).exists():
        return None
    rerun = (
        f"Run `t2istudy grid run <grid file> --only {run_dir.name}`: it is executed again and reuses its "
        f"trained weights (only sampling and scoring run again)."
    )
    if (run_dir / FAILED).exists():
        return f"corrupt: DONE and FAILED are both in {run_dir}, so it is not known which is true. {rerun}"
    if metrics:
        path = run_dir / METRICS
        if not path.is_file():
            return f"incomplete: {path} is missing although DONE exists. {rerun}"
        try:
            read_json(path)
        except CorruptFile as err:
            return f"corrupt: {path} {err.reason}. {rerun}"
    return None


# ---- the lock --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """Who holds a run's lock, as its RUNNING marker says."""

    pid: int
    host: str
    started: str
    token: str
    age: float  # seconds since its last heartbeat

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}, heartbeat {self.age:.0f} s ago"

    def stale_reason(self) -> str | None:
        """Why this holder is gone (None: it may be alive). Another host's pid cannot be checked from
        here: only a missing heartbeat tells that its job died."""
        if self.host == socket.gethostname() and not running(self.pid):
            return f"pid {self.pid} on this host is not running"
        if self.age > STALE_SECONDS:
            return f"no heartbeat for {self.age / 60:.0f} min (limit {STALE_SECONDS / 60:.0f} min)"
        return None


def read_holder(run_dir: Path, name: str = LOCK) -> Holder | None:
    """The lock's holder; None when the run is not locked. An unreadable marker (torn, or written by a
    runner that predates the lock) counts as a holder with pid -1 and is stale once past a short grace.
    ``name``: the marker under another name (one renamed aside)."""
    path = Path(run_dir) / name
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
        return Holder(int(info["pid"]), str(info["host"]), str(info["started"]), str(info["token"]), age)
    except (ValueError, TypeError, KeyError, AttributeError):
        return Holder(-1, "?", "?", "", STALE_SECONDS + 1 if age > UNREADABLE_GRACE_SECONDS else 0.0)


class RunLock:
    """A claimed run: heartbeats until released; ``held()`` says whether it is still this process's."""

    def __init__(self, run_dir: Path, token: str):
        self.path = Path(run_dir) / LOCK
        self.token = token
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"heartbeat {run_dir}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if not self.held():
                return  # taken over (--rerun-running): the new holder beats now
            try:
                os.utime(self.path)
            except OSError:
                pass  # the next beat retries; a run outliving STALE_SECONDS without one may be taken over

    def held(self) -> bool:
        holder = read_holder(self.path.parent)
        return holder is not None and holder.token == self.token

    def release(self) -> None:
        """Stop the heartbeat and remove the marker, if it is still this process's."""
        self._stop.set()
        if self.held():
            self.path.unlink(missing_ok=True)


@dataclass
class Claim:
    """The outcome of :func:`claim`: ``lock`` when this process now holds the run, else ``holder``
    (the live process that does). ``note`` reports a stale lock that was taken over."""

    lock: RunLock | None
    holder: Holder | None = None
    note: str = ""


def claim(run_dir: Path, *, force: bool = False) -> Claim:
    """Take the run's lock atomically. A live holder keeps it (``force``: unless it is on another host,
    whose pid cannot be checked: `grid run --rerun-running` after a job died); a stale one is taken over."""
    run_dir = Path(run_dir)
    token = uuid.uuid4().hex
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": now(), "token": token}
    note = ""
    for _ in range(3):  # create; on a stale lock take it over and create again
        if _create(run_dir / LOCK, info):
            return Claim(RunLock(run_dir, token), note=note)
        holder = read_holder(run_dir)
        if holder is None:
            continue  # released meanwhile
        reason = holder.stale_reason()
        if reason is None and force and holder.host != socket.gethostname():
            reason = "--rerun-running"
        if reason is None:
            return Claim(None, holder)
        if _remove_stale(run_dir / LOCK, holder):
            note = f"took over a stale lock ({holder.describe()}: {reason})"
    return Claim(None, read_holder(run_dir) or Holder(-1, "?", "?", "", 0.0))


def _create(path: Path, info: dict) -> bool:
    """Create the marker whole, or return False when it exists."""
    tmp = path.with_name(f".{LOCK}.{info['token']}")
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: an exclusive create (not atomic with its content)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(info) + "\n")
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale(path: Path, stale: Holder) -> bool:
    """Rename the stale marker away (atomic: of two processes taking over, one wins). If what was renamed
    is not the marker judged stale (another process re-created it meanwhile), put it back."""
    aside = path.with_name(f".{LOCK}.stale.{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = read_holder(aside.parent, aside.name)
    if moved is not None and moved.token != stale.token and moved.pid != -1:
        try:
            os.link(aside, path)  # put the live lock back (fails only if a third process created one)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True
