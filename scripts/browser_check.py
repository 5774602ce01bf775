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

W3C_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


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
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"WebDriver {method} {path} failed: {err.read().decode()[:500]}") from None

    def start(self, chromium: str, width: int, height: int) -> None:
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        args.append(f"--window-size={width},{height}")
        options = {"binary": chromium, "args": args}
        # pageLoadStrategy none: navigation returns at once and wait_for polls (JupyterLab loads slowly
        # on a busy machine)
        match = {"browserName": "chrome", "goog:chromeOptions": options, "pageLoadStrategy": "none"}
        caps = {"capabilities": {"alwaysMatch": match}}
        self.session = self.call("POST", "/session", caps)["sessionId"]
        self.call("POST", self.s("/timeouts"), {"script": 300_000})  # a busy renderer answers late

    def s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def script(self, source: str, *args):
        return self.call("POST", self.s("/execute/sync"), {"script": source, "args": list(args)})

    def wait_for(self, source: str, what: str, timeout: float, *args):
        """Poll a script until it returns something truthy; fail saying what never happened."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.script(source, *args)
            except RuntimeError as err:  # the page is still loading: ask again
                if "script timeout" not in str(err) and "javascript error" not in str(err):
                    raise
                value = None
            if value:
                return value
            time.sleep(1.0)
        raise TimeoutError(f"Gave up after {timeout:.0f} s waiting for {what}.")

    def element(self, source: str, what: str) -> str:
        """The element a script returns, as a WebDriver reference."""
        found = self.script(source)
        if not isinstance(found, dict) or W3C_ELEMENT not in found:
            raise RuntimeError(f"Could not find {what} on the page (got {found!r}).")
        return found[W3C_ELEMENT]


IMAGE_SRC = """
const img = document.querySelector('.jp-OutputArea-output .widget-image');
return img && img.src && img.complete && img.naturalWidth > 0 ? img.src : null;  // a new blob: URL per redraw
"""
STATUS = """
const html = [...document.querySelectorAll('.jp-OutputArea-output .widget-html-content')];
return html.map(h => h.innerText).filter(t => t.includes('encoder calls')).join(' | ');
"""
OUTPUTS = """
return [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.className + ': ' + o.innerText)
    .join('\\n---\\n') || '(none)';
"""
ERRORS = """
return [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText)
    .filter(t => t.includes('Traceback') || t.includes('Error:')).join('\\n---\\n');
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="JupyterLab URL of the notebook, with ?token=")
    parser.add_argument("--out", required=True, help="screenshot PNG to write")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for the notebook to render")
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
            600,
        )
        driver.wait_for(
            "const w = window.jupyterapp.shell.currentWidget;"
            "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.connectionStatus === 'connected');",
            "the kernel to start",
            600,
        )
        driver.script("return window.jupyterapp.commands.execute('notebook:run-all-cells').then(() => true);")
        try:
            before = driver.wait_for(IMAGE_SRC, "the explorer's figure", args.timeout)
        except TimeoutError:
            debug = Path(args.out).with_suffix(".debug.png")
            debug.write_bytes(base64.b64decode(driver.call("GET", driver.s("/screenshot"))))
            print(
                f"browser_check: outputs so far:\n{driver.script(OUTPUTS)}\n(page: {debug})", file=sys.stderr
            )
            raise
        print(f"browser_check: notebook ran, explorer rendered in {time.monotonic() - started:.0f} s")
        print(f"browser_check: {driver.script(STATUS)}")
        button = driver.element(
            "return [...document.querySelectorAll('.jp-OutputArea-output button')]"
            ".find(b => b.innerText.trim() === 'first token out') || null;",
            "the 'first token out' button",
        )
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
        widget = driver.element(
            "return document.querySelector('.jp-OutputArea-output .widget-image').closest('.jp-OutputArea-output');",
            "the explorer's output",
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
