"""Seed metrics over HTTP: one conversation's per-turn series and aggregate, and the caller's live view."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ccn_node.api.context import json_response, principal, requires, services
from ccn_node.api.errors import not_found
from ccn_node.api.routes_conversation import apply_consistency
from ccn_node.continuity.metrics import TurnMetrics, aggregate
from ccn_node.continuity.probe import DIMENSIONS
from ccn_node.store import queries

routes = web.RouteTableDef()

_FIELDS = TurnMetrics.__struct_fields__


def _turn(metrics: dict[str, Any]) -> TurnMetrics:
    """A stored turn's metrics as TurnMetrics (a metric a row lacks is None and left out of its stat)."""
    return TurnMetrics(**{k: metrics.get(k) for k in _FIELDS})  # type: ignore[arg-type]


@routes.get("/api/v1/metrics/conversation/{session_id}")
@requires("user")
async def conversation_metrics(request: web.Request) -> web.Response:
    """Per-turn seed metrics of one of your conversations and their aggregate (mean / last / min)."""
    session_id = request.match_info["session_id"]
    user_id = principal(request).user_id
    if len(session_id) > 100:
        raise not_found("conversation")
    await apply_consistency(request)
    series = await services(request).store.read(queries.metrics_series, user_id, session_id)
    if series is None:
        raise not_found("conversation")
    turns = [_turn(row["metrics"]) for row in series]
    return json_response({
        "session_id": session_id,
        "turns": series,
        "aggregate": msgspec.to_builtins(aggregate(turns)),
    })


@routes.get("/api/v1/metrics/realtime")
@requires("user")
async def realtime_metrics(request: web.Request) -> web.Response:
    """Your active conversations with their latest metrics, active instances, and the last consensus round."""
    user_id = principal(request).user_id

    def read(conn: Any) -> dict[str, Any]:
        consensus = queries.last_consensus(conn)
        if consensus is not None:
            consensus = {
                "round_id": consensus["round_id"],
                "created_at": consensus["created_at"],
                "instance_count": consensus["instance_count"],
                "vector": consensus["consensus_vector"],
                "consensus": dict(zip(DIMENSIONS, consensus["consensus_vector"], strict=False)),
                "outliers": len(consensus["outliers"]),
            }
        return {
            "conversations": queries.latest_metrics_by_conversation(conn, user_id),
            "instances": {"active": queries.count_active_instances(conn),
                          "active_yours": queries.count_active_instances(conn, user_id)},
            "consensus": consensus,
        }

    return json_response(await services(request).store.read(read))
