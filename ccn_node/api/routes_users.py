"""A user's data: erasure on request, retention period; and the admin's backups.

Erasure is allowed to the user themself and to an admin; anyone else gets 404, as for any
other user's data, so user names don't leak. Erasure and retention changes are commands
(logged, replicated, in the ledger); backups are node-local files and are not.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

import msgspec
from aiohttp import web

from ccn_node.api.context import json_response, principal, read_body, requires, services
from ccn_node.api.errors import ApiError, bad_request, not_found
from ccn_node.store import queries

routes = web.RouteTableDef()

MAX_RETENTION_DAYS = 36_500


class RetentionBody(msgspec.Struct, forbid_unknown_fields=True):
    """``days``: how long this user's message content is kept; null = the node's default."""

    days: int | None


def _service(request: web.Request, name: str) -> Any:
    svc = services(request).extra.get(name)
    if svc is None:
        raise ApiError(503, "unavailable", f"{name} service is not running on this node")
    return svc


async def _existing_user(request: web.Request) -> str:
    name = request.match_info["name"]
    who = principal(request)
    if who.user_id != name and not who.is_admin:
        raise not_found("user")
    if not await services(request).store.read(queries.user_exists, name):
        raise not_found("user")
    return name


@routes.delete("/api/v1/users/{name}/data")
@requires("user")
async def erase_user_data(request: web.Request) -> web.Response:
    """Erase all of a user's message content now; hashes, ledger proofs and metrics stay.

    ``?purge_backups=true`` also rewrites the node's backup files without that content.
    """
    name = await _existing_user(request)
    purge = request.query.get("purge_backups", "false").lower()
    if purge not in ("true", "false", "1", "0"):
        raise bad_request("purge_backups must be true or false", field="purge_backups")
    result = await _service(request, "retention").erase_user(name)
    body: dict[str, Any] = {"erasure": result}
    backups = services(request).extra.get("backups")
    if purge in ("true", "1") and backups is not None:
        from ccn_node.replication.recovery import purge_backups

        loop = asyncio.get_running_loop()
        body["backups"] = await loop.run_in_executor(
            None,
            lambda: purge_backups(backups.directory, name, None, result["erased_at"], key=backups.key,
                                  verifiers=backups.verifiers),
        )
    elif backups is not None:
        body["backups"] = {
            "note": f"older backups still hold this content until they rotate out (at most {backups.keep} backups,"
            f" one every {backups.interval_s:.0f} s); pass purge_backups=true to rewrite them now"
        }
    return json_response(body)


@routes.put("/api/v1/users/{name}/retention")
@requires("admin")
async def set_user_retention(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await read_body(request, RetentionBody)
    if body.days is not None and not 1 <= body.days <= MAX_RETENTION_DAYS:
        raise bad_request(f"days must be between 1 and {MAX_RETENTION_DAYS}, or null for the default", field="days")
    if not await services(request).store.read(queries.user_exists, name):
        raise not_found("user")
    return json_response(await _service(request, "retention").set_retention(name, body.days))


@routes.post("/api/v1/admin/backup")
@requires("admin")
async def backup_now(request: web.Request) -> web.Response:
    """Write, verify and rotate a backup now; returns its sidecar."""
    from ccn_node.store.backup import BackupError

    try:
        info = await _service(request, "backups").run_now()
    except BackupError as exc:
        raise ApiError(503, "backup_failed", str(exc)) from None
    return json_response(asdict(info))


@routes.get("/api/v1/admin/backups")
@requires("admin")
async def list_backups(request: web.Request) -> web.Response:
    svc = _service(request, "backups")
    return json_response({"age_seconds": svc.age_seconds(), "last_error": svc.last_error,
                          "backups": [asdict(b) for b in svc.all()]})
