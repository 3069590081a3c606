"""The built-in dashboard: static files from ``ccn_node/web`` and the JSON they plot.

Why this split: the page (``/dashboard``, its script and style) is public and holds no data,
so it can be cached and served without a token; its data (``GET /api/v1/dashboard/data``)
needs an **admin** token, entered once in the page (or passed as ``/dashboard#token=…``, a
fragment the browser never sends to the server, so it never lands in a log) and kept in the
tab's sessionStorage. The data is operational only: aggregate metrics, instance counts, the
consensus character vector, cluster, ledger, witness and backup state — no message content,
no user names, no session ids.

Files are read once with ``importlib.resources`` (works from a wheel, a pipx venv or a shiv
zipapp) and served with a strict Content-Security-Policy: the page loads nothing from
elsewhere, so it works offline.
"""

from __future__ import annotations

import asyncio
import json
import time
from functools import cache
from importlib import resources
from typing import Any

import apsw
from aiohttp import web

from ccn_node.api.context import json_response, requires, services
from ccn_node.api.errors import not_found
from ccn_node.clock import iso_from_unix, parse_iso
from ccn_node.continuity.probe import DIMENSIONS

routes = web.RouteTableDef()

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
SERIES_POINTS = 500
INSTANCE_SAMPLES = 60
INSTANCE_WINDOW_S = 24 * 3600.0


@cache
def _asset(name: str) -> bytes | None:
    """A file of ccn_node/web, read once; None for anything not shipped there."""
    if "/" in name or name.startswith(".") or not name.endswith(tuple(_TYPES)):
        return None
    node = resources.files("ccn_node").joinpath("web").joinpath(name)
    return node.read_bytes() if node.is_file() else None


def _static(name: str) -> web.Response:
    body = _asset(name)
    if body is None:
        raise not_found("file")
    content_type = _TYPES["." + name.rpartition(".")[2]]
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)


@routes.get("/dashboard")
async def dashboard_page(request: web.Request) -> web.Response:
    """The dashboard page (public; its data needs an admin token)."""
    return _static("index.html")


@routes.get("/dashboard/{name}")
async def dashboard_asset(request: web.Request) -> web.Response:
    return _static(request.match_info["name"])


def _unix(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return parse_iso(iso).timestamp()
    except ValueError:
        return None


def _metric_series(conn: apsw.Connection) -> dict[str, list[Any]]:
    """CCC and drift of the last turns of every conversation on the node, oldest first."""
    rows = conn.execute(
        "SELECT created_at, ccc, drift FROM consciousness_metrics ORDER BY id DESC LIMIT ?", (SERIES_POINTS,)
    ).fetchall()
    rows.reverse()
    return {"t": [_unix(r[0]) for r in rows], "ccc": [r[1] for r in rows], "drift": [r[2] for r in rows]}


def _instance_series(conn: apsw.Connection, now: float) -> dict[str, Any]:
    """Live instances (spawned, not yet terminated) sampled over the last day, and active now."""
    since = now - INSTANCE_WINDOW_S
    rows = conn.execute(
        "SELECT spawned_at, terminated_at FROM instance_registry"
        " WHERE terminated_at IS NULL OR terminated_at >= ? ORDER BY spawned_at DESC LIMIT 20000",
        (iso_from_unix(since),),
    ).fetchall()
    spans = [(_unix(a) or now, _unix(b)) for a, b in rows]
    start = max(since, min((a for a, _ in spans), default=now))
    step = max((now - start) / (INSTANCE_SAMPLES - 1), 1.0)
    times = sorted({min(now, start + i * step) for i in range(INSTANCE_SAMPLES)} | {now})
    counts = [sum(1 for a, b in spans if a <= t and (b is None or b > t)) for t in times]
    active = conn.execute("SELECT count(*) FROM instance_registry WHERE status = 'active'").fetchall()[0][0]
    return {"t": times, "live": counts, "active": int(active)}


def _character(conn: apsw.Connection) -> dict[str, Any]:
    """The consensus vector of the last round; before any round, the mean of the active
    instances' vectors; before any instance, the latest measured turn. The source is named."""
    out: dict[str, Any] = {"dimensions": list(DIMENSIONS), "vector": None, "source": "none"}
    rows = conn.execute(
        "SELECT consensus_vector, created_at, instance_count, outliers FROM consensus_log"
        " ORDER BY log_index DESC LIMIT 1"
    ).fetchall()
    if rows:
        outliers = json.loads(rows[0][3])
        out.update(vector=json.loads(rows[0][0]), source="consensus", at=rows[0][1], instances=rows[0][2],
                   outliers=len(outliers))
        return out
    vectors = [json.loads(r[0]) for r in conn.execute(
        "SELECT character_vector FROM instance_registry WHERE status = 'active' AND character_vector IS NOT NULL"
    ).fetchall()]
    vectors = [v for v in vectors if isinstance(v, list) and len(v) == len(DIMENSIONS)]
    if vectors:
        out.update(vector=[sum(col) / len(vectors) for col in zip(*vectors, strict=True)],
                   source="active instances (mean)", instances=len(vectors))
        return out
    rows = conn.execute(
        "SELECT character_vector, created_at FROM character_evolution ORDER BY id DESC LIMIT 1"
    ).fetchall()
    if rows:
        out.update(vector=json.loads(rows[0][0]), source="latest turn", at=rows[0][1])
    return out


def _ledger_blocks(conn: apsw.Connection) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT block_number, tree_size, timestamp, verified FROM verification_chain ORDER BY block_number DESC LIMIT 1"
    ).fetchall()
    if not rows:
        return {"blocks": 0}
    return {"blocks": rows[0][0] + 1, "sealed_size": rows[0][1], "last_block_at": rows[0][2],
            "last_block_witnessed": bool(rows[0][3])}


def _read_all(conn: apsw.Connection, now: float) -> dict[str, Any]:
    return {
        "series": _metric_series(conn),
        "instances": _instance_series(conn, now),
        "character": _character(conn),
        "blocks": _ledger_blocks(conn),
    }


@routes.get("/api/v1/dashboard/data")
@requires("admin")
async def dashboard_data(request: web.Request) -> web.Response:
    """Everything the dashboard plots (admin token; aggregate figures only, no content)."""
    svc = services(request)
    now = time.time()
    data = await svc.store.read(_read_all, now)
    ops = svc.extra.get("ops")
    status = await asyncio.get_running_loop().run_in_executor(None, ops) if callable(ops) else {}
    ledger = {**status.get("ledger", {}), **data.pop("blocks")}
    backup = getattr(svc.config, "backup", None)
    return json_response({"generated_at": now, **status, **data, "ledger": ledger,
                          "backup_interval_s": getattr(backup, "interval_s", 6 * 3600.0)})
