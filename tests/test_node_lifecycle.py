"""Turn ordering, restart durability and start-up refusals of a real node process."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import time

import pytest
from conftest import GENEROUS_LIMITS
from nodeproc import NodeProcess

SLOW = """
[model]
offline_latency_ms = 400
[limits]
requests_per_minute = 100000
burst = 10000
"""


def test_turns_in_one_conversation_never_interleave(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n", config_extra=SLOW).start()
    try:
        token = node.token("erin")
        sid = node.start_conversation(token)

        def send(text: str, wait: bool = True):
            return node.send(sid, token, text, wait=wait)

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            a = pool.submit(send, "first")
            time.sleep(0.1)
            b = pool.submit(send, "second")
            time.sleep(0.1)
            c = pool.submit(send, "third, but do not wait", False)
            ra, rb, rc = a.result(30), b.result(30), c.result(30)
        assert ra.status == 200 and rb.status == 200
        assert rc.status == 409 and rc.json()["error"]["code"] == "turn_in_progress"
        msgs = node.request("GET", f"/api/v1/conversation/{sid}", token=token).json()["messages"]
        assert [(m["role"], m["content"][:6]) for m in msgs][0::2] == [("user", "first"), ("user", "second")]
        assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
        assert msgs[1]["seq"] == 2 and msgs[1]["manifest"] is not None
    finally:
        node.stop()


def test_everything_acknowledged_survives_kill_9(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n", config_extra=GENEROUS_LIMITS).start()
    try:
        token = node.token("frank")
        sid = node.start_conversation(token)
        acked = []
        for i in range(20):
            r = node.send(sid, token, f"n{i}")
            assert r.status == 200
            acked.append(r.json()["message_id"])
        node.stop(signal.SIGKILL)
        node.start()
        msgs = node.request("GET", f"/api/v1/conversation/{sid}", token=token).json()["messages"]
        ids = [m["message_id"] for m in msgs]
        assert all(a in ids for a in acked) and len(ids) == 40 and len(set(ids)) == 40
        r = node.send(sid, token, "after")
        assert r.status == 200 and r.json()["seq"] == 42
    finally:
        node.stop()


def test_graceful_stop_exits_zero(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    try:
        assert node.stop(signal.SIGTERM) == 0
    finally:
        node.stop()


def _serve(config, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccn_node", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout)


def test_missing_plate_refuses_to_start(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n")
    (node.data_dir / "plate.md").unlink()
    out = _serve(node.config_path)
    assert out.returncode == 78
    assert "plate.md" in out.stderr and "Traceback" not in out.stderr


def test_broken_plate_front_matter_names_the_line(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n")
    (node.data_dir / "plate.md").write_text('+++\nname = "x"\nversion = @@\n[budget]\n+++\n# X\n')
    out = _serve(node.config_path)
    assert out.returncode == 78 and "line 3" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[context]\nbudget_tokens = \"lots\"\n", "context.budget_tokens"),
        ("[context]\nbudget_tokens = -5\n", "context.budget_tokens"),
        ("[limits]\nno_such_key = 1\n", "limits.no_such_key"),
        ("[nonsense]\na = 1\n", "nonsense"),
        ("[model]\nbackend = \"gpt\"\n", "model.backend"),
    ],
)
def test_bad_config_names_the_key(tmp_path, extra: str, key: str) -> None:
    node = NodeProcess(tmp_path / "n", config_extra=extra)
    if "[model]" in extra:
        node.config_path.write_text(node.config_path.read_text().replace('backend = "auto"\n', ""))
    out = _serve(node.config_path)
    assert out.returncode == 78, out.stderr
    assert key in out.stderr and str(node.config_path) in out.stderr and "Traceback" not in out.stderr


def test_world_readable_jwt_key_refused(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n")
    (node.data_dir / "keys" / "jwt.key").chmod(0o644)
    out = _serve(node.config_path)
    assert out.returncode == 78 and "auth.jwt_key_file" in out.stderr and "chmod 600" in out.stderr


def test_short_jwt_key_refused(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n")
    (node.data_dir / "keys" / "jwt.key").write_text("secret\n")
    out = _serve(node.config_path)
    assert out.returncode == 78 and "JWT key" in out.stderr


def test_invalid_toml_is_one_line(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n")
    node.config_path.write_text("[node\nname=")
    out = _serve(node.config_path)
    assert out.returncode == 78 and "not valid TOML" in out.stderr and "Traceback" not in out.stderr


def test_corrupted_database_is_refused_clearly(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n").start()
    node.stop()
    db = node.data_dir / "ccn.sqlite3"
    data = bytearray(db.read_bytes())
    data[:16] = b"this is not sqli"
    db.write_bytes(bytes(data))
    out = _serve(node.config_path)
    assert out.returncode == 78 and "ccn.sqlite3" in out.stderr and "Traceback" not in out.stderr
