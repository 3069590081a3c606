"""What the API needs from the node, and the request-level plumbing every route shares:
authentication, roles, rate limits, body decoding and JSON responses."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from ccn_node.api.auth import AuthError, Principal, TokenAuthority
from ccn_node.api.errors import ApiError, bad_request, forbidden, unauthorized
from ccn_node.api.ratelimit import DailyTokenBudget, RateLimiter
from ccn_node.config import Config
from ccn_node.continuity.conversation import ConversationService
from ccn_node.replication.log import CommandLog
from ccn_node.store.database import Store

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiServices:
    """Everything the routes use; built by node.py, the only module that knows all parts."""

    config: Config
    store: Store
    log: CommandLog
    conversations: ConversationService
    tokens: TokenAuthority
    limiter: RateLimiter
    token_budget: DailyTokenBudget
    monitoring: Any
    readiness: Callable[[], dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


SERVICES = web.AppKey("services", ApiServices)

_encoder = msgspec.json.Encoder()


def services(request: web.Request) -> ApiServices:
    return request.app[SERVICES]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json", headers=headers)


def principal(request: web.Request) -> Principal:
    value = request.get("principal")
    if value is None:
        raise unauthorized()
    return value


def _authenticate(request: web.Request, tokens: TokenAuthority) -> Principal | None:
    header = request.headers.get("Authorization")
    token: str | None = None
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized("the Authorization header must be 'Bearer <token>'")
        token = value.strip()
    elif request.path.startswith("/ws/") and "access_token" in request.query:
        token = request.query["access_token"]  # browsers cannot set headers on a WebSocket
    if token is None:
        return None
    try:
        return tokens.verify(token)
    except AuthError as exc:
        raise unauthorized(str(exc)) from None


def requires(role: str) -> Callable[[Handler], Handler]:
    """Authenticate, check the role and the caller's rate limit, then run the handler."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            svc = services(request)
            who = _authenticate(request, svc.tokens)
            if role != "public":
                if who is None:
                    raise unauthorized()
                if role == "admin" and not who.is_admin:
                    raise forbidden()
                request["principal"] = who
                await svc.conversations.ensure_user(who.user_id, who.role)
            key = f"user:{who.user_id}" if who is not None else f"ip:{request.remote}"
            allowed, remaining, retry_after = svc.limiter.check(key)
            request["ratelimit_remaining"] = remaining
            if not allowed:
                raise ApiError(429, "rate_limited", "too many requests", retry_after=retry_after)
            return await handler(request)

        wrapped.required_role = role  # type: ignore[attr-defined]
        return wrapped

    return decorate


async def add_ratelimit_headers(request: web.Request, response: web.StreamResponse) -> None:
    remaining = request.get("ratelimit_remaining")
    if remaining is not None:
        response.headers["X-RateLimit-Remaining"] = str(remaining)
        response.headers["X-RateLimit-Limit"] = str(services(request).limiter.per_minute)


def decode_body(raw: bytes, type_: type[T]) -> T:
    """Decode a JSON body into a Struct; every failure is a 400 naming the field."""
    if not raw:
        raise bad_request("a JSON body is required", code="invalid_json")
    try:
        return msgspec.json.decode(raw, type=type_)
    except UnicodeDecodeError:
        raise bad_request("the body is not valid UTF-8", code="invalid_encoding") from None
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = None
        if " - at `" in text:
            text, _, where = text.partition(" - at `")
            path = where.rstrip("`").removeprefix("$.").removeprefix("$") or None
        if text.startswith("Object contains unknown field"):
            path = text.split("`")[1] if "`" in text else path
            text = "unknown field"
        raise bad_request(text, field=path) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"malformed JSON: {exc}", code="invalid_json") from None


async def read_body(request: web.Request, type_: type[T]) -> T:
    """The body is read as JSON whatever Content-Type says (curl sends form-encoded by default)."""
    return decode_body(await request.read(), type_)


def query_int(request: web.Request, name: str, default: int | None, *, low: int = 0, high: int = 2**62) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}", field=name)
    return value
