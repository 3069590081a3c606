"""The cluster's state and membership: ``GET /api/v1/cluster``, ``POST /api/v1/cluster/members``.

Admin only (peer addresses are infrastructure). Membership changes go through the Raft log
one at a time; the reply comes once the change is applied on the answering node.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from aiohttp import web

from ccn_node.api.context import decode_body, json_response, requires, services
from ccn_node.api.errors import ApiError, bad_request


class MembershipRequest(msgspec.Struct, forbid_unknown_fields=True):
    action: Literal["add", "remove"]
    address: str  # the member's raft HOST:PORT, as it appears in cluster.peers


routes = web.RouteTableDef()


@routes.get("/api/v1/cluster")
@requires("admin")
async def cluster_status(request: web.Request) -> web.Response:
    """Role, term, leader, commit and applied index, peers and their lag (as of the last tick)."""
    status = services(request).log.status()
    body = msgspec.to_builtins(status)
    body["self"] = body.pop("self_address")
    body["apply_lag"] = max(0, status.commit_index - status.applied_index)
    body["counters"] = dict(getattr(services(request).log, "counters", {}))  # ticks, snapshots written/installed
    return json_response(body)


@routes.post("/api/v1/cluster/members")
@requires("admin")
async def change_members(request: web.Request) -> web.Response:
    """Add or remove one member; 409 while another change is in progress."""
    body = decode_body(await request.read(), MembershipRequest)
    log = services(request).log
    change = getattr(log, "change_membership", None)
    if change is None:
        raise ApiError(409, "not_a_cluster", "this node runs without [cluster] peers")
    try:
        await change(body.action, body.address.strip())
    except ValueError as exc:
        if "HOST:PORT" in str(exc):
            raise bad_request(str(exc), field="address") from None
        raise ApiError(409, "membership_refused", str(exc)) from None
    return json_response({"action": body.action, "address": body.address, "status": msgspec.to_builtins(log.status())})
