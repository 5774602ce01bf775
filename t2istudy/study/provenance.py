"""What a run ran with: the code version and the versions that can change its numbers, and the device.

Recorded in every run's params.json (`provenance`), so that rerunning the study later can tell whether
a different number comes from different code or a different environment; the analysis tables say when
the runs they compare differ in any of these (:func:`t2istudy.study.analysis.provenance_note`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from t2istudy.study.paths import REPO

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "papermill")
FIELDS = ("git_commit", "git_dirty", "python", *PACKAGES, "device")


def git_state(repo=REPO) -> tuple[str | None, bool | None]:
    """(commit, dirty): HEAD and whether tracked files differ from it; (None, None) outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device() -> str:
    """The accelerator the run's training and sampling use: the first CUDA device's name, else the CPU."""
    import torch  # here, not at the top: the read side (run_folder, run_results) stays torch-free

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    return f"cpu: {platform.machine()}, {os.cpu_count()} cores"


def provenance() -> dict[str, str | bool | None]:
    """Every field of FIELDS for this process: git commit and dirty flag, versions, device."""
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        **{name: package_version(name) for name in PACKAGES},
        "device": device(),
    }
