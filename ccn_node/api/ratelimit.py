"""In-process token buckets: requests per minute per user (or per address when anonymous),
and model tokens per user per day. Replaces the specification's Redis limiter; limits are per
node, which a cluster operator multiplies by the node count when sizing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Requests per minute with a burst allowance; ``check`` answers (allowed, remaining, retry_after)."""

    per_minute: int
    burst: int
    max_keys: int = 100_000
    _buckets: dict[str, Bucket] = field(default_factory=dict)

    def check(self, key: str, now: float | None = None) -> tuple[bool, int, float]:
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        capacity = float(max(self.burst, 1))
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now, rate, capacity)
            bucket = self._buckets[key] = Bucket(tokens=capacity, updated=now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True, int(bucket.tokens), 0.0
        return False, 0, (1.0 - bucket.tokens) / rate

    def _evict(self, now: float, rate: float, capacity: float) -> None:
        """Drop buckets that have refilled completely: they carry no information."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * rate >= capacity]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


@dataclass
class DailyTokenBudget:
    """Model tokens per user per UTC day."""

    per_day: int
    _used: dict[tuple[str, int], int] = field(default_factory=dict)

    @staticmethod
    def _day(now: float | None) -> int:
        return int((time.time() if now is None else now) // 86400)

    def remaining(self, user: str, now: float | None = None) -> int:
        return max(0, self.per_day - self._used.get((user, self._day(now)), 0))

    def spend(self, user: str, tokens: int, now: float | None = None) -> None:
        day = self._day(now)
        self._used[(user, day)] = self._used.get((user, day), 0) + tokens
        for key in [k for k in self._used if k[1] < day]:
            del self._used[key]

    def seconds_to_reset(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return 86400 - now % 86400
