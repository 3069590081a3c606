"""systemd integration, without systemd: a real node process talks the notify protocol to a real
Unix datagram socket (READY=1 once /ready answers, WATCHDOG=1 at half of WATCHDOG_USEC,
STOPPING=1 on SIGTERM, exit 0 after the in-flight turn finished); the shipped unit file rates
under 2.0 in `systemd-analyze security`; the node runs under the kernel's
MemoryDenyWriteExecute equivalent (prctl PR_SET_MDWE), as the unit asks."""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from nodeproc import NodeProcess, Response

from ccn_node.sd_notify import notify

pytestmark = pytest.mark.slow
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "ccn-node.service"


class NotifySocket:
    """What systemd does: bind a datagram socket, collect (monotonic time, message) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, text: str, timeout: float = 20.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, message in list(self.messages):
                if text in message.splitlines():
                    return at
            time.sleep(0.01)
        raise AssertionError(f"{text} never arrived; got {self.messages}")

    def count(self, text: str) -> int:
        return sum(text in m.splitlines() for _, m in self.messages)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def test_notify_protocol_and_graceful_sigterm(tmp_path: Path) -> None:
    sock = NotifySocket(tmp_path / "notify.sock")
    node = NodeProcess(tmp_path / "data", config_extra="[model]\noffline_latency_ms = 1500\n",
                       env={"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "300000"})
    log = node.log_path.open("ab")
    node.proc = subprocess.Popen([sys.executable, "-m", "ccn_node", "serve", "--config", str(node.config_path)],
                                 stdout=log, stderr=subprocess.STDOUT, env=node.env, start_new_session=True)
    try:
        sock.wait_for("READY=1")
        assert node.request("GET", "/ready").status == 200  # READY=1 only once /ready is true
        started = time.monotonic()
        while sock.count("WATCHDOG=1") < 4:
            assert time.monotonic() - started < 10, sock.messages
            time.sleep(0.05)
        watchdogs = [at for at, m in sock.messages if "WATCHDOG=1" in m.splitlines()]
        gaps = [b - a for a, b in itertools.pairwise(watchdogs)]
        assert all(0.05 < g < 0.3 for g in gaps[1:]), gaps  # half of WATCHDOG_USEC = 0.15 s

        # an in-flight turn (1.5 s of model latency) when SIGTERM arrives
        token = node.token("sigterm-user")
        sid = node.start_conversation(token)
        result: dict[str, Response | Exception] = {}

        def turn() -> None:
            try:
                result["r"] = node.request("POST", f"/api/v1/conversation/{sid}/message", token=token,
                                           json_body={"content": "a slow question"}, timeout=30)
            except Exception as exc:
                result["r"] = exc

        worker = threading.Thread(target=turn)
        worker.start()
        time.sleep(0.5)
        node.proc.send_signal(signal.SIGTERM)
        sock.wait_for("STOPPING=1", timeout=10)
        worker.join(30)
        code = node.proc.wait(30)
        assert code == 0, node.log_path.read_text()[-2000:]
        reply = result["r"]
        assert isinstance(reply, Response) and reply.status == 200, reply  # finished, not cut off
        assert "Traceback" not in node.log_path.read_text()
    finally:
        node.stop()
        log.close()
        sock.close()

    # what was acknowledged is there after a restart
    node.env.pop("NOTIFY_SOCKET")
    node.start()
    try:
        conv = node.request("GET", f"/api/v1/conversation/{sid}", token=token).json()
        assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    finally:
        node.stop()


def test_notify_abstract_socket_and_no_socket(tmp_path: Path) -> None:
    name = f"ccn-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert notify("READY=1", socket_path="@" + name)
        assert s.recv(100) == b"READY=1"
    assert notify("READY=1", socket_path="") is False
    assert notify("READY=1", socket_path=str(tmp_path / "nobody-listens")) is False


def test_unit_file_exposure_under_2() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "DynamicUser=yes", "StateDirectory=ccn-node",
                 "RestartPreventExitStatus=78", "MemoryDenyWriteExecute=yes", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text.splitlines(), line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit's exposure score is not checked here")
    out = subprocess.run([analyze, "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                         timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout + out.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit offline: {(out.stderr or out.stdout)[-300:]}")
    assert float(match.group(1)) < 2.0, out.stdout


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _deny_write_execute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def test_node_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    if not _mdwe_enforced():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3); MemoryDenyWriteExecute is not checked")
    node = NodeProcess(tmp_path / "data")
    log = node.log_path.open("ab")
    node.proc = subprocess.Popen([sys.executable, "-m", "ccn_node", "serve", "--config", str(node.config_path)],
                                 stdout=log, stderr=subprocess.STDOUT, env=node.env, start_new_session=True,
                                 preexec_fn=_deny_write_execute)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert node.proc.poll() is None, node.log_path.read_text()[-2000:]
            try:
                if node.request("GET", "/ready").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        token = node.token("mdwe-user", "admin")
        sid = node.start_conversation(token)
        r = node.send(sid, token, "hi")
        assert r.status == 200, r  # numpy, apsw, msgspec, cryptography (JWT, ledger signatures) all ran
        assert node.request("GET", "/metrics").status == 200
        assert node.request("GET", "/api/v1/dashboard/data", token=token).status == 200
        assert node.stop() == 0
    finally:
        node.stop()
        log.close()


def _mdwe_enforced() -> bool:
    """A child under PR_SET_MDWE is refused a writable+executable mapping (so the test means something)."""
    code = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    try:
        out = subprocess.run([sys.executable, "-c", code], preexec_fn=_deny_write_execute, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode != 0 and "PermissionError" in out.stderr
