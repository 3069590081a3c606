"""The aiohttp application: middlewares and the route tables of each area."""

from __future__ import annotations

import time

from aiohttp import web

from ccn_node.api import (
    routes_admin,
    routes_cluster,
    routes_conversation,
    routes_dashboard,
    routes_ledger,
    routes_metrics,
    routes_search,
    routes_system,
    routes_users,
    ws,
)
from ccn_node.api.context import SERVICES, ApiServices, Handler, add_ratelimit_headers
from ccn_node.api.errors import error_middleware


@web.middleware
async def accounting_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request under its route template, never its raw path."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        endpoint = resource.canonical if resource is not None else "unmatched"
        request.app[SERVICES].monitoring.observe_request(
            request.method, endpoint, status, time.perf_counter() - started
        )


def create_app(services: ApiServices, *extra_routes: web.RouteTableDef) -> web.Application:
    app = web.Application(
        middlewares=[accounting_middleware, error_middleware],
        client_max_size=services.config.limits.max_body_bytes,
    )
    app[SERVICES] = services
    for table in (routes_system.routes, routes_conversation.routes, routes_search.routes, ws.routes,
                  routes_admin.routes, routes_metrics.routes, routes_dashboard.routes,
                  routes_users.routes, routes_ledger.routes, routes_cluster.routes, *extra_routes):
        app.add_routes(table)
    app.on_response_prepare.append(add_ratelimit_headers)
    return app
