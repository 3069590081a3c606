"""Health, readiness, Prometheus metrics, the OpenAPI document and the API page."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ccn_node import __version__
from ccn_node.api.context import json_response, requires, services
from ccn_node.api.openapi import openapi_document, swagger_page
from ccn_node.monitoring import CONTENT_TYPE

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """The process is up and its event loop answers. Says nothing about storage or model."""
    return json_response({"status": "ok", "version": __version__})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """Storage open and replayed, a command log that can take writes, a model backend configured."""
    report = services(request).readiness()
    return json_response(report, status=200 if report["ready"] else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    # the gauges read SQLite: off the event loop
    body = await asyncio.get_running_loop().run_in_executor(None, services(request).monitoring.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app))


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    return web.Response(text=swagger_page(request.app), content_type="text/html")


@routes.get("/api/v1/whoami")
@requires("user")
async def whoami(request: web.Request) -> web.Response:
    who = request["principal"]
    return json_response({"user_id": who.user_id, "role": who.role})
