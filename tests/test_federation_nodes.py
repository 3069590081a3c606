"""Real node processes on 127.0.0.1 as different organisations, each pinning the others:
checkpoints witnessed and cosigned both ways, a rewritten history caught as a fork and
reported, an unreachable peer a warning only. Every process is stopped."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodeproc import NodeProcess, free_port

from ccn_node.config import load_config
from ccn_node.datadir import vkeys as _vkeys
from ccn_node.ledger.note import open_checkpoint, parse_note, parse_vkey

LIMITS = """
[limits]
requests_per_minute = 100000
burst = 10000
"""


class Org:
    """One organisation: a node with its own name (origin), ledger key and witness key."""

    def __init__(self, root: Path, name: str, *, block_seconds: float = 1.0) -> None:
        self.name = name
        self.node = NodeProcess(root / name)
        text = self.node.config_path.read_text().replace('name = "test-node"', f'name = "{name}"')
        text = text.replace("[ledger]\n", f"[ledger]\nblock_seconds = {block_seconds}\n")
        self.node.config_path.write_text(text + LIMITS)
        self.vkey, self.witness_vkey = _vkeys(load_config(self.node.config_path))

    @property
    def url(self) -> str:
        return self.node.url

    def pin(self, peers: list[Any], *, k: int = 1, interval: float = 0.3) -> None:
        lines = [f"\n[federation]\npull_interval_s = {interval}\nwitnesses_required = {k}\nrequest_timeout_s = 2.0\n"]
        for p in peers:
            lines.append(f'[[federation.peers]]\norigin = "{p.name}"\nurl = "{p.url}"\nvkeys = ["{p.vkey}"]\n'
                         f'witness_vkeys = ["{p.witness_vkey}"]\n')
        with self.node.config_path.open("a") as f:
            f.write("".join(lines))

    def get(self, path: str, **kw: Any) -> Any:
        r = self.node.request("GET", path, **kw)
        assert r.status == 200, r
        return r

    def status(self) -> dict[str, Any]:
        return self.get("/api/v1/ledger/federation", token=self.admin).json()

    def forks(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/ledger/forks").json()

    def start(self) -> Org:
        self.node.start()
        self.admin = self.node.token("admin", "admin")
        return self


class DeadPeer:
    def __init__(self, name: str) -> None:
        from ccn_node.ledger.note import CosignatureSigner, NoteSigner

        self.name = name
        self.url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        self.vkey = NoteSigner.generate(name).vkey()
        self.witness_vkey = CosignatureSigner.generate(name + "/witness").vkey()


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def orgs(tmp_path: Path) -> Iterator[list[Org]]:
    made: list[Org] = []
    yield made
    for org in made:
        org.node.stop()


def test_three_orgs_cosign_each_other_and_a_dead_peer_is_only_a_warning(tmp_path: Path, orgs: list[Org]) -> None:
    a, b, c = (Org(tmp_path, n) for n in ("org-a", "org-b", "org-c"))
    dead = DeadPeer("org-dead")
    a.pin([b, c, dead], k=2)
    b.pin([a, c], k=2)
    c.pin([a, b], k=2)
    orgs.extend([a, b, c])
    for org in orgs:
        org.start()

    def cosigned_by_both(org: Org, others: list[Org]) -> bool:
        text = org.node.request("GET", "/api/v1/ledger/checkpoint").body.decode()
        if not text or text.startswith("{"):
            return False
        note = parse_note(text)
        keys = {(v.name, v.key_id) for v in (parse_vkey(o.witness_vkey) for o in others)}
        return keys <= {(s.name, s.key_id) for s in note.signatures}

    for org in orgs:
        others = [o for o in orgs if o is not org]
        wait_for(f"{org.name} cosigned by both peers", lambda org=org, others=others: cosigned_by_both(org, others))
        # The note still opens with standard tools: the log key verifies, cosignatures are extra lines.
        text = org.get("/api/v1/ledger/checkpoint").body.decode()
        cp, _ = open_checkpoint(text, [parse_vkey(org.vkey)], org.name)
        assert cp.origin == org.name

    def witnessed(org: Org) -> bool:
        peers = {p["origin"]: p for p in org.status()["peers"]}
        return all(peers[o.name]["witnessed"] for o in orgs if o is not org)

    for org in orgs:
        wait_for(f"{org.name} sees k=2 of its peers' witnesses", lambda org=org: witnessed(org))

    # Each witness recorded the others' heads (gossip material), and nobody forked.
    heads = {h["origin"] for h in a.get("/api/v1/ledger/witnessed").json()}
    assert heads == {"org-b", "org-c"}
    assert all(not o.forks() for o in orgs)

    # The dead peer: a warning and a metric, not a fork.
    st = {p["origin"]: p for p in a.status()["peers"]}["org-dead"]
    assert st["reachable"] is False and st["last_error"] and not st["forked"]
    metrics = a.get("/metrics").body.decode()
    assert 'ccn_federation_peer_up{key="org-dead"} 0.0' in metrics
    assert 'ccn_federation_peer_up{key="org-b"} 1.0' in metrics
    assert "ccn_ledger_forks 0.0" in metrics


def test_rewritten_history_is_a_fork_detected_and_reported(tmp_path: Path, orgs: list[Org]) -> None:
    a, b, c = (Org(tmp_path, n) for n in ("org-a", "org-b", "org-c"))
    a.pin([b, c])
    b.pin([a, c])
    c.pin([a, b])
    orgs.extend([a, b, c])
    for org in orgs:
        org.start()
    for w in (a, c):
        wait_for(f"{w.name} holds a head of org-b", lambda w=w: any(
            h["origin"] == "org-b" for h in w.get("/api/v1/ledger/witnessed").json()))
    b.node.stop()
    b_size = {h["origin"]: h["size"] for h in a.get("/api/v1/ledger/witnessed").json()}["org-b"]

    # A second history of org-b, signed with the same key: another node started from scratch.
    forger = Org(tmp_path, "forger", block_seconds=0.2)
    orgs.append(forger)
    text = forger.node.config_path.read_text().replace('name = "forger"', 'name = "org-b"')
    forger.node.config_path.write_text(text)
    shutil.copy(b.node.data_dir / "keys" / "node.ed25519", forger.node.data_dir / "keys" / "node.ed25519")
    forger.start()
    user = forger.node.token("mallory")
    for _ in range(b_size + 4):  # the forged history needs leaves of its own (idle nodes do not seal)
        assert forger.node.request("POST", "/api/v1/conversation/start", token=user, json_body={}).status == 201
    wait_for("the forged history to outgrow the witnessed one", lambda: int(
        parse_note(forger.get("/api/v1/ledger/checkpoint").body.decode()).text.split("\n")[1]) > b_size + 3)
    forger.node.stop()
    for suffix in ("", "-wal", "-shm"):
        (b.node.data_dir / f"ccn.sqlite3{suffix}").unlink(missing_ok=True)
    shutil.copy(forger.node.data_dir / "ccn.sqlite3", b.node.data_dir / "ccn.sqlite3")
    b.node.start()

    # A sees it itself (the pull: no valid consistency proof); org-b's node may also notice that
    # its peers hold checkpoints of "its" key that its tree does not have, and report itself.
    fork = wait_for("A to record the fork of org-b", lambda: [f for f in a.forks() if f["origin"] == "org-b"
                                                              and "self" in f["sources"]])[0]
    assert fork["confirmed"]
    # Self-contained: both notes verify under org-b's pinned key, and they cannot both be true.
    key = [parse_vkey(b.vkey)]
    cp1, _ = open_checkpoint(fork["note_a"], key, "org-b")
    cp2, _ = open_checkpoint(fork["note_b"], key, "org-b")
    assert cp1 != cp2
    # Reported to C, which checked it itself (it asked org-b for the proof, which fails).
    wait_for("C to hold A's report", lambda: [f for f in c.forks() if f["origin"] == "org-b" and f["confirmed"]
                                              and any(s == "peer:org-a" for s in f["sources"])])

    def forks_metric_matches_evidence() -> bool:
        confirmed = sum(f["confirmed"] for f in a.forks())
        metric = re.search(r"^ccn_ledger_forks ([0-9.]+)$", a.get("/metrics").body.decode(), re.M)
        return metric is not None and float(metric.group(1)) == confirmed >= 1

    wait_for("the ccn_ledger_forks metric to count A's confirmed evidence", forks_metric_matches_evidence)
    assert {p["origin"]: p for p in a.status()["peers"]}["org-b"]["forked"]
    # A no longer cosigns org-b, whatever it sends.
    note = b.get("/api/v1/ledger/checkpoint").body.decode()
    size = int(parse_note(note).text.split("\n")[1])
    r = a.node.request("POST", "/api/v1/ledger/add-checkpoint", body=f"old {size}\n\n{note}".encode())
    assert r.status == 403 and b"forked" in r.body
