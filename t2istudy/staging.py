"""Staging folders: a checkpoint, a final save or a cache entry is written beside its place, then renamed in.

The staging name carries its writer (``<name>.tmp-<host>-<pid>-<random>``), so two processes writing the
same thing never share a folder, and what a killed writer left behind (SIGKILL, a lost session, an OOM
kill) can be told apart from a write in progress. An embedding cache's leftover is a few hundred MB to tens
of GB, so the next writer of the same name removes it. Another machine's staging folders (a shared file
system on a cluster) are never touched: their writer may still be running, and its pid cannot be checked.

Below every subpackage and importing none of them, like figure_files.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path


def host() -> str:
    """This machine's name as it appears in staging names (no '-', so that the name parses)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", socket.gethostname()) or "host"


def temporary_name(name: str) -> str:
    """``<name>.tmp-<host>-<pid>-<random>``: where ``name`` is written before its rename, unique per process
    so that two processes saving the same step never write into one folder."""
    return f"{name}.tmp-{host()}-{os.getpid()}-{secrets.token_hex(4)}"


def stale_temporaries(folder: str | Path, name: str) -> list[Path]:
    """Staging folders of ``name*`` in ``folder`` that nobody is writing any more: those of processes of
    this machine that have ended, the fixed ``<name>.tmp`` of earlier versions, and their ``<name>.tmp-<pid>``
    (this machine's, as they were written before the host was named). Another machine's are left alone."""
    stale, this_machine = [], host()
    for path in Path(folder).glob(f"{name}*.tmp*"):
        _, sep, owner = path.name.rpartition(".tmp")
        if not sep or not path.is_dir():
            continue
        if owner == "":  # an earlier version's fixed name
            stale.append(path)
            continue
        if owner[1:].isdigit():  # an earlier version's .tmp-<pid>, written on this machine
            this_host, pid = True, owner[1:]
        else:
            writer, _, rest = owner[1:].partition("-")
            this_host, pid = writer == this_machine, rest.partition("-")[0]
        if this_host and pid.isdigit() and not running(int(pid)):
            stale.append(path)
    return sorted(stale)


def running(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a reused pid reads as running: kept)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def staging_folder(entry: str | Path) -> Path:
    """A new, empty folder beside ``entry`` to build it in, after removing what killed builds of the same
    entry left behind on this machine (each named on stdout)."""
    entry = Path(entry)
    if entry.parent.is_dir():
        for stale in stale_temporaries(entry.parent, entry.name):
            if stale.name.rpartition(".tmp")[0] == entry.name:  # not an entry whose name extends this one
                shutil.rmtree(stale, ignore_errors=True)
                print(f"[staging] removed {stale}: an unfinished write whose process has ended")
    tmp = entry.with_name(temporary_name(entry.name))
    tmp.mkdir(parents=True)
    return tmp


class NotWritable(PermissionError, ValueError):
    """A folder that outputs must go to cannot be written: a PermissionError, and a ValueError so that the
    command line reports it in one line like every other bad input."""


def check_writable(folder: str | Path, what: str, fix: str) -> Path:
    """Make ``folder`` and write (then remove) a file in it, so that work fails before it starts, naming the
    folder (``what``: "The runs folder") and ``fix``, when its outputs could not be written. Returns it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise NotWritable(f"{what} {folder} is not writable ({err.strerror or err}): {fix}") from err
    return folder
