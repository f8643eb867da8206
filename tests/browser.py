"""A real headless Chromium for tests, driven by chromedriver over the W3C WebDriver HTTP protocol (stdlib only).

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them). Each
``Browser`` starts its own chromedriver on a free port with a fresh ``--user-data-dir`` and
stops it (by pid) on ``close()``. Before every page load a small script (through chromedriver's
DevTools bridge) records uncaught errors, unhandled rejections and ``console.error`` calls in
``window.__errors``, so a test can assert that a page loads with no console error.

By hand::

    python tests/browser.py leaderboard/index.html shot.png    # loads the page, writes a screenshot
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PACKAGES = "chromium chromium-driver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--window-size=1400,1000"]
CAPTURE = """
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push("error: " + (e.message || (e.target && e.target.src))),
                        true);
window.addEventListener("unhandledrejection", (e) => window.__errors.push("rejection: " + e.reason));
const __consoleError = console.error.bind(console);
console.error = (...args) => { window.__errors.push("console.error: " + args.join(" ")); __consoleError(...args); };
"""


class BrowserUnavailable(RuntimeError):
    """Chromium or chromedriver is missing or does not start; the message says why."""


def find_binaries() -> tuple[str, str]:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        raise BrowserUnavailable(f"chromium and chromedriver not found (Debian packages: {PACKAGES})")
    return chrome, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    def __init__(self):
        chrome, driver = find_binaries()
        self.profile = Path(tempfile.mkdtemp(prefix="capsbench-chromium-"))
        self.port = _free_port()
        self.log = open(self.profile / "chromedriver.log", "w")  # noqa: SIM115 - closed in close()
        self.driver = subprocess.Popen([driver, f"--port={self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = None
        try:
            self._wait_ready()
            caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                "binary": chrome, "args": [*FLAGS, f"--user-data-dir={self.profile / 'profile'}"]}}}}
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except Exception:
            self.close()
            raise

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.driver.poll() is not None:
                raise BrowserUnavailable(f"chromedriver exited with {self.driver.returncode}")
            try:
                if self._call("GET", "/status", session=False)["ready"]:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise BrowserUnavailable(f"chromedriver did not become ready in {timeout:.0f} s")

    def _call(self, method: str, path: str, body: dict | None = None, session: bool = True):
        url = self.base + (f"/session/{self.session}" if session and self.session else "") + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read() or b"{}").get("value")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"WebDriver {method} {path}: {exc.code} {exc.read()[:400]!r}") from None

    # -- what tests use
    def open(self, url: str) -> None:
        self._call("POST", "/goog/cdp/execute", {"cmd": "Page.addScriptToEvaluateOnNewDocument",
                                                 "params": {"source": CAPTURE}})
        self._call("POST", "/url", {"url": url})

    def run(self, script: str, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))
        return path

    def close(self) -> None:
        if self.session:
            try:
                self._call("DELETE", "")
            except (OSError, RuntimeError, urllib.error.URLError):
                pass
            self.session = None
        if self.driver.poll() is None:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


if __name__ == "__main__":
    browser = Browser()
    try:
        browser.open(Path(sys.argv[1]).resolve().as_uri())
        print("errors:", browser.run("return window.__errors"))
        print("screenshot:", browser.screenshot(Path(sys.argv[2] if len(sys.argv) > 2 else "screenshot.png")))
    finally:
        browser.close()
