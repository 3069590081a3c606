"""WS /ws/conversation/{session_id}: the specification's WebSocket protocol.

Client frames: ``{"type":"message","content":…}`` (optional ``idempotency_key``) and
``{"type":"ping"}``. Server frames: ``delta`` (streamed tokens), ``response`` (the stored
answer with its metrics), ``metrics`` (``ccc``, ``phi``, …), ``error`` (``code``,
``message``) and ``pong``. A bad frame gets an error frame and the connection stays usable;
frames over the hard size cap (``limits.max_body_bytes``) close the connection (1009).
"""

from __future__ import annotations

import logging

import msgspec
from aiohttp import WSMsgType, web

from ccn_node.api.context import requires, services
from ccn_node.api.errors import ApiError, not_found
from ccn_node.api.schemas import WsClientFrame, WsPingFrame
from ccn_node.continuity.errors import ContinuityError
from ccn_node.store import queries

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
_decoder = msgspec.json.Decoder(WsClientFrame)


def _error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


def _frame_error(exc: Exception) -> dict[str, str]:
    if isinstance(exc, UnicodeDecodeError):
        return _error("invalid_encoding", "frame is not valid UTF-8")
    if isinstance(exc, msgspec.ValidationError):
        return _error("invalid_request", str(exc))
    return _error("invalid_json", f"frame is not JSON: {exc}")


@routes.get("/ws/conversation/{session_id}")
@requires("user")
async def conversation_socket(request: web.Request) -> web.WebSocketResponse:
    """Hold a conversation over a WebSocket (token in Authorization or ?access_token=)."""
    svc = services(request)
    who = request["principal"]
    session_id = request.match_info["session_id"]
    conv = await svc.store.read(queries.get_conversation, who.user_id, session_id)
    if conv is None:
        raise not_found("conversation")
    limit = svc.config.limits.max_ws_frame_bytes
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=max(limit, svc.config.limits.max_body_bytes))
    await ws.prepare(request)
    svc.monitoring.ws_active.inc()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                raw = msg.data.encode("utf-8", "surrogatepass")
            elif msg.type == WSMsgType.BINARY:
                raw = msg.data
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    await ws.send_json(_error("invalid_encoding", "frame is not valid UTF-8"))
                    continue
            elif msg.type == WSMsgType.ERROR:
                break
            else:
                continue
            if len(raw) > limit:
                await ws.send_json(_error("payload_too_large", f"frames are limited to {limit} bytes"))
                continue
            allowed, _, retry_after = svc.limiter.check(f"user:{who.user_id}")
            if not allowed:
                await ws.send_json({**_error("rate_limited", "too many requests"), "retry_after": retry_after})
                continue
            try:
                frame = _decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
                await ws.send_json(_frame_error(exc))
                continue
            if isinstance(frame, WsPingFrame):
                await ws.send_json({"type": "pong"})
                continue

            async def on_delta(text: str) -> None:
                if not ws.closed:
                    await ws.send_json({"type": "delta", "content": text})

            try:
                result = await svc.conversations.turn(
                    who.user_id, session_id, frame.content, idempotency_key=frame.idempotency_key, on_delta=on_delta
                )
            except ContinuityError as exc:
                await ws.send_json(_error(exc.code, exc.message))
                continue
            except ApiError as exc:
                await ws.send_json(_error(exc.code, exc.message))
                continue
            except Exception as exc:  # a log error (no quorum) or a bug: report, keep the socket
                code = getattr(exc, "code", "internal")
                if code == "internal":
                    log.exception("turn failed on websocket")
                await ws.send_json(_error(code, str(exc) if code != "internal" else "internal error"))
                continue
            await ws.send_json({"type": "response", **result.as_dict()})
            await ws.send_json({"type": "metrics", **result.metrics})
    finally:
        svc.monitoring.ws_active.dec()
    return ws
