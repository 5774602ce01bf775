"""One process per run: the RUNNING marker is a lock, created atomically and kept alive by a heartbeat.

Two `grid run` processes (or SLURM jobs) started on one grid both plan the same pending runs; the
lock is what keeps them from training the same run into the same folder at once. The runner claims
a run right before executing it (not when it plans), so the second process skips that run and says so.

    runs/<grid>/<run-id>/RUNNING   {"pid", "host", "started", "token"}; its mtime is the heartbeat

The marker is written whole to a temporary file and hard-linked into place (``link`` fails when the
name exists: an atomic create, also on NFS). The holder touches it every ``HEARTBEAT_SECONDS``. A lock
is stale when its pid is dead on this host, or when its heartbeat is older than ``STALE_SECONDS`` (a
job killed on another node, or a reused pid); a stale lock is reported and taken over: it is renamed
away first, and put back if what was renamed turned out to be a fresh lock of another process.
Torch-free: `grid status` reads it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from t2istudy.staging import running

LOCK = "RUNNING"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0  # no heartbeat for 10 min: the holder is gone (20 missed beats)
UNREADABLE_GRACE_SECONDS = 60.0  # a lock that cannot be read yet may be one being written (old runners)


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


def read_holder(run_dir: Path) -> Holder | None:
    """The lock's holder; None when the run is not locked. An unreadable marker (torn, or written by a
    runner that predates the lock) counts as a holder with pid -1 and is stale once past a short grace."""
    path = Path(run_dir) / LOCK
    try:
        age = time.time() - path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
        return Holder(
            int(info.get("pid", -1)),
            str(info.get("host", "")),
            str(info.get("started", "")),
            str(info.get("token", "")),
            age,
        )
    except (ValueError, TypeError, AttributeError):
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
            holder = read_holder(self.path.parent)
            if holder is not None and holder.token != self.token:
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
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "token": token,
    }
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
    holder = read_holder(run_dir)
    return Claim(None, holder or Holder(-1, "?", "?", "", 0.0))


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
    moved = read_holder_file(aside)
    if moved is not None and moved.token != stale.token:
        try:
            os.link(aside, path)  # put the live lock back (fails only if a third process created one)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def read_holder_file(path: Path) -> Holder | None:
    """:func:`read_holder` for a marker under another name (one renamed aside)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return Holder(int(info["pid"]), str(info["host"]), str(info["started"]), str(info["token"]), 0.0)
    except (OSError, ValueError, TypeError, KeyError):
        return None
