"""The command-log interface: what the services above call to make a write happen.

Two implementations: ``LocalLog`` (one node, applies directly) and ``RaftLog`` (pysyncobj:
applies on every node once a majority holds the entry). Callers never know which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgspec


class ApplyResult(msgspec.Struct, kw_only=True):
    """What applying one command produced; stored per request id for exactly-once."""

    index: int
    request_id: str
    ok: bool
    value: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    duplicate: bool = False


class PeerStatus(msgspec.Struct, kw_only=True):
    address: str
    connected: bool
    match_index: int | None = None
    lag: int | None = None


class LogStatus(msgspec.Struct, kw_only=True):
    kind: str  # "local" or "raft"
    role: str  # "leader", "follower", "candidate"
    term: int
    leader: str | None
    self_address: str | None
    commit_index: int
    applied_index: int
    has_quorum: bool
    peers: list[PeerStatus] = []


class CommandLogError(Exception):
    """A proposal did not produce an outcome; ``retry_after`` hints when to try again."""

    code = "unavailable"

    def __init__(self, message: str, *, request_id: str | None = None, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.retry_after = retry_after


class NotLeaderError(CommandLogError):
    code = "not_leader"


class NoQuorumError(CommandLogError):
    code = "no_quorum"


class OutcomeUnknownError(CommandLogError):
    """Timed out or leadership changed: the command may or may not have been applied.

    Retrying with the same request id is safe: the state machine returns the first outcome.
    """

    code = "outcome_unknown"


class BackpressureError(CommandLogError):
    code = "overloaded"


class LogStoppedError(CommandLogError):
    code = "stopping"


RETRYABLE_CODES = frozenset(
    cls.code
    for cls in (CommandLogError, NotLeaderError, NoQuorumError, OutcomeUnknownError, BackpressureError, LogStoppedError)
)
"""The error codes of a write that may not have happened (the API answers them with 503 and
the request id): a client retries it with the same idempotency key."""


class CommandLog(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def propose(self, entry: bytes, request_id: str, timeout: float | None = None) -> ApplyResult:
        """Resolve once the entry is committed and applied durably on this node."""
        ...

    async def barrier(self, timeout: float | None = None) -> None:
        """Return once this node has applied everything committed before the call."""
        ...

    def status(self) -> LogStatus: ...

    def is_leader(self) -> bool: ...

    def add_leadership_listener(self, callback: Callable[[bool], None]) -> None: ...
