"""Submitting commands: encode, propose with a timeout, and turn a stored refusal into an error."""

from __future__ import annotations

from typing import Any

from ccn_node.replication import commands as c
from ccn_node.replication.log import ApplyResult, CommandLog


class CommandRejected(Exception):
    """The command was applied and refused by the state machine (a stored outcome)."""

    def __init__(self, result: ApplyResult) -> None:
        super().__init__(result.error_message or result.error_code or "rejected")
        self.code = result.error_code or "rejected"
        self.result = result


class Proposer:
    def __init__(self, log: CommandLog, timeout_s: float) -> None:
        self.log = log
        self.timeout_s = timeout_s

    async def submit(self, command: c.Command) -> dict[str, Any]:
        """Propose and wait for the durable outcome; raise CommandRejected on a refusal.

        Raises the log's errors (OutcomeUnknownError, NoQuorumError, …) when there is no
        outcome; resubmitting the same command (same request id) is then safe.
        """
        result = await self.log.propose(c.encode(command), command.request_id, self.timeout_s)
        if not result.ok:
            raise CommandRejected(result)
        return dict(result.value or {})
