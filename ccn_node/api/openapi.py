"""/openapi.json generated from the routes and the msgspec request/response types, and a
self-contained HTML page at /docs (no CDN: the node works offline)."""

from __future__ import annotations

import html
import inspect
from typing import Any

import msgspec
from aiohttp import web

from ccn_node import __version__
from ccn_node.api import schemas as s

# (method, path) → (request body type, success response type)
BODIES: dict[tuple[str, str], tuple[Any, Any]] = {
    ("POST", "/api/v1/conversation/start"): (s.StartConversationRequest, s.StartConversationResponse),
    ("GET", "/api/v1/conversation/{session_id}"): (None, s.Conversation),
    ("POST", "/api/v1/conversation/{session_id}/message"): (s.MessageRequest, s.TurnResponse),
    ("POST", "/api/v1/conversation/{session_id}/context"): (s.ContextRequest, None),
    ("GET", "/api/v1/search"): (None, s.SearchResponse),
}

_CONSISTENCY = ("consistency", "string", "local (default), leader or linearizable (see api/DESIGN.md)")
_QUERY: dict[str, list[tuple[str, str, str]]] = {
    "/api/v1/search": [("q", "string", "text to find (FTS syntax is not interpreted)"),
                       ("limit", "integer", "1-200"), ("offset", "integer", "0-10000"), _CONSISTENCY],
    "/api/v1/conversation/{session_id}/at": [("seq", "integer", "sequence number"),
                                            ("timestamp", "string", "ISO 8601 time"), _CONSISTENCY],
    "/api/v1/conversation/{session_id}/export": [("format", "string", "json or markdown"), _CONSISTENCY],
    "/api/v1/conversations": [("limit", "integer", "1-500"), ("offset", "integer", ">= 0"), _CONSISTENCY],
    "/api/v1/conversation/{session_id}": [_CONSISTENCY],
    "/api/v1/metrics/conversation/{session_id}": [_CONSISTENCY],
}


def openapi_document(app: web.Application) -> dict[str, Any]:
    types = {t for pair in BODIES.values() for t in pair if t is not None} | {s.ErrorResponse}
    ordered = sorted(types, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(ordered, ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if not path or route.method == "HEAD" or path.startswith("/static"):
            continue
        handler = route.handler
        role = getattr(handler, "required_role", "public")
        doc = inspect.getdoc(handler) or handler.__name__.replace("_", " ")
        op: dict[str, Any] = {
            "summary": doc.splitlines()[0],
            "description": doc,
            "operationId": handler.__name__,
            "responses": {
                "default": {
                    "description": "error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                }
            },
        }
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in _path_params(path)]
        params += [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
                   for n, t, d in _QUERY.get(path, [])]
        if params:
            op["parameters"] = params
        if role != "public":
            op["security"] = [{"bearer": []}]
            op["x-role"] = role
        req, resp = BODIES.get((route.method, path), (None, None))
        if req is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{req.__name__}"}}}}
        ok: dict[str, Any] = {"description": "success"}
        if resp is not None:
            ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{resp.__name__}"}}}
        op["responses"]["200"] = ok
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "ccn-node API", "version": __version__},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def swagger_page(app: web.Application) -> str:
    """A readable, dependency-free rendering of the OpenAPI document."""
    doc = openapi_document(app)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ccn-node API</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "code,pre{background:#f4f4f4;padding:.1rem .3rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}"
        ".m{font-weight:bold;display:inline-block;width:4.5rem}.role{color:#666}</style></head><body>",
        f"<h1>ccn-node API <small>{html.escape(doc['info']['version'])}</small></h1>",
        "<p>Authenticate with <code>Authorization: Bearer &lt;JWT&gt;</code> (<code>ccn-node token --user NAME</code>)."
        " Errors are <code>{\"error\": {\"code\", \"message\"}}</code>. Machine-readable: "
        "<a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            out.append(f"<h2><span class='m'>{method.upper()}</span><code>{html.escape(path)}</code></h2>")
            out.append(f"<p class='role'>role: {html.escape(op.get('x-role', 'public'))}</p>")
            out.append(f"<pre>{html.escape(op['description'])}</pre>")
            body = op.get("requestBody")
            if body:
                name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                schema = doc["components"]["schemas"].get(name, {})
                props = ", ".join(f"{html.escape(k)}" for k in schema.get("properties", {}))
                out.append(f"<p>body <code>{html.escape(name)}</code>: {props}</p>")
    out.append("</body></html>")
    return "\n".join(out)
