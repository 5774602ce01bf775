"""The explorer in a real browser (scripts/browser_check.sh), where Chromium is installed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_CHROMIUM = bool(shutil.which("chromium") and shutil.which("chromedriver"))


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_CHROMIUM,
    reason="browser check skipped: chromium and chromedriver are not installed "
    "(apt-get install chromium chromium-driver, or run scripts/browser_check.sh as root, which installs them)",
)
def test_explorer_renders_and_redraws_in_headless_chromium(tmp_path):
    shot = tmp_path / "explorer.png"
    env = {**os.environ, "PY": sys.executable, "BROWSER_CHECK_INSTALL": "0"}
    result = subprocess.run(
        ["bash", "scripts/browser_check.sh", str(shot)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "after clicking 'first token out'" in result.stdout, result.stdout
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
