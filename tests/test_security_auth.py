"""Secrets and keys: the node refuses an empty, short or placeholder JWT key and secret files
that others can read (exit 78, naming the key); JWT key rotation keeps tokens signed with the
previous key valid for the grace period only; SIGHUP re-reads the keys."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from nodeproc import NodeProcess

pytestmark = pytest.mark.slow


def serve_once(node: NodeProcess, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccn_node", "serve", "--config", str(node.config_path)],
                          capture_output=True, text=True, env={**node.env, **(env or {})}, timeout=60)


def write_key(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def new_key() -> bytes:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)) + b"\n"


def token_with(key: bytes, user: str = "alice", issuer: str = "ccn-node") -> str:
    now = int(time.time())
    claims = {"sub": user, "role": "user", "iss": issuer, "iat": now, "nbf": now - 5, "exp": now + 3600, "jti": "t"}
    return jwt.encode(claims, key.strip(), algorithm="HS256")


@pytest.mark.parametrize("content", [b"", b"\n", b"secret", b"changeme\n", b"short-key-1234", b"a" * 64])
def test_refuses_empty_short_or_default_jwt_key(tmp_path: Path, content: bytes) -> None:
    node = NodeProcess(tmp_path / "data")
    write_key(node.data_dir / "keys" / "jwt.key", content)
    out = serve_once(node)
    assert out.returncode == 78, out
    assert "auth.jwt_key_file" in out.stderr and "at least 32 random bytes" in out.stderr
    assert "Traceback" not in out.stderr


def test_refuses_short_key_from_environment(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data")
    out = serve_once(node, {"CCN_JWT_KEY": ""})
    assert out.returncode == 78 and "CCN_JWT_KEY" in out.stderr, out


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_secret_files_others_can_read(tmp_path: Path, mode: int) -> None:
    node = NodeProcess(tmp_path / "data")
    (node.data_dir / "keys" / "jwt.key").chmod(mode)
    out = serve_once(node)
    assert out.returncode == 78, out
    assert "auth.jwt_key_file" in out.stderr and "readable by group or others" in out.stderr


def test_refuses_world_readable_ledger_and_previous_keys(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", config_extra='[auth]\nprevious_key_files = ["keys/old.key"]\n')
    write_key(node.data_dir / "keys" / "old.key", new_key(), 0o644)
    out = serve_once(node)
    assert out.returncode == 78 and "auth.previous_key_files[0]" in out.stderr, out
    (node.data_dir / "keys" / "old.key").chmod(0o600)
    (node.data_dir / "keys" / "node.ed25519").chmod(0o644)
    out = serve_once(node)
    assert out.returncode == 78 and "ledger.key_file" in out.stderr, out


def test_key_rotation_with_grace_period_and_sighup(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", config_extra=(
        '[auth]\nprevious_key_files = ["keys/jwt.previous"]\nprevious_key_grace_s = 3600\n'))
    keys = node.data_dir / "keys"
    key_a = (keys / "jwt.key").read_bytes()
    write_key(keys / "jwt.previous", new_key())  # an even older key, rotated out long ago
    node.start()
    try:
        old_token = token_with(key_a)
        assert node.request("GET", "/api/v1/whoami", token=old_token).status == 200

        # rotate: A becomes the previous key, B the current one; SIGHUP
        key_b = new_key()
        write_key(keys / "jwt.previous", key_a)
        write_key(keys / "jwt.key", key_b)
        node.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        new_token = token_with(key_b, "bob")
        deadline = time.monotonic() + 10
        while node.request("GET", "/api/v1/whoami", token=new_token).status != 200:
            assert time.monotonic() < deadline, "SIGHUP did not load the new key"
            time.sleep(0.1)
        assert node.request("GET", "/api/v1/whoami", token=old_token).status == 200  # grace period
        forged = token_with(new_key(), "mallory")
        assert node.request("GET", "/api/v1/whoami", token=forged).status == 401
        # tokens the node issues now are signed with B only
        issued = node.token("carol")
        jwt.decode(issued, key_b.strip(), algorithms=["HS256"], issuer="ccn-node")
    finally:
        assert node.stop() == 0

    # grace over: the rotation happened (key file mtime) two hours ago, grace is one hour
    two_hours_ago = time.time() - 7200
    os.utime(keys / "jwt.key", (two_hours_ago, two_hours_ago))
    node.start()
    try:
        assert node.request("GET", "/api/v1/whoami", token=old_token).status == 401
        assert node.request("GET", "/api/v1/whoami", token=new_token).status == 200
    finally:
        node.stop()
