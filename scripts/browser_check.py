"""Drive headless Chromium through chromedriver (W3C WebDriver over plain HTTP, no extra package):
open the explorer notebook in a running JupyterLab, run it, click one control, save a screenshot.

Called by scripts/browser_check.sh, which starts JupyterLab; run that script, not this file.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

W3C_ELEMENT = "element-6066-11e4-a52e-4f678f56a6ff"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few WebDriver commands this check needs."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"WebDriver {method} {path} failed: {err.read().decode()[:500]}") from None

    def start(self, chromium: str, width: int, height: int) -> None:
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        args.append(f"--window-size={width},{height}")
        options = {"binary": chromium, "args": args}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def script(self, source: str, *args):
        return self.call("POST", self.s("/execute/sync"), {"script": source, "args": list(args)})

    def wait_for(self, source: str, what: str, timeout: float, *args):
        """Poll a script until it returns something truthy; fail saying what never happened."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.script(source, *args)
            if value:
                return value
            time.sleep(1.0)
        raise TimeoutError(f"Gave up after {timeout:.0f} s waiting for {what}.")

    def find(self, xpath: str) -> str:
        return self.call("POST", self.s("/element"), {"using": "xpath", "value": xpath})[W3C_ELEMENT]


IMAGE_SRC = """
const img = document.querySelector('.jp-OutputArea-output .widget-image');
return img && img.src && img.src.length > 1000 ? img.src.length + ':' + img.src.slice(-64) : null;
"""
STATUS = """
const html = [...document.querySelectorAll('.jp-OutputArea-output .widget-html-content')];
return html.map(h => h.innerText).filter(t => t.includes('encoder calls')).join(' | ');
"""
ERRORS = """
return [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText)
    .filter(t => t.includes('Traceback') || t.includes('Error:')).join('\\n---\\n');
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="JupyterLab URL of the notebook, with ?token=")
    parser.add_argument("--out", required=True, help="screenshot PNG to write")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the notebook to render")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_exe = shutil.which("chromedriver")
    if not chromium or not driver_exe:
        print("browser_check: chromium or chromedriver not found", file=sys.stderr)
        return 2
    port = free_port()
    driver_proc = subprocess.Popen(
        [driver_exe, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    driver = WebDriver(port)
    try:
        for _ in range(50):
            try:
                driver.call("GET", "/status")
                break
            except OSError:
                time.sleep(0.2)
        driver.start(chromium, 1400, 2200)
        started = time.monotonic()
        driver.call("POST", driver.s("/url"), {"url": args.url})
        driver.wait_for(
            "return !!(window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell'));",
            "JupyterLab to open the notebook",
            180,
        )
        driver.wait_for(
            "const w = window.jupyterapp.shell.currentWidget;"
            "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.connectionStatus === 'connected');",
            "the kernel to start",
            180,
        )
        driver.script("return window.jupyterapp.commands.execute('notebook:run-all-cells').then(() => true);")
        try:
            before = driver.wait_for(IMAGE_SRC, "the explorer's figure", args.timeout)
        except TimeoutError:
            print(driver.script(ERRORS) or "(no error output)", file=sys.stderr)
            raise
        print(f"browser_check: notebook ran, explorer rendered in {time.monotonic() - started:.0f} s")
        print(f"browser_check: {driver.script(STATUS)}")
        button = driver.find("//button[normalize-space()='first token out']")
        driver.call("POST", driver.s(f"/element/{button}/click"), {})
        driver.wait_for(
            f"const v = (() => {{{IMAGE_SRC}}})(); return v && v !== {json.dumps(before)};",
            "the figure to redraw after the click",
            120,
        )
        print(f"browser_check: after clicking 'first token out': {driver.script(STATUS)}")
        errors = driver.script(ERRORS)
        if errors:
            print(f"browser_check: the notebook printed errors:\n{errors}", file=sys.stderr)
            return 1
        widget = driver.find(
            "//div[contains(@class, 'jp-OutputArea-output')][.//img[contains(@class, 'widget-image')]]"
        )
        shot = driver.call("GET", driver.s(f"/element/{widget}/screenshot"))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_bytes(base64.b64decode(shot))
        print(f"browser_check: screenshot of the rendered widget -> {args.out}")
        return 0
    finally:
        if driver.session:
            try:
                driver.call("DELETE", driver.s(""))
            except (OSError, RuntimeError):
                pass
        driver_proc.terminate()
        driver_proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
