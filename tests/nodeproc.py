"""Real node processes for tests: init a data dir, start `python -m ccn_node serve` on
127.0.0.1, wait for /ready, talk HTTP to it, and always stop it (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ccn_node.datadir import init_data_dir
from ccn_node.loopback import free_port

__all__ = ["NodeProcess", "Response", "free_port", "stop_all_nodes"]

_LIVE: set[NodeProcess] = set()


def stop_all_nodes() -> None:
    """Kill every node process a test started and did not stop (a failed assertion, say)."""
    for proc in list(_LIVE):
        proc.kill()


atexit.register(stop_all_nodes)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


class NodeProcess:
    """One `ccn-node serve` child process with its own data directory."""

    def __init__(self, data_dir: Path, *, config_extra: str = "", env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.config_path = init_data_dir(data_dir, listen=f"127.0.0.1:{self.port}", name="test-node")
        if config_extra:
            text = self.config_path.read_text()
            self.config_path.write_text(_merge_toml(text, config_extra))
        self.env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "CCN_JWT_KEY")}
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "node.log"

    @classmethod
    def attach(cls, port: int, data_dir: Path, log_path: Path) -> NodeProcess:
        """A client of a node started some other way (the zipapp): requests and wait_ready, no process."""
        self = cls.__new__(cls)
        self.port, self.data_dir, self.log_path, self.proc = port, data_dir, log_path, None
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NodeProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ccn_node", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )
        _LIVE.add(self)
        try:
            self.wait_ready(self.proc, timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Poll GET /ready until 200; RuntimeError (with the log's tail) if ``proc`` exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"node exited with {proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if self.request("GET", "/ready", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        _LIVE.discard(self)
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def token(self, user: str, role: str = "user") -> str:
        out = subprocess.run(
            [sys.executable, "-m", "ccn_node", "token", "--config", str(self.config_path),
             "--user", user, "--role", role],
            check=True, capture_output=True, text=True, env=self.env, timeout=30,
        )
        return out.stdout.strip()

    def start_conversation(self, token: str, **body: Any) -> str:
        """POST /api/v1/conversation/start (``body`` as its JSON); the new session id."""
        r = self.request("POST", "/api/v1/conversation/start", token=token, json_body=body)
        assert r.status == 201, r
        return r.json()["session_id"]

    def send(self, sid: str, token: str, content: str, **fields: Any) -> Response:
        """POST a turn to conversation ``sid``; the response is returned unchecked."""
        return self.request("POST", f"/api/v1/conversation/{sid}/message", token=token,
                            json_body={"content": content, **fields})

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()


def _merge_toml(base: str, extra: str) -> str:
    """Append keys of `extra` into the matching [section] of `base` (or add the section)."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in extra.strip().splitlines():
        m = re.fullmatch(r"\s*\[([^\[\]]+)\]\s*", line)
        if m:
            current = m.group(1)
            sections.setdefault(current, [])
        elif line.strip():
            sections.setdefault(current, []).append(line)
    out = base
    for section, lines in sections.items():
        header = f"[{section}]"
        if header in out:
            out = out.replace(header, header + "\n" + "\n".join(lines), 1)
        else:
            out += f"\n{header}\n" + "\n".join(lines) + "\n"
    return out
