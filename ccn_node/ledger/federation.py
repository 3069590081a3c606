"""Federation: every node witnesses the logs of the other organisations it pins.

Every ``pull_interval_s`` the loop, for each pinned peer:

- **pulls** its checkpoint, verifies it against the pinned keys and advances this node's
  record only with a valid consistency proof from the size recorded (never back);
- **pushes** our own latest checkpoint to the peer's add-checkpoint and keeps the
  cosignatures it returns (served with our checkpoint);
- **gossips**: reads the checkpoints the peer accepted from third parties and checks them
  against our own record, so a log that shows different histories to different witnesses is
  caught. A fork is kept as evidence, reported to the other peers, and the origin is no
  longer cosigned. An unreachable peer is a warning, never a fork.

A peer's checkpoint counts as *witnessed* when ``witnesses_required`` of its witnesses (this
node and the nodes of every other pinned organisation) cosigned it within ``max_age_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ccn_node.ledger import merkle
from ccn_node.ledger.merkle import ProofError
from ccn_node.ledger.note import (
    Checkpoint,
    CosignatureVerifier,
    NoteError,
    b64decode_strict,
    b64encode,
    open_checkpoint,
    parse_checkpoint,
    parse_note,
    parse_signature_line,
    verify_cosignature,
)
from ccn_node.ledger.witness import (
    MAX_FUTURE_S,
    ForkEvidence,
    PinnedLog,
    Witness,
    WitnessError,
    count_cosignatures,
    format_add_checkpoint,
    parse_signature_lines,
)

log = logging.getLogger(__name__)

PREFIX = "/api/v1/ledger"
MAX_RESPONSE_BYTES = 1 << 20


class PeerUnreachable(Exception):
    """The peer did not answer, or not with a usable response (a warning, not a fork)."""


@dataclass
class PeerStatus:
    """What this node knows of one peer right now (the per-origin status API and metrics)."""

    origin: str
    reachable: bool | None = None
    last_ok_ms: int = 0
    last_error: str = ""
    size: int = 0
    cosigned_by: list[str] = field(default_factory=list)
    witnessed: bool = False
    forked: bool = False
    our_cosignature: bool = False

    def to_json(self, k: int, n: int) -> dict[str, Any]:
        return {"origin": self.origin, "reachable": self.reachable, "last_ok_ms": self.last_ok_ms,
                "last_error": self.last_error, "size": self.size, "cosigned_by": self.cosigned_by,
                "witnesses_required": k, "witnesses": n, "witnessed": self.witnessed, "forked": self.forked,
                "cosigned_ours": self.our_cosignature}


class Federation:
    """The pull / push / gossip loop of one node."""

    def __init__(
        self,
        witness: Witness,
        *,
        origin: str,
        own_verifiers: list[Any],
        own_checkpoint: Callable[[], Awaitable[str | None]],
        own_proof: Callable[[int, int], Awaitable[list[bytes]]],
        own_root: Callable[[int], Awaitable[bytes | None]],
        interval_s: float,
        timeout_s: float = 5.0,
        witnesses_required: int = 1,
        max_age_s: float = 3600.0,
    ) -> None:
        self.witness = witness
        self.origin = origin
        self.own_verifiers = own_verifiers
        self.peers = [p for p in witness.logs.values() if p.origin != origin]
        self.own_checkpoint = own_checkpoint
        self.own_proof = own_proof
        self.own_root = own_root
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.k = witnesses_required
        self.max_age_s = max_age_s
        self.status = {p.origin: PeerStatus(p.origin) for p in self.peers}
        self.rounds = 0
        self._pushed: dict[str, int] = {}  # peer origin -> the size its witness last recorded for us
        self._reported: set[tuple[str, str]] = set()  # (evidence pair, peer origin)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        witness.on_fork = self._fork_noticed

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        if self.peers:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("federation round failed")
            await asyncio.sleep(self.interval_s)

    async def run_once(self) -> None:
        """One round over every peer: pull, push, gossip (peers in parallel)."""
        await asyncio.gather(*(self._peer_round(p) for p in self.peers))
        await self._report_forks()
        self.rounds += 1

    async def _peer_round(self, peer: PinnedLog) -> None:
        st = self.status[peer.origin]
        if not peer.url:
            return
        try:
            await self.pull(peer)
            await self.push(peer)
            await self.gossip(peer)
        except PeerUnreachable as exc:
            if st.reachable is not False:
                log.warning("federation peer %s unreachable: %s", peer.origin, exc)
            st.reachable = False
            st.last_error = str(exc)
            return
        st.reachable = True
        st.last_ok_ms = int(time.time() * 1000)
        st.last_error = ""

    # -- HTTP ----------------------------------------------------------------------------

    async def _http(self, method: str, url: str, body: bytes | None = None) -> tuple[int, str, str]:
        assert self._session is not None
        try:
            async with self._session.request(method, url, data=body) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise PeerUnreachable(f"{method} {url}: response too large")
                return resp.status, resp.headers.get("Content-Type", ""), raw.decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnreachable(f"{method} {url}: {type(exc).__name__}: {exc}") from None

    async def _get_proof(self, peer: PinnedLog, size1: int, size2: int) -> list[bytes] | None:
        """The peer's consistency proof, or None when it answered with an error status."""
        status, _, text = await self._http("GET", f"{peer.url}{PREFIX}/proof/consistency?from={size1}&to={size2}")
        if status != 200:
            return None
        try:
            data = json.loads(text)
            return [b64decode_strict(x) for x in data["proof"]]
        except (ValueError, KeyError, TypeError, NoteError):
            return []  # garbage where a proof belongs: it proves nothing, so it fails to verify

    # -- pull ----------------------------------------------------------------------------

    async def pull(self, peer: PinnedLog) -> None:
        st = self.status[peer.origin]
        status, _, text = await self._http("GET", f"{peer.url}{PREFIX}/checkpoint")
        if status == 404:
            return  # nothing sealed yet
        if status != 200:
            raise PeerUnreachable(f"checkpoint: HTTP {status}")
        try:
            cp, note = open_checkpoint(text, peer.verifiers, peer.origin)
        except NoteError as exc:
            raise PeerUnreachable(f"checkpoint refused: {exc}") from None
        await self._consider(peer, cp, text, "pull")
        suspect = self.witness.suspects.pop(peer.origin, None)
        if suspect is not None:
            with contextlib.suppress(NoteError):
                scp, _ = open_checkpoint(suspect, peer.verifiers, peer.origin)
                await self._consider(peer, scp, suspect, "add-checkpoint")
        st.size = cp.size
        witnesses = self._witnesses_of(peer.origin)
        cosigned = count_cosignatures(note.text, note.signatures, witnesses, now=time.time(),
                                      max_age_s=self.max_age_s)
        st.cosigned_by = sorted(name for name, _ in cosigned)
        st.witnessed = len(cosigned) >= self.k
        own = self.witness.verifier()
        st.our_cosignature = any((s.name, s.key_id) == (own.name, own.key_id) for s in note.signatures)
        st.forked = peer.origin in await asyncio.to_thread(self.witness.store.forked_origins)

    async def _consider(self, peer: PinnedLog, cp: Checkpoint, note: str, source: str) -> None:
        """Compare a verified checkpoint of ``peer`` with our record; advance or keep evidence."""
        store = self.witness.store
        head = await asyncio.to_thread(store.head, peer.origin)
        if head is None:
            await asyncio.to_thread(store.advance, cp, note, source, None)
            return
        if cp.size == head.size:
            if cp.root != head.root:
                await self._fork(ForkEvidence(peer.origin, head.note, note, (), "same size, different roots", True))
            return
        lo, hi = (head, cp) if head.size < cp.size else (cp, head)
        proof = await self._get_proof(peer, lo.size, hi.size)
        if proof is None:
            if cp.size > head.size:
                log.warning("peer %s gave no consistency proof %d -> %d", peer.origin, lo.size, hi.size)
            return  # an error answer (a lagging replica, an overload) proves nothing
        try:
            merkle.verify_consistency(lo.size, hi.size, proof, lo.root, hi.root)
        except ProofError as exc:
            lo_note, hi_note = (head.note, note) if head.size < cp.size else (note, head.note)
            await self._fork(ForkEvidence(peer.origin, lo_note, hi_note, tuple(b64encode(p) for p in proof),
                                          f"consistency proof {lo.size} -> {hi.size} fails: {exc}", True))
            return
        if cp.size > head.size:
            await asyncio.to_thread(store.advance, cp, note, source, (head.size, head.root))

    # -- push ----------------------------------------------------------------------------

    async def push(self, peer: PinnedLog) -> None:
        """Offer our latest checkpoint to the peer's witness; keep its cosignature."""
        note = await self.own_checkpoint()
        if note is None or not peer.witnesses:
            return
        cp = parse_checkpoint(parse_note(note).text)
        if await asyncio.to_thread(self._have_cosignature, peer, cp):
            return
        old = self._pushed.get(peer.origin, 0)
        for _ in range(2):
            if old > cp.size:
                return  # the peer saw a newer checkpoint of ours than this node has: we lag
            proof = await self.own_proof(old, cp.size) if 0 < old < cp.size else []
            status, ctype, body = await self._http("POST", f"{peer.url}{PREFIX}/add-checkpoint",
                                                   format_add_checkpoint(old, proof, note))
            if status == 409 and ctype.startswith("text/x.tlog.size"):
                try:
                    old = int(body.strip())
                except ValueError:
                    return
                self._pushed[peer.origin] = old
                continue
            if status != 200:
                log.warning("peer %s refused our checkpoint %d: HTTP %d %s", peer.origin, cp.size, status,
                            body[:200])
                return
            self._pushed[peer.origin] = cp.size
            await asyncio.to_thread(keep_cosignatures, self.witness.store, peer.witnesses, cp, body, now=time.time())
            return

    def _have_cosignature(self, peer: PinnedLog, cp: Checkpoint) -> bool:
        keys = {(w.name, w.key_id) for w in peer.witnesses}
        try:
            sigs = [parse_signature_line(x) for x in self.witness.store.cosignatures(cp.size, cp.root)]
        except NoteError:
            return False
        return any((s.name, s.key_id) in keys for s in sigs)

    # -- gossip --------------------------------------------------------------------------

    async def gossip(self, peer: PinnedLog) -> None:
        """Check what ``peer`` witnessed of third parties (and of us) against our records."""
        status, _, text = await self._http("GET", f"{peer.url}{PREFIX}/witnessed")
        if status != 200:
            return
        try:
            entries = json.loads(text)
        except ValueError:
            return
        if not isinstance(entries, list):
            return
        for entry in entries[:256]:
            if not isinstance(entry, dict) or not isinstance(entry.get("note"), str):
                continue
            origin = entry.get("origin")
            if origin == self.origin:
                await self._check_own(entry["note"], peer)
                continue
            third = self.witness.logs.get(origin) if isinstance(origin, str) else None
            if third is None or third.origin == peer.origin:
                continue
            try:
                cp, _ = open_checkpoint(entry["note"], third.verifiers, third.origin)
            except NoteError:
                continue
            if third.url:
                try:
                    await self._consider_gossip(third, cp, entry["note"], peer.origin)
                except PeerUnreachable:
                    continue
            else:
                head = await asyncio.to_thread(self.witness.store.head, third.origin)
                if head is not None and head.size == cp.size and head.root != cp.root:
                    await self._fork(ForkEvidence(third.origin, head.note, entry["note"], (),
                                                  "same size, different roots", True))

    async def _consider_gossip(self, log_: PinnedLog, cp: Checkpoint, note: str, via: str) -> None:
        head = await asyncio.to_thread(self.witness.store.head, log_.origin)
        if head is None:
            return
        if (cp.size, cp.root) != (head.size, head.root):
            await self._consider(log_, cp, note, f"gossip:{via}")

    async def _check_own(self, note: str, peer: PinnedLog) -> None:
        """A peer's view of *our* log must be a head of our own tree (else our key signs two
        histories: a stolen key, or a rewritten database)."""
        try:
            cp, _ = open_checkpoint(note, self.own_verifiers, self.origin)
        except NoteError:
            return
        root = await self.own_root(cp.size)
        if root is not None and root != cp.root:
            mine = await self.own_checkpoint() or ""
            await self._fork(ForkEvidence(self.origin, mine, note, (),
                                          f"peer {peer.origin} holds a checkpoint of ours at size {cp.size} whose root"
                                          " is not our tree's", True))

    # -- forks ---------------------------------------------------------------------------

    def _fork_noticed(self, ev: ForkEvidence) -> None:
        log.error("FORK of %s: %s", ev.origin, ev.reason)
        if ev.origin in self.status:
            self.status[ev.origin].forked = True

    async def _fork(self, ev: ForkEvidence, source: str = "self") -> None:
        _, new = await asyncio.to_thread(self.witness.store.add_fork, ev, source)
        if new:
            self._fork_noticed(ev)

    async def _report_forks(self) -> None:
        """Send each confirmed piece of evidence once to every other peer."""
        forks = [f for f in await asyncio.to_thread(self.witness.store.forks) if f.confirmed]
        for ev in forks:
            for peer in self.peers:
                key = (ev.pair, peer.origin)
                if not peer.url or peer.origin == ev.origin or key in self._reported:
                    continue
                body = json.dumps({"origin": ev.origin, "note_a": ev.note_a, "note_b": ev.note_b,
                                   "proof": list(ev.proof), "reason": ev.reason, "reporter": self.origin}).encode()
                try:
                    status, _, _ = await self._http("POST", f"{peer.url}{PREFIX}/forks", body)
                except PeerUnreachable:
                    continue
                if status < 500:
                    self._reported.add(key)

    async def receive_report(self, data: dict[str, Any]) -> ForkEvidence:
        """Check a fork report from a peer ourselves; store it (confirmed only when proven here).

        Both notes must verify under the keys we pin for the origin. Equal sizes with different
        roots prove the fork on their own; otherwise we ask the origin for the consistency proof,
        and only a proof that fails (not an unreachable log) confirms it.
        """
        try:
            origin, note_a, note_b = data["origin"], data["note_a"], data["note_b"]
            reporter = str(data.get("reporter", "?"))[:100]
            if not all(isinstance(x, str) for x in (origin, note_a, note_b)):
                raise TypeError
        except (KeyError, TypeError):
            raise WitnessError(400, "malformed", "a fork report needs origin, note_a and note_b") from None
        cp_a, _ = self.witness.open(note_a, origin)
        cp_b, _ = self.witness.open(note_b, origin)
        log_ = self.witness.logs[origin]
        (lo, lo_note), (hi, hi_note) = sorted([(cp_a, note_a), (cp_b, note_b)], key=lambda x: x[0].size)
        confirmed = False
        proof_b64: tuple[str, ...] = ()
        if lo.size == hi.size:
            if lo.root == hi.root:
                raise WitnessError(422, "not_a_fork", "the two checkpoints are the same")
            confirmed, reason = True, "same size, different roots"
        else:
            offered = data.get("proof") or []
            try:
                offered_proof = [b64decode_strict(x) for x in offered] if isinstance(offered, list) else []
                merkle.verify_consistency(lo.size, hi.size, offered_proof, lo.root, hi.root)
                raise WitnessError(422, "not_a_fork", "the offered proof shows the checkpoints are consistent")
            except (NoteError, ProofError, TypeError):
                pass
            reason = f"reported by {reporter}: no consistency proof {lo.size} -> {hi.size}"
            if log_.url and lo.size > 0:
                try:
                    proof = await self._get_proof(log_, lo.size, hi.size)
                except PeerUnreachable:
                    proof = None
                if proof is not None:
                    proof_b64 = tuple(b64encode(p) for p in proof)
                    try:
                        merkle.verify_consistency(lo.size, hi.size, proof, lo.root, hi.root)
                        raise WitnessError(422, "not_a_fork", "the log proved the checkpoints consistent")
                    except ProofError as exc:
                        confirmed, reason = True, f"consistency proof {lo.size} -> {hi.size} fails: {exc}"
        ev = ForkEvidence(origin, lo_note, hi_note, proof_b64, reason, confirmed)
        ev_id, new = await asyncio.to_thread(self.witness.store.add_fork, ev, f"peer:{reporter}")
        if new and confirmed:
            self._fork_noticed(ev)
        return dataclasses.replace(ev, id=ev_id)

    # -- status --------------------------------------------------------------------------

    def _witnesses_of(self, origin: str) -> list[CosignatureVerifier]:
        """Every witness of ``origin`` we know: this node and the other organisations' nodes."""
        out = [self.witness.verifier()]
        for p in self.witness.logs.values():
            if p.origin != origin:
                out.extend(p.witnesses)
        return out

    def peer_status(self) -> list[dict[str, Any]]:
        forked = self.witness.store.forked_origins()
        out = []
        for p in self.peers:
            st = self.status[p.origin]
            st.forked = st.forked or p.origin in forked
            out.append(st.to_json(self.k, len(self._witnesses_of(p.origin))))
        return out


def keep_cosignatures(store: Any, witnesses: tuple[CosignatureVerifier, ...] | list[CosignatureVerifier],
                      cp: Checkpoint, body: str, *, now: float) -> int:
    """Store the cosignatures in an add-checkpoint response made by ``witnesses``; returns how
    many were kept. Unknown keys are ignored (tlog-witness); bad ones and timestamps more than
    5 minutes ahead are refused, and nothing of them is stored."""
    try:
        sigs = parse_signature_lines(body)
    except NoteError:
        return 0
    known = {(w.name, w.key_id): w for w in witnesses}
    kept = 0
    for sig in sigs:
        w = known.get((sig.name, sig.key_id))
        if w is None:
            continue
        try:
            ts = verify_cosignature(cp.body(), sig, w, int(now), MAX_FUTURE_S)
        except NoteError as exc:
            log.warning("cosignature by %s refused: %s", sig.name, exc)
            continue
        store.save_cosignature(sig, cp.size, cp.root, ts)
        kept += 1
    return kept
