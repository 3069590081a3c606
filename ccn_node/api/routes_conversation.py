"""Conversation routes: start, read, end, a turn (JSON or SSE), dry-run context, time travel, export."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from aiohttp import web

from ccn_node.api.context import (
    decode_body,
    json_response,
    principal,
    query_int,
    read_body,
    requires,
    services,
)
from ccn_node.api.errors import ApiError, bad_request, not_found
from ccn_node.api.schemas import ContextRequest, MessageRequest, StartConversationRequest
from ccn_node.clock import normalize_iso
from ccn_node.continuity.errors import ContinuityError, ModelDown, NotReady
from ccn_node.store import queries

routes = web.RouteTableDef()

_STATUS = {
    "not_found": 404,
    "invalid_request": 400,
    "conflict": 409,
    "turn_in_progress": 409,
    "conversation_ended": 409,
    "token_quota_exceeded": 429,
    "model_unavailable": 503,
    "instance_not_ready": 503,
}


def api_error(exc: ContinuityError) -> ApiError:
    """Map a service error to the API's error model."""
    extra: dict[str, Any] = {}
    if isinstance(exc, NotReady) and exc.report:
        extra["report"] = exc.report
    if isinstance(exc, ModelDown) and exc.partial:
        extra["partial_chars"] = len(exc.partial)
    return ApiError(_STATUS.get(exc.code, 400), exc.code, exc.message, field=exc.field,
                    retry_after=exc.retry_after, extra=extra)


def base_url(request: web.Request) -> str:
    configured = services(request).config.node.public_url.rstrip("/")
    if configured:
        return configured
    return f"{request.scheme}://{request.host}"


def ws_url(request: web.Request, session_id: str) -> str:
    base = base_url(request)
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + f"/ws/conversation/{session_id}"


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["session_id"]
    if len(session_id) > 100:
        raise not_found("conversation")
    return session_id


async def apply_consistency(request: web.Request, default: str = "local") -> None:
    """Honour ?consistency=local|leader|linearizable before a read (see api/DESIGN.md)."""
    level = request.query.get("consistency", default)
    log = services(request).log
    if level == "local":
        return
    if level == "leader":
        leader_read = getattr(log, "leader_read", None)
        if leader_read is not None:  # RaftLog: NotLeaderError / NoQuorumError (leader lease) → 503
            await leader_read(services(request).config.limits.propose_timeout_s)
            return
        status = log.status()
        if not log.is_leader() or not status.has_quorum:
            raise ApiError(503, "not_leader", "this node is not a leader with a quorum", retry_after=1.0,
                           extra={"leader": status.leader})
        return
    if level == "linearizable":
        await log.barrier(services(request).config.limits.propose_timeout_s)
        return
    raise bad_request("consistency must be local, leader or linearizable", field="consistency")


@routes.post("/api/v1/conversation/start")
@requires("user")
async def start_conversation(request: web.Request) -> web.Response:
    raw = await request.read()
    body = decode_body(raw, StartConversationRequest) if raw.strip() else StartConversationRequest()
    who = principal(request)
    try:
        conv = await services(request).conversations.start(
            who.user_id, who.role, title=body.title, metadata=dict(body.metadata)
        )
    except ContinuityError as exc:
        raise api_error(exc) from None
    sid = conv["session_id"]
    return json_response(
        {
            "session_id": sid,
            "websocket_url": ws_url(request, sid),
            "metrics_url": f"{base_url(request)}/api/v1/metrics/conversation/{sid}",
            "created_at": conv["created_at"],
            "plate_version": conv["plate_version"],
            "status": conv["status"],
        },
        status=201,
    )


@routes.get("/api/v1/conversations")
@requires("user")
async def list_conversations(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 50, low=1, high=500)
    offset = query_int(request, "offset", 0, low=0)
    await apply_consistency(request)
    rows = await services(request).store.read(
        lambda conn: queries.list_conversations(conn, principal(request).user_id, limit=limit, offset=offset)
    )
    return json_response({"conversations": rows, "limit": limit, "offset": offset})


@routes.get("/api/v1/conversation/{session_id}")
@requires("user")
async def get_conversation(request: web.Request) -> web.Response:
    await apply_consistency(request)
    try:
        conv = await services(request).conversations.get(principal(request).user_id, _session_id(request))
    except ContinuityError as exc:
        raise api_error(exc) from None
    return json_response(conv)


@routes.delete("/api/v1/conversation/{session_id}")
@requires("user")
async def end_conversation(request: web.Request) -> web.Response:
    svc = services(request)
    try:
        conv = await svc.conversations.end(principal(request).user_id, _session_id(request))
    except ContinuityError as exc:
        raise api_error(exc) from None
    return json_response(
        {
            "session_id": conv["session_id"],
            "status": conv["status"],
            "ended_at": conv["ended_at"],
            "already_ended": conv["already_ended"],
            "kept": {
                "messages": conv["message_count"],
                "plate_version": conv["plate_version"],
                "last_message_at": conv["last_message_at"],
            },
        }
    )


def _wants_stream(request: web.Request, body: MessageRequest) -> bool:
    if body.stream or request.query.get("stream") in ("1", "true"):
        return True
    return "text/event-stream" in request.headers.get("Accept", "")


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@routes.post("/api/v1/conversation/{session_id}/message")
@requires("user")
async def post_message(request: web.Request) -> web.StreamResponse:
    """One turn over plain HTTP: JSON reply, or SSE (`delta`…, `response`, `metrics` | `error`)."""
    body = await read_body(request, MessageRequest)
    svc = services(request)
    who = principal(request)
    session_id = _session_id(request)
    key = request.headers.get("Idempotency-Key")
    wait = body.wait and request.query.get("wait") not in ("0", "false")
    if not _wants_stream(request, body):
        try:
            result = await svc.conversations.turn(who.user_id, session_id, body.content, idempotency_key=key, wait=wait)
        except ContinuityError as exc:
            raise api_error(exc) from None
        return json_response(result.as_dict())

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    started = False

    async def send(chunk: bytes) -> None:
        nonlocal started
        if not started:
            await response.prepare(request)
            started = True
        await response.write(chunk)

    async def on_delta(text: str) -> None:
        await send(_sse("delta", {"type": "delta", "content": text}))

    try:
        result = await svc.conversations.turn(
            who.user_id, session_id, body.content, idempotency_key=key, wait=wait, on_delta=on_delta
        )
    except ContinuityError as exc:
        if not started:
            raise api_error(exc) from None
        await send(_sse("error", {"type": "error", "code": exc.code, "message": exc.message}))
        await response.write_eof()
        return response
    await send(_sse("response", {"type": "response", **result.as_dict()}))
    await send(_sse("metrics", {"type": "metrics", **result.metrics}))
    await response.write_eof()
    return response


@routes.post("/api/v1/conversation/{session_id}/context")
@requires("user")
async def dry_run_context(request: web.Request) -> web.Response:
    """The context the next turn would send, without calling the model or storing anything."""
    body = await read_body(request, ContextRequest)
    try:
        ctx = await services(request).conversations.dry_run(principal(request).user_id, _session_id(request),
                                                            body.content)
    except ContinuityError as exc:
        raise api_error(exc) from None
    return json_response(msgspec.to_builtins(ctx))


@routes.get("/api/v1/conversation/{session_id}/at")
@requires("user")
async def time_travel(request: web.Request) -> web.Response:
    """The conversation as it was at a sequence number or a timestamp: messages and state then."""
    seq = query_int(request, "seq", None, low=0)
    ts = request.query.get("timestamp")
    if (seq is None) == (ts is None):
        raise bad_request("give exactly one of seq or timestamp", field="seq")
    at: str | None = None
    if ts is not None:
        try:
            at = normalize_iso(ts)
        except ValueError:
            raise bad_request("timestamp must be ISO 8601, e.g. 2026-01-31T12:00:00Z", field="timestamp") from None
    user_id = principal(request).user_id
    session_id = _session_id(request)
    await apply_consistency(request)

    def read(conn: Any) -> dict[str, Any] | None:
        conv = queries.get_conversation(conn, user_id, session_id)
        if conv is None:
            return None
        if at is not None:
            upto_seq = queries.seq_at_time(conn, session_id, at)
            as_of = at
        else:
            upto_seq = min(seq or 0, conv["message_count"])
            as_of = queries.time_of_seq(conn, session_id, upto_seq) if upto_seq else None
        messages = queries.list_messages(conn, user_id, session_id, up_to_seq=upto_seq)
        state = queries.character_state_at(conn, session_id, up_to_time=as_of) if as_of else None
        return {
            "session_id": session_id,
            "as_of": {"seq": upto_seq, "timestamp": as_of},
            "messages": messages,
            "character_state": state,
        }

    result = await services(request).store.read(read)
    if result is None:
        raise not_found("conversation")
    return json_response(result)


def conversation_markdown(conv: dict[str, Any]) -> str:
    lines = [f"# {conv['title'] or 'Conversation'} ({conv['session_id']})", ""]
    lines.append(f"- started: {conv['created_at']}")
    if conv.get("ended_at"):
        lines.append(f"- ended: {conv['ended_at']}")
    lines.append(f"- plate version: {conv['plate_version']}")
    lines.append("")
    for m in conv["messages"]:
        who = "User" if m["role"] == "user" else "Assistant"
        lines.append(f"## {who} · {m['created_at']} · #{m['seq']}")
        lines.append("")
        lines.append(m["content"] if not m.get("erased_at") else "*(erased)*")
        lines.append("")
    return "\n".join(lines)


@routes.get("/api/v1/conversation/{session_id}/export")
@requires("user")
async def export_conversation(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "markdown"):
        raise bad_request("format must be json or markdown", field="format")
    await apply_consistency(request)
    try:
        conv = await services(request).conversations.get(principal(request).user_id, _session_id(request))
    except ContinuityError as exc:
        raise api_error(exc) from None
    if fmt == "markdown":
        return web.Response(text=conversation_markdown(conv), content_type="text/markdown")
    return json_response(conv)
