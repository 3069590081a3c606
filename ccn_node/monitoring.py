"""Prometheus metrics of the node, under the specification's names.

One registry per node (tests run several nodes in one process). Per-conversation gauges are
capped in label cardinality: past ``max_conversations`` labels the oldest is dropped, so a
busy node cannot grow its scrape without bound. Gauges that describe stored state (counts,
raft status, ledger size) are read at scrape time through callbacks.

The per-conversation gauges (five families × up to 1,000 conversations) are rendered by
``_ConversationSeries``, not by prometheus_client: each conversation's sample lines are
formatted once, when its turn is observed, and a scrape only joins them. Through
``generate_latest`` the same 5,000 samples cost ~45 ms per scrape; joined, well under 1 ms
(``ccn-node bench ops``; target ≤ 10 ms for the whole scrape).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.utils import floatToGoString

# prometheus_client >= 0.22 calls its text format 1.0.0; the issue (and every Prometheus server)
# reads 0.0.4, which is what generate_latest writes for legacy-valid names like ours.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
disable_created_metrics()  # the *_created series double the scrape and say nothing useful here
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SCORES = ("phi", "ccc", "trust", "emergence")

StateReader = Callable[[], dict[str, float]]


class _StateCollector:
    """Gauges computed at scrape time from callbacks registered by the node."""

    def __init__(self) -> None:
        self.readers: list[tuple[str, str, StateReader]] = []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snapshots: dict[int, Any] = {}  # one call of each group's snapshot per scrape
        for name, doc, reader in self.readers:
            try:
                values = reader(snapshots) if isinstance(reader, _GroupReader) else reader()
            except Exception:  # a failing reader must not break the scrape
                continue
            if set(values) == {""}:
                yield GaugeMetricFamily(name, doc, value=values[""])
                continue
            family = GaugeMetricFamily(name, doc, labels=["key"])
            for key, value in values.items():
                family.add_metric([key], value)
            yield family


class _GroupReader:
    """One gauge of a group: reads its values from the group's snapshot, taken once a scrape."""

    def __init__(self, snapshot: Callable[[], Any], extract: Callable[[Any], dict[str, float]]) -> None:
        self.snapshot = snapshot
        self.extract = extract

    def __call__(self, snapshots: dict[int, Any]) -> dict[str, float]:
        key = id(self.snapshot)
        if key not in snapshots:
            snapshots[key] = self.snapshot()
        return self.extract(snapshots[key])


_FAMILIES: tuple[tuple[str, str, str], ...] = (
    *((f"consciousness_{n}_score", n, f"Last {n} of a conversation (see DESIGN.md)") for n in SCORES),
    ("ccn_character_drift", "drift_baseline", "Last drift from the baseline, per conversation"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _ConversationSeries:
    """Last scores per conversation as pre-formatted exposition lines, LRU-capped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        # session id → one line per family (None when that metric was not measured)
        self.lines: OrderedDict[str, list[str | None]] = OrderedDict()
        self._cache: bytes | None = None

    def observe(self, session_id: str, metrics: dict[str, float]) -> None:
        label = f'{{session_id="{_escape(session_id)}"}} '
        old = self.lines.pop(session_id, None) or [None] * len(_FAMILIES)
        new: list[str | None] = []
        for (name, key, _), previous in zip(_FAMILIES, old, strict=True):
            value = metrics.get(key)
            new.append(previous if value is None else f"{name}{label}{floatToGoString(value)}\n")
        self.lines[session_id] = new
        while len(self.lines) > self.cap:
            self.lines.popitem(last=False)
        self._cache = None

    def sessions(self) -> list[str]:
        return list(self.lines)

    def render(self) -> bytes:
        if self._cache is None:
            parts = []
            for i, (name, _, doc) in enumerate(_FAMILIES):
                parts.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
                parts.extend(row[i] for row in self.lines.values() if row[i] is not None)
            self._cache = "".join(parts).encode()  # type: ignore[arg-type]
        return self._cache


class Monitoring:
    def __init__(self, max_conversations: int = 1000) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.max_conversations = max_conversations
        self.conversations = _ConversationSeries(max_conversations)
        self.http_requests = Counter(
            "ccn_http_requests_total", "HTTP requests by route template", ["method", "endpoint", "status"], registry=r
        )
        self.http_duration = Histogram(
            "ccn_http_request_duration_seconds", "HTTP request duration by route template", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ws_active = Gauge("ccn_websocket_connections_active", "Open WebSocket connections", registry=r)
        self.api_tokens = Counter("ccn_api_tokens_total", "Model tokens by type", ["type"], registry=r)
        self.api_cost = Counter("ccn_api_cost_dollars_total", "Model cost in USD (by the pricing table)", registry=r)
        self.turn_seconds = Histogram(
            "ccn_turn_duration_seconds", "Whole turn duration, model time included", buckets=LATENCY_BUCKETS, registry=r
        )
        self.spawn_seconds = Histogram("ccn_instance_spawn_seconds", "Instance spawn time, validation included",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.consensus_rounds = Counter("ccn_consensus_rounds_total", "Consensus rounds committed", registry=r)
        self.consensus_latency = Histogram("ccn_consensus_latency_seconds", "Consensus round duration",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.outliers = Counter("ccn_outlier_instances_total", "Instances flagged as outliers", registry=r)
        self._state = _StateCollector()
        r.register(self._state)

    def add_state(self, name: str, doc: str, reader: StateReader) -> None:
        """A gauge read at scrape time: reader returns {label: value}, or {"": value} for one value."""
        self._state.readers.append((name, doc, reader))

    def add_state_group(
        self, snapshot: Callable[[], Any], gauges: dict[str, tuple[str, Callable[[Any], dict[str, float]]]]
    ) -> None:
        """Gauges read from one ``snapshot()`` taken once a scrape (not once per gauge):
        ``gauges`` maps each name to (doc, extract), extract(snapshot) → {label: value}."""
        for name, (doc, extract) in gauges.items():
            self._state.readers.append((name, doc, _GroupReader(snapshot, extract)))  # type: ignore[arg-type]

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, endpoint, str(status)).inc()
        self.http_duration.labels(endpoint).observe(seconds)

    def observe_turn(self, session_id: str, usage: dict[str, Any], cost: float, metrics: dict[str, float],
                     seconds: float) -> None:
        for kind, key in (("input", "input_tokens"), ("output", "output_tokens"),
                          ("cache_creation", "cache_creation_input_tokens"), ("cache_read", "cache_read_input_tokens")):
            value = usage.get(key) or 0
            if value:
                self.api_tokens.labels(kind).inc(value)
        if cost:
            self.api_cost.inc(cost)
        self.turn_seconds.observe(seconds)
        self.conversations.observe(session_id, metrics)

    def render(self) -> bytes:
        return generate_latest(self.registry) + self.conversations.render()


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (ts, level, logger, msg, exc): parseable by journald/Loki, never
    broken by quotes in a message. Callers never log message content or tokens (tests grep)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


# Libraries that log request bodies or headers at DEBUG (the model SDK and its HTTP stack):
# kept at INFO even when the node runs at debug, so no level leaks message content or keys.
QUIET_LOGGERS = ("anthropic", "openai", "httpx", "httpcore", "aiohttp.access", "hpack")


def setup_json_logging(level: str, stream: Any = None) -> None:
    """Configure the root logger for JSON lines in UTC on stderr (journald adds its own fields)."""
    handler = logging.StreamHandler(stream)
    formatter = JsonLogFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
