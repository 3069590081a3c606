"""Leader-only duties: a background loop that runs exactly while this node leads.

Block sealing and consensus rounds (and any future duty) register one `LeaderTask` as a
leadership listener of the command log; both logs call listeners on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class LeaderTask:
    def __init__(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._body = body
        self._task: asyncio.Task[None] | None = None

    def on_leadership(self, leader: bool) -> None:
        """Leadership listener (on the event loop): start the loop on gaining, cancel on losing."""
        if leader and not self.running:
            self._task = asyncio.get_running_loop().create_task(self._body(), name=self.name)
        elif not leader and self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
