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


def test_search_of_a_stopped_node_file_says_what_is_not_indexed_yet(tmp_path) -> None:
    """A node killed before its next index chunk leaves its last messages out of the full-text
    index until it runs again: ``ccn-node search`` on its file says so instead of a silent miss."""
    from corpus_commands import append_message, create_user, start_conversation

    from ccn_node.ledger.schema import ledger_schema_sql
    from ccn_node.replication import commands as c
    from ccn_node.replication.state_machine import StateMachine
    from ccn_node.store.database import Store

    assert cli("init", "--data-dir", str(tmp_path / "d")).returncode == 0
    cfg = str(tmp_path / "d" / "ccn.toml")
    store = Store(tmp_path / "d" / "ccn.sqlite3", extra_schema=[ledger_schema_sql()])
    sm = StateMachine(store.writer)
    sm.apply_batch([(1, c.encode(create_user("gus"))), (2, c.encode(start_conversation("s1", "gus")))])
    sm.apply_batch([(3, c.encode(append_message(1, "s1", "gus", "a wombat in the garden")))])
    sm.catch_up_search_index()
    sm.apply_batch([(4, c.encode(append_message(2, "s1", "gus", "another wombat at dusk")))])
    store.close()  # as a kill -9 leaves it: message 2 not indexed
    out = cli("search", "--config", cfg, "--user", "gus", "wombat", "--json")
    assert out.returncode == 0, out.stderr
    assert [h["seq"] for h in json.loads(out.stdout)] == [1]
    assert "the 1 message(s) written last are not in the search index yet" in out.stderr
