"""The command line against real data directories and a real node process."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import GENEROUS_LIMITS
from nodeproc import NodeProcess


def cli(*args: str, input_: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccn_node", *args], capture_output=True, text=True,
                          input=input_, timeout=timeout)


def test_init_writes_config_keys_and_prints_an_admin_token(tmp_path) -> None:
    out = cli("init", "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:9999")
    assert out.returncode == 0, out.stderr
    token = re.search(r"admin token: (\S+)", out.stdout).group(1)
    assert token.count(".") == 2
    for name in ("ccn.toml", "plate.md", "keys/jwt.key", "keys/node.ed25519"):
        assert (tmp_path / "d" / name).exists()
    assert (tmp_path / "d" / "keys" / "jwt.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "d" / "keys" / "node.ed25519").stat().st_mode & 0o077 == 0
    again = cli("init", "--data-dir", str(tmp_path / "d"))
    assert again.returncode == 78 and "exists already" in again.stderr


def test_token_roles_and_bad_names(tmp_path) -> None:
    cli("init", "--data-dir", str(tmp_path / "d"))
    cfg = str(tmp_path / "d" / "ccn.toml")
    assert cli("token", "--config", cfg, "--user", "zoe", "--role", "admin").returncode == 0
    bad = cli("token", "--config", cfg, "--user", "no spaces please")
    assert bad.returncode == 2 and "user names" in bad.stderr
    missing = cli("token", "--config", str(tmp_path / "nope.toml"), "--user", "x")
    assert missing.returncode == 78 and "file not found" in missing.stderr


def test_chat_search_export(tmp_path) -> None:
    node = NodeProcess(tmp_path / "n", config_extra=GENEROUS_LIMITS).start()
    try:
        cfg = str(node.config_path)
        out = cli("chat", "--config", cfg, "--user", "gus", input_="my cat is called Marmalade\n/quit\n")
        assert out.returncode == 0, out.stderr
        assert "assistant>" in out.stdout and "[ccc" in out.stdout
        sid = re.search(r"conversation (c_\w+)", out.stdout).group(1)
        resumed = cli("chat", "--config", cfg, "--user", "gus", "--session", sid, input_="and the dog?\n/end\n")
        assert resumed.returncode == 0 and "Marmalade" in resumed.stdout and "ended" in resumed.stdout
        other = cli("chat", "--config", cfg, "--user", "hal", "--session", sid, input_="/quit\n")
        assert other.returncode == 1 and "not_found" in other.stderr

        found = cli("search", "--config", cfg, "--user", "gus", "Marmalade", "--json")
        assert found.returncode == 0
        hits = json.loads(found.stdout)
        assert hits and all(h["session_id"] == sid for h in hits)
        assert json.loads(cli("search", "--config", cfg, "--user", "hal", "Marmalade", "--json").stdout) == []
        hostile = cli("search", "--config", cfg, "--user", "gus", 'NEAR("Marm OR (', "--json")
        assert hostile.returncode == 0

        md = cli("export", "--config", cfg, "--user", "gus", sid, "--format", "markdown")
        assert md.returncode == 0 and "Marmalade" in md.stdout and md.stdout.startswith("# ")
        js = cli("export", "--config", cfg, "--user", "gus", sid)
        assert json.loads(js.stdout)["status"] == "ended"
        nope = cli("export", "--config", cfg, "--user", "hal", sid)
        assert nope.returncode == 1
    finally:
        node.stop()
