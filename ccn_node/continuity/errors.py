"""Errors of the continuity services, independent of HTTP (the API maps them to statuses)."""

from __future__ import annotations


class ContinuityError(Exception):
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after


class NotFound(ContinuityError):
    """Also used for other users' objects, so that ids do not leak."""

    code = "not_found"


class Invalid(ContinuityError):
    code = "invalid_request"


class Conflict(ContinuityError):
    code = "conflict"


class Busy(Conflict):
    """A turn is already running in this conversation and the client asked not to wait."""

    code = "turn_in_progress"


class Ended(Conflict):
    code = "conversation_ended"


class QuotaExceeded(ContinuityError):
    code = "token_quota_exceeded"


class ModelDown(ContinuityError):
    """The model backend failed (after its own retries); nothing partial was stored."""

    code = "model_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, partial: str = "") -> None:
        super().__init__(message, retry_after=retry_after)
        self.partial = partial


class NotReady(ContinuityError):
    """E.g. the instance failed validation: the conversation is refused for now."""

    code = "instance_not_ready"

    def __init__(self, message: str, *, report: dict | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.report = report or {}
