"""A real browser for tests: Debian's ``chromium``, headless, driven over the DevTools protocol.

The protocol is JSON over a WebSocket, so the ``websockets`` client the project already has is all
the driver needed (Playwright's own browser downloads are not reachable from CI). ``.ci/run``
installs the ``chromium`` package; without it the tests that need a browser skip, saying so.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import terminate

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


class Browser:
    """One headless page: navigate, evaluate JavaScript, wait for the DOM, take a screenshot."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        binary = chromium_binary()
        if binary is None:
            pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium package)")
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._ids = itertools.count(1)
        self.page: ClientConnection = connect(self._page_url(profile), max_size=None)

    def _page_url(self, profile: Path) -> str:
        """The page target's DevTools socket (the port is in the profile once Chromium listens)."""
        deadline = time.monotonic() + 30
        active = profile / "DevToolsActivePort"
        while time.monotonic() < deadline:
            if active.exists() and active.read_text().strip():
                port = int(active.read_text().split()[0])
                try:
                    targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                except httpx.HTTPError:
                    targets = []
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        self.close()
        raise RuntimeError("chromium did not open its DevTools port within 30 s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self.page.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.page.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def headers(self, headers: dict[str, str]) -> None:
        """Sent with every request the page makes (how a test presents an admin key)."""
        self.call("Network.enable")
        self.call("Network.setExtraHTTPHeaders", headers=headers)

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        """Poll until ``expression`` is truthy (one that throws, as on a page still loading, is not);
        returns its value."""
        deadline = time.monotonic() + timeout_s
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while True:
            value = self.evaluate(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout_s:g} s: {expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if getattr(self, "page", None) is not None:
            self.page.close()
        terminate(self.process)
