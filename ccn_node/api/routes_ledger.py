"""The ledger and federation API: checkpoint, keys, proofs, blocks, the witness, forks.

What is public and why (ledger/DESIGN.md "What peers may see"): checkpoints, verifier keys,
blocks, consistency proofs and inclusion proofs *by index* reveal only hashes and signed
heads — what another organisation needs to witness us, with no message content or metadata.
An inclusion proof *by message id* also returns the leaf bytes (ids, timestamps, the content
hash): only the message's owner gets it; anyone else gets 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from ccn_node.api.auth import AuthError, Principal
from ccn_node.api.context import json_response, requires, services
from ccn_node.api.errors import ApiError, bad_request, not_found, unauthorized
from ccn_node.ledger.chain import Block, blocks_after, last_block
from ccn_node.ledger.federation import Federation
from ccn_node.ledger.merkle import ProofError
from ccn_node.ledger.note import MAX_TREE_SIZE, b64encode, parse_note
from ccn_node.ledger.tree_store import MerkleTree
from ccn_node.ledger.witness import MAX_BODY_BYTES, TLOG_SIZE_TYPE, WitnessError

routes = web.RouteTableDef()
PREFIX = "/api/v1/ledger"
MAX_BLOCKS = 1000
MAX_REPORT_BYTES = 3 * MAX_BODY_BYTES
"""A fork report: two notes and a proof, each bounded like an add-checkpoint body."""
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,18}")


def _federation(request: web.Request) -> Federation:
    fed = services(request).extra.get("federation")
    if fed is None:
        raise ApiError(503, "unavailable", "this node has no ledger federation configured")
    return fed


def _size_param(request: web.Request, name: str, default: int | None = None) -> int:
    """A tree size or index: decimal, 0 … 2^63-1; anything else is a 400 naming the parameter."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise bad_request(f"{name} is required", field=name)
        return default
    if not _SIZE_RE.fullmatch(raw) or int(raw) > MAX_TREE_SIZE:
        raise bad_request(f"{name} must be a decimal integer from 0 to 2^63-1", field=name)
    return int(raw)


def _caller(request: web.Request) -> Principal | None:
    """The bearer token's principal, if any (the route itself is public)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        return services(request).tokens.verify(token.strip())
    except AuthError as exc:
        raise unauthorized(str(exc)) from None


def _text(body: str, status: int = 200, content_type: str = "text/plain") -> web.Response:
    return web.Response(text=body, status=status, content_type=content_type, charset="utf-8")


def _witness_error(exc: WitnessError) -> web.Response:
    if exc.status == 409 and exc.size is not None:
        return web.Response(text=f"{exc.size}\n", status=409, content_type=TLOG_SIZE_TYPE)
    return ApiError(exc.status, exc.code, exc.message).response()


def _block_json(b: Block) -> dict[str, Any]:
    return {"block_number": b.block_number, "previous_hash": b.previous_hash, "current_hash": b.current_hash,
            "tree_size": b.tree_size, "root": b.root.hex(), "timestamp": b.timestamp,
            "data_snapshot": b.data_snapshot, "checkpoint": b.checkpoint}


async def cosigned_checkpoint(request: web.Request) -> tuple[str, int] | None:
    """Our latest signed checkpoint with the cosignatures collected for it, and its size."""
    block = await services(request).store.read(last_block)
    if block is None:
        return None
    note = block.checkpoint
    fed = services(request).extra.get("federation")
    if fed is not None:  # the witness file's lock may be held by an add-checkpoint fsync: off the loop
        lines = await asyncio.to_thread(fed.witness.store.cosignatures, block.tree_size, block.root)
        note += "".join(line + "\n" for line in lines)
    return note, block.tree_size


@routes.get(f"{PREFIX}/checkpoint")
@requires("public")
async def checkpoint(request: web.Request) -> web.Response:
    """The latest C2SP checkpoint (signed note), with witness cosignatures appended."""
    found = await cosigned_checkpoint(request)
    if found is None:
        raise not_found("checkpoint (no block sealed yet)")
    return _text(found[0])


@routes.get(f"{PREFIX}/vkey")
@requires("public")
async def vkey(request: web.Request) -> web.Response:
    """The C2SP verifier key of this node's ledger (what peers pin as ``vkeys``)."""
    value = services(request).extra.get("ledger_vkey")
    if not value:
        raise not_found("ledger key")
    return _text(value + "\n")


@routes.get(f"{PREFIX}/witness/vkey")
@requires("public")
async def witness_vkey(request: web.Request) -> web.Response:
    """This node's cosignature/v1 verifier key (what peers pin as ``witness_vkeys``)."""
    return _text(_federation(request).witness.vkey() + "\n")


@routes.get(f"{PREFIX}/proof/inclusion")
@requires("public")
async def inclusion(request: web.Request) -> web.Response:
    """By ``message_id`` (its owner only) or by ``index`` and ``size`` (anyone: hashes only)."""
    svc = services(request)
    message_id = request.query.get("message_id")
    if message_id is not None:
        return await _inclusion_of_message(request, message_id)
    index = _size_param(request, "index")
    size = _size_param(request, "size")
    if index >= size:
        raise bad_request("index must be below size", field="index")

    def run(conn: Any) -> tuple[bytes, list[bytes], bytes]:
        tree = MerkleTree(conn)
        return tree.leaf(index).leaf_hash, tree.inclusion_proof(index, size), tree.root(size)

    try:
        leaf_hash, proof, root = await svc.store.read(run)
    except (ProofError, KeyError):
        raise not_found(f"tree size {size}") from None
    return json_response({"index": index, "size": size, "leaf_hash": b64encode(leaf_hash), "root": b64encode(root),
                          "proof": [b64encode(p) for p in proof]})


async def _inclusion_of_message(request: web.Request, message_id: str) -> web.Response:
    """The proof that a user's message is in the latest checkpoint; 404 unless it is theirs."""
    svc = services(request)
    who = _caller(request)
    if who is None or len(message_id) > 200:
        raise not_found("message")
    found = await cosigned_checkpoint(request)

    def run(conn: Any) -> dict[str, Any] | None:
        row = conn.execute("SELECT user_id FROM messages WHERE message_id = ?", (message_id,)).fetchone()
        if row is None or row[0] != who.user_id:
            return None
        tree = MerkleTree(conn)
        indices = tree.find(message_id, "msg.append")
        if not indices:
            return None
        leaf = tree.leaf(indices[0])
        out: dict[str, Any] = {"message_id": message_id, "index": leaf.index, "leaf_hash": b64encode(leaf.leaf_hash),
                               "leaf_bytes": b64encode(leaf.leaf_bytes)}
        if found is None or leaf.index >= found[1]:
            return out | {"sealed": False}
        size = found[1]
        return out | {"sealed": True, "size": size, "root": b64encode(tree.root(size)), "checkpoint": found[0],
                      "proof": [b64encode(p) for p in tree.inclusion_proof(leaf.index, size)]}

    result = await svc.store.read(run)
    if result is None:
        raise not_found("message")
    return json_response(result)


@routes.get(f"{PREFIX}/proof/consistency")
@requires("public")
async def consistency(request: web.Request) -> web.Response:
    """RFC 9162 consistency proof from size ``from`` to size ``to`` (0 < from <= to)."""
    size1 = _size_param(request, "from")
    size2 = _size_param(request, "to")
    if size1 > size2:
        raise bad_request("from must not exceed to", field="from")
    if size1 == 0:
        raise bad_request("there is no consistency proof from the empty tree", field="from")

    def run(conn: Any) -> tuple[list[bytes], bytes, bytes]:
        tree = MerkleTree(conn)
        return tree.consistency_proof(size1, size2), tree.root(size1), tree.root(size2)

    try:
        proof, root1, root2 = await services(request).store.read(run)
    except ProofError:
        raise not_found(f"tree size {size2}") from None
    return json_response({"from": size1, "to": size2, "root_from": b64encode(root1), "root_to": b64encode(root2),
                          "proof": [b64encode(p) for p in proof]})


@routes.get(f"{PREFIX}/blocks")
@requires("public")
async def blocks(request: web.Request) -> web.Response:
    """Blocks of the verification chain after block number ``after``, oldest first."""
    after = _size_param(request, "after", 0)
    limit = _size_param(request, "limit", 100)
    if not 1 <= limit <= MAX_BLOCKS:
        raise bad_request(f"limit must be between 1 and {MAX_BLOCKS}", field="limit")
    rows = await services(request).store.read(blocks_after, after, limit)
    return json_response({"blocks": [_block_json(b) for b in rows],
                          "next_after": rows[-1].block_number if rows else after})


@routes.post(f"{PREFIX}/add-checkpoint")
@requires("public")
async def add_checkpoint(request: web.Request) -> web.Response:
    """c2sp.org/tlog-witness add-checkpoint: cosign a pinned peer's checkpoint."""
    fed = _federation(request)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _witness_error(WitnessError(413, "payload_too_large", f"at most {MAX_BODY_BYTES} bytes"))
    body = await request.content.read(MAX_BODY_BYTES + 1)
    try:
        line = await asyncio.to_thread(fed.witness.add_checkpoint, body)
    except WitnessError as exc:
        return _witness_error(exc)
    return _text(line)


@routes.get(f"{PREFIX}/witnessed")
@requires("public")
async def witnessed(request: web.Request) -> web.Response:
    """The checkpoints of other logs this node verified (for gossip between witnesses)."""
    heads = await asyncio.to_thread(_federation(request).witness.store.heads)
    return json_response([{k: v for k, v in h.to_json().items() if k in ("origin", "size", "root", "note")}
                          for h in heads])


@routes.get(f"{PREFIX}/forks")
@requires("public")
async def forks(request: web.Request) -> web.Response:
    """Fork evidence this node holds: both signed notes and the proof (or its absence)."""
    return json_response([f.to_json() for f in await asyncio.to_thread(_federation(request).witness.store.forks)])


@routes.post(f"{PREFIX}/forks")
@requires("public")
async def report_fork(request: web.Request) -> web.Response:
    """A peer reports a fork; it is checked here (both notes against our pinned keys, and the
    log asked for the proof) before it counts."""
    fed = _federation(request)
    body = await request.content.read(MAX_REPORT_BYTES + 1)
    if len(body) > MAX_REPORT_BYTES:
        raise ApiError(413, "payload_too_large", "fork reports are at most 24 KB")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("a JSON body is required", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("a JSON object is required", code="invalid_json")
    try:
        ev = await fed.receive_report(data)
    except WitnessError as exc:
        return _witness_error(exc)
    return json_response(ev.to_json(), status=200 if ev.confirmed else 202)


@routes.get(f"{PREFIX}/federation")
@requires("admin")
async def federation_status(request: web.Request) -> web.Response:
    """Per-origin witness status: reachable, size, who cosigned, witnessed (k of n), forked."""
    fed = _federation(request)
    found = await cosigned_checkpoint(request)
    ours: dict[str, Any] = {"origin": fed.origin, "size": None, "cosignatures": 0}
    if found is not None:
        ours.update(size=found[1], cosignatures=len(parse_note(found[0]).signatures) - 1)
    forks = await asyncio.to_thread(fed.witness.store.forks)
    return json_response({"self": ours, "witness_vkey": fed.witness.vkey(), "peers": fed.peer_status(),
                          "forks": len(forks)})
