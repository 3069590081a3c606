"""Retention: message content is kept for a user's retention period, then erased.

Why it runs on the leader only and proposes commands: erasure changes the corpus, so it is
a logged command (``EraseUserData``) that every replica applies identically, and the ledger
records that it happened. The sweep itself only reads; ``before`` is fixed by the proposer
(now minus the user's retention), never computed during apply. Rows without content
(character_evolution, consciousness_metrics, instance and consensus rows) are not touched:
they hold vectors and scores, no text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import apsw

from ccn_node.clock import iso_from_unix, new_id, now_iso
from ccn_node.replication import commands as c
from ccn_node.replication.proposer import Proposer
from ccn_node.store.database import Store

log = logging.getLogger(__name__)

DAY_S = 86_400.0


def due_erasures(conn: apsw.Connection, default_days: int, now_unix: float) -> list[tuple[str, str]]:
    """(user_id, before) for each user who has unerased content older than their retention."""
    out = []
    for user_id, days in conn.execute("SELECT user_id, coalesce(retention_days, ?) FROM users", (default_days,)):
        before = iso_from_unix(now_unix - days * DAY_S)
        row = conn.execute(
            "SELECT 1 FROM messages WHERE user_id = ? AND created_at < ? AND erased_at IS NULL LIMIT 1",
            (user_id, before),
        ).fetchone()
        if row is not None:
            out.append((user_id, before))
    return out


class RetentionService:
    """Periodic sweep on the leader, plus the erasure and retention requests of the API."""

    def __init__(
        self,
        store: Store,
        proposer: Proposer,
        *,
        default_days: int,
        interval_s: float,
        is_leader: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.proposer = proposer
        self.default_days = default_days
        self.interval_s = interval_s
        self.is_leader = is_leader
        self.clock = clock
        self.last_sweep: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> dict[str, Any]:
        """Propose one EraseUserData per user with expired content; returns what it did."""
        now = self.clock()
        due = await self.store.read(due_erasures, self.default_days, now)
        erased: dict[str, int] = {}
        for user_id, before in due:
            result = await self.proposer.submit(
                c.EraseUserData(
                    request_id=new_id("r"), user_id=user_id, erased_at=now_iso(), before=before, reason="retention"
                )
            )
            erased[user_id] = int(result.get("messages_erased", 0))
        self.last_sweep = {"at": iso_from_unix(now), "users": len(due), "messages_erased": sum(erased.values())}
        if erased:
            log.info("retention sweep erased %d messages of %d users", sum(erased.values()), len(erased))
        return {"erased": erased, **self.last_sweep}

    async def erase_user(self, user_id: str, reason: str = "request") -> dict[str, Any]:
        """Erase all of a user's message content now (a logged command)."""
        cmd = c.EraseUserData(request_id=new_id("r"), user_id=user_id, erased_at=now_iso(), reason=reason)
        result = await self.proposer.submit(cmd)
        return {"user_id": user_id, "erased_at": cmd.erased_at, **result}

    async def set_retention(self, user_id: str, days: int | None) -> dict[str, Any]:
        result = await self.proposer.submit(
            c.SetUserRetention(request_id=new_id("r"), user_id=user_id, retention_days=days)
        )
        return {"user_id": user_id, "retention_days": days, "default_days": self.default_days, **result}

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ccn-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        await asyncio.sleep(min(self.interval_s, 30.0))
        while True:
            if self.is_leader():
                try:
                    await self.sweep()
                except Exception as exc:  # retried next interval; never takes the node down
                    log.error("retention sweep failed: %s", exc)
            await asyncio.sleep(self.interval_s)
