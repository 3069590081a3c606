"""The error model: every error is JSON ``{"error": {"code", "message"}}`` with the right status.

Handlers raise ``ApiError``; the middleware renders it. Anything else that escapes a handler
is a bug: it is logged (without request content) and answered with a generic 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from ccn_node.replication.log import CommandLogError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        error.update(self.extra)
        return {"error": error}

    def response(self) -> web.Response:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        return web.Response(
            status=self.status,
            body=msgspec.json.encode(self.body()),
            content_type="application/json",
            headers=headers,
        )


def bad_request(message: str, field: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message, field=field)


def unauthorized(message: str = "a valid bearer token is required") -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str = "this needs the admin role") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def from_log_error(exc: CommandLogError) -> ApiError:
    """A write that did not produce an outcome: 503, with the request id for a safe retry.

    Every kind (not leader, no quorum, backpressure, outcome unknown, stopped) answers the
    same way; the error's own ``code`` and ``retry_after`` say which it was."""
    extra = {"request_id": exc.request_id} if exc.request_id else {}
    return ApiError(503, exc.code, str(exc), retry_after=exc.retry_after, extra=extra)


_STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except CommandLogError as exc:
        return from_log_error(exc).response()
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "payload_too_large", "the request body is too large").response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "http_error")
        return ApiError(exc.status, code, exc.reason or code).response()
    except (ConnectionResetError, TimeoutError) as exc:
        log.info("client went away: %s", type(exc).__name__)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.match_info.route.resource or request.path)
        return ApiError(500, "internal", "internal error").response()
