"""Admin routes: the live instances of the cluster and forcing a consensus round."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ccn_node.api.context import json_response, query_int, requires, services
from ccn_node.api.errors import ApiError, bad_request
from ccn_node.continuity.consensus_service import ConsensusService, NotLeader
from ccn_node.continuity.instances import InstanceManager
from ccn_node.store import queries

routes = web.RouteTableDef()

STATUSES = ("spawning", "active", "idle", "terminated", "failed")


def instance_manager(request: web.Request) -> InstanceManager:
    manager = services(request).extra.get("instances")
    if manager is None:
        raise ApiError(503, "unavailable", "instances are not tracked on this node")
    return manager


def consensus_service(request: web.Request) -> ConsensusService:
    service = services(request).extra.get("consensus")
    if service is None:
        raise ApiError(503, "unavailable", "consensus rounds are not run on this node")
    return service


def _validation_summary(validation: dict[str, Any] | None) -> dict[str, Any] | None:
    """What an operator scans for: ran?, passed?, score, attempts, token cost (reports stay in `validation`)."""
    if not validation:
        return None
    keys = ("policy", "ran", "reason", "passed", "score", "passed_count", "required", "attempts", "tokens",
            "cost_usd", "elapsed_ms")
    return {k: validation[k] for k in keys if k in validation}


@routes.get("/api/v1/admin/instances")
@requires("admin")
async def list_instances(request: web.Request) -> web.Response:
    """Instances of every node: id, conversation, node, status, spawn and heartbeat times, drift, validation.

    `?status=active|failed|terminated|…` filters; `?detail=1` adds the per-question validation reports.
    """
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise bad_request(f"status must be one of {', '.join(STATUSES)}", field="status")
    limit = query_int(request, "limit", 200, low=1, high=1000)
    offset = query_int(request, "offset", 0, low=0)
    detail = request.query.get("detail") in ("1", "true")
    rows = await services(request).store.read(
        lambda conn: queries.list_instances(conn, status=status, limit=limit, offset=offset)
    )
    manager = instance_manager(request)
    live = manager.live()
    out = []
    for row in rows:
        here = live.get(row["instance_id"])
        heartbeat = row["last_heartbeat"]
        if here is not None and here["last_active"] > heartbeat:
            heartbeat = here["last_active"]
        item = {
            "instance_id": row["instance_id"],
            "session_id": row["session_id"],
            "node_id": row["node_id"],
            "status": row["status"],
            "spawned_at": row["spawned_at"],
            "last_heartbeat": heartbeat,
            "terminated_at": row["terminated_at"],
            "termination_reason": row["termination_reason"],
            "plate_version": row["plate_version"],
            "drift": row["drift"],
            "character_vector": row["character_vector"],
            "validation": _validation_summary(row["validation"]),
            "live_here": here is not None,
        }
        if detail and row["validation"]:
            item["validation_reports"] = row["validation"].get("reports", [])
        out.append(item)
    return json_response({"instances": out, "limit": limit, "offset": offset, "node": manager.node_id})


@routes.post("/api/v1/admin/consensus/force")
@requires("admin")
async def force_consensus(request: web.Request) -> web.Response:
    """Run one consensus round now (on the leader) and return it; with no active instances it is a no-op."""
    try:
        result = await consensus_service(request).run_round()
    except NotLeader as exc:
        raise ApiError(503, "not_leader", str(exc), retry_after=1.0, extra={"leader": exc.leader}) from None
    return json_response(result)
