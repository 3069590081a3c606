"""Wall-clock timestamps and identifiers, fixed by the proposer of a command.

The state machine must be deterministic, so nothing it stores may be computed during apply:
the node that proposes a command stamps it with these values first.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def now_iso() -> str:
    """UTC now as fixed-width ISO 8601 (microseconds, 'Z'): sorts as text in SQLite."""
    return datetime.now(UTC).strftime(ISO_FORMAT)


def iso_from_unix(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(ISO_FORMAT)


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp; naive values are taken as UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def normalize_iso(text: str) -> str:
    """Any ISO 8601 timestamp → the stored fixed-width form (raises ValueError)."""
    return parse_iso(text).strftime(ISO_FORMAT)


def new_id(prefix: str) -> str:
    """A time-ordered id: prefix, 12 hex digits of milliseconds, 12 random hex digits."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"
