"""Full-text search over the caller's own conversations."""

from __future__ import annotations

from aiohttp import web

from ccn_node.api.context import json_response, principal, query_int, requires, services
from ccn_node.api.errors import bad_request
from ccn_node.api.routes_conversation import apply_consistency
from ccn_node.continuity.retrieval import search

routes = web.RouteTableDef()

MAX_QUERY_CHARS = 1000


@routes.get("/api/v1/search")
@requires("user")
async def search_messages(request: web.Request) -> web.Response:
    """Search strings are text: FTS5 syntax in them (quotes, *, NEAR, OR, parentheses) is not interpreted."""
    q = request.query.get("q", "")
    if not q.strip():
        raise bad_request("q must not be empty", field="q")
    if len(q) > MAX_QUERY_CHARS:
        raise bad_request(f"q must be at most {MAX_QUERY_CHARS} characters", field="q")
    if "\x00" in q:
        raise bad_request("q must not contain NUL characters", field="q")
    limit = query_int(request, "limit", 20, low=1, high=200)
    offset = query_int(request, "offset", 0, low=0, high=10_000)
    await apply_consistency(request)
    user_id = principal(request).user_id
    hits = await services(request).store.read_searchable(lambda conn: search(conn, user_id, q, limit, offset))
    return json_response({"query": q, "limit": limit, "offset": offset, "hits": hits})
