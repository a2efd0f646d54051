"""A headless Chromium driven over the DevTools protocol: open a page, click a tab, read text.

The Prefect UI is a single-page app that draws its run graph on a canvas; what a user reads
(tab contents, artifact pages) only exists after the scripts ran, so the tests read it from a
real browser rather than from the HTML the server sends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from websockets.sync.client import connect

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    return next((p for b in BINARIES if (p := shutil.which(b))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """One browser tab: ``goto``, ``text``, ``click``, ``screenshot``."""

    def __init__(self, ws_url: str) -> None:
        self._ws = connect(ws_url, max_size=2**26, open_timeout=30)
        self._id = 0

    def call(self, method: str, **params: object) -> dict:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str) -> object:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        return res["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.eval(f"Boolean({expression})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never had {expression}")
            time.sleep(0.25)

    def text(self) -> str:
        return str(self.eval("document.body ? document.body.innerText : ''"))

    def wait_for_text(self, *needles: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while not all(n in (text := self.text()) for n in needles):
            if time.monotonic() > deadline:
                missing = [n for n in needles if n not in text]
                raise TimeoutError(f"page never showed {missing}; it shows:\n{text[:3000]}")
            time.sleep(0.5)
        return text

    def click_text(self, label: str) -> None:
        """Click the first button, link or tab whose own text is ``label``."""
        found = self.eval(
            "(() => { const el = [...document.querySelectorAll('button, a, [role=tab], li')]"
            f".find(e => e.innerText && e.innerText.trim() === {json.dumps(label)});"
            " if (el) { el.click(); return true; } return false; })()")
        if not found:
            raise LookupError(f"no clickable {label!r} on the page")

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot",
                                                    format="png")["data"]))


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 1200) -> Iterator[Page]:
    """A headless Chromium on a free loopback port; stopped (its process group) on exit."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", f"--remote-debugging-port={port}",
                             f"--user-data-dir={profile}", f"--window-size={width},{height}",
                             "about:blank"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                            timeout=2) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.25)
        page = Page(pages[0]["webSocketDebuggerUrl"])
        page.call("Page.enable")
        yield page
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)
