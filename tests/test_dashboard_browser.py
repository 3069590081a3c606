"""The dashboard in a real headless Chromium, driven over the DevTools protocol (no selenium):
the page loads with no console errors, no failed requests, and its charts draw from live data.

Skips, saying why, when Debian's `chromium` is not installed. The browser runs in its own
process group with a temporary profile and is always killed, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nodeproc import NodeProcess

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank",
]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[str]:
    """A headless Chromium; yields its DevTools websocket URL of one page target."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the dashboard test needs it")
    profile = tmp_path / "profile"
    log = (tmp_path / "chromium.log").open("wb")
    proc = subprocess.Popen([binary, f"--user-data-dir={profile}", *CHROMIUM_FLAGS], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start: {(tmp_path / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


class Page:
    """A minimal DevTools protocol client for one page: commands, and the events we watch."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.problems: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                self.problems.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                            for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                self.problems.append("exception: " + str(details.get("exception", {}).get("description")
                                                         or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                self.problems.append(f"log: {entry.get('text')} {entry.get('url', '')}")
            elif method == "Network.responseReceived":
                response = params.get("response", {})
                if response.get("status", 200) >= 400:
                    self.problems.append(f"http {response['status']}: {response.get('url')}")
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                self.problems.append(f"network: {params.get('errorText')}")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 20)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


async def open_dashboard(
    devtools: str, url: str, wait_for: Callable[[dict], bool], timeout: float = 30.0
) -> tuple[Page, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{devtools}/json/list") as r:
            targets = [t for t in await r.json() if t.get("type") == "page"]
        async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            for domain in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
                await page.send(domain)
            await page.send("Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            state: dict = {}
            while time.monotonic() < deadline:
                state = await page.evaluate(
                    "JSON.stringify({...document.body.dataset, status: document.getElementById('status').textContent,"
                    " hash: location.hash, svgs: [...document.querySelectorAll('svg.chart')]"
                    ".map(s => s.childElementCount)})"
                ) or "{}"
                state = json.loads(state)
                if wait_for(state):
                    break
                await asyncio.sleep(0.2)
            page.reader.cancel()
            return page, state


def test_dashboard_draws_live_data_without_errors(browser: str, node: NodeProcess) -> None:
    admin = node.token("dash-admin", "admin")
    sid = node.start_conversation(admin)
    for text in ("Hello! What do bees do in winter?", "And how do they keep warm?", "Thanks, that helps."):
        r = node.send(sid, admin, text)
        assert r.status == 200, r

    async def run() -> tuple[Page, dict]:
        return await open_dashboard(browser, f"{node.url}/dashboard#token={admin}",
                                    lambda s: s.get("ready") == "1" and int(s.get("refreshes", 0)) >= 2, timeout=40)

    page, state = asyncio.run(run())
    assert not page.problems, page.problems
    assert state.get("ready") == "1", state
    assert int(state["cccPoints"]) >= 3 * 2  # CCC and drift of three turns
    assert int(state["instancePoints"]) >= 2
    assert int(state["radarAxes"]) == 16
    assert int(state["clusterNodes"]) >= 1
    assert state["ledgerDrawn"] == "1"
    assert all(count >= 3 for count in state["svgs"]), state["svgs"]
    assert state["hash"] == ""  # the token left the URL


def test_dashboard_asks_for_a_token_without_errors(browser: str, node: NodeProcess) -> None:
    """No token: the form shows, nothing is fetched, nothing fails. A user token: 403 shown, not thrown."""
    async def run() -> tuple[Page, dict]:
        return await open_dashboard(browser, f"{node.url}/dashboard", lambda s: "token" in s.get("status", ""),
                                    timeout=20)

    page, state = asyncio.run(run())
    assert not page.problems, page.problems
    assert state.get("ready") == "0" and "token" in state["status"]
    r = node.request("GET", "/api/v1/dashboard/data", token=node.token("plain-user"))
    assert r.status == 403
    assert node.request("GET", "/api/v1/dashboard/data").status == 401
    page_resp = node.request("GET", "/dashboard")
    assert "default-src 'none'" in page_resp.headers["content-security-policy"]
    assert node.request("GET", "/dashboard/..%2f..%2fcli.py").status == 404
