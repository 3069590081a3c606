"""Request and response types of the API, as msgspec Structs.

They validate every body (unknown fields, wrong types, limits) and generate /openapi.json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

Text = Annotated[str, Meta(min_length=1, max_length=1_000_000)]
Title = Annotated[str, Meta(max_length=200)]
MetaValue = str | int | float | bool | None


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class StartConversationRequest(_Body):
    title: Title = ""
    metadata: Annotated[dict[Annotated[str, Meta(max_length=64)], MetaValue], Meta(max_length=32)] = {}


class StartConversationResponse(msgspec.Struct, kw_only=True):
    session_id: str
    websocket_url: str
    metrics_url: str
    created_at: str
    plate_version: str


class MessageRequest(_Body):
    """One user turn, like the WebSocket `message` frame."""

    content: Text
    wait: bool = True
    stream: bool = False


class ContextRequest(_Body):
    content: Text


class Message(msgspec.Struct, kw_only=True):
    message_id: str
    seq: int
    role: str
    content: str
    created_at: str
    tokens: int
    content_sha256: str
    erased_at: str | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    character_snapshot: list[float] | None = None


class Conversation(msgspec.Struct, kw_only=True):
    session_id: str
    title: str
    status: str
    created_at: str
    ended_at: str | None = None
    plate_version: str
    message_count: int
    metadata: dict[str, Any] = {}
    messages: list[Message] = []


class TurnResponse(msgspec.Struct, kw_only=True):
    session_id: str
    user_message_id: str
    message_id: str
    seq: int
    content: str
    model: str
    backend: str
    is_language_model: bool
    usage: dict[str, Any]
    cost_usd: float
    metrics: dict[str, Any]
    replayed: bool


class SearchHit(msgspec.Struct, kw_only=True):
    message_id: str
    session_id: str
    seq: int
    role: str
    created_at: str
    snippet: str
    score: float


class SearchResponse(msgspec.Struct, kw_only=True):
    query: str
    hits: list[SearchHit]


class ErrorBody(msgspec.Struct, kw_only=True):
    code: str
    message: str
    field: str | None = None
    retry_after: float | None = None


class ErrorResponse(msgspec.Struct, kw_only=True):
    error: ErrorBody


class WsMessageFrame(_Body, tag_field="type", tag="message"):
    content: Text
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=200)] | None = None


class WsPingFrame(_Body, tag_field="type", tag="ping"):
    pass


WsClientFrame = WsMessageFrame | WsPingFrame

Consistency = Literal["local", "leader", "linearizable"]
