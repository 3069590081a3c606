"""Live instances: a conversation's model context on this node, spawned, validated, tracked.

A model API is stateless, so an "instance" is what the node holds for a conversation
between turns: the plate and state it was given, when it was spawned, whether it passed
the validation suite, when it was last used. Why track it at all: the specification asks
that a fresh context be checked (the six questions) before it talks to a user, that idle
contexts be retired, that drifted ones be re-initialised, and that the cluster can list
them. Every change an operator can see goes through the command log
(``RegisterInstance``, ``TerminateInstance``, validation answers as
``AppendMessage(kind="validation")``); the in-memory map only says which registered
instance a conversation uses on this node and when it was last active (the heartbeat).

Terminations committed by anyone (the idle sweep, the consensus leader flagging an
outlier, the end of a conversation) reach the map through the state machine's commit
listener, so a follower re-initialises an instance the leader flagged without a second
channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ccn_node.clock import iso_from_unix, new_id, now_iso
from ccn_node.config import ContinuitySettings
from ccn_node.continuity.context import ContextAssembler, render_state
from ccn_node.continuity.conversation import SessionLocks
from ccn_node.continuity.errors import NotReady
from ccn_node.continuity.plate import Plate, ValidationQuestion
from ccn_node.continuity.validation import DEFAULT_TIMEOUT_S, ValidationOutcome, validate_with_retries
from ccn_node.llm.base import ChatMessage, ContextBlock, ModelBackend, ModelRequest
from ccn_node.replication import commands as c
from ccn_node.replication.log import ApplyResult
from ccn_node.replication.proposer import Proposer
from ccn_node.store import queries
from ccn_node.store.database import Store

__all__ = ["InstanceManager", "LiveInstance", "SpawnRecord"]

log = logging.getLogger(__name__)

StateLoader = Callable[[str, str], Awaitable[dict[str, Any] | None]]
OUTLIER_REASON = "outlier"
#: Validation answers are short; the cap leaves room to see an answer that is too long.
MIN_VALIDATION_TOKENS = 64


@dataclass
class LiveInstance:
    """What this node holds for a conversation between turns."""

    instance_id: str
    session_id: str
    user_id: str
    spawned_at: str
    validation_score: float | None
    last_active: float  # time.time() of the last turn start or end: the in-memory heartbeat

    def touch(self) -> None:
        self.last_active = time.time()


@dataclass
class SpawnRecord:
    """One spawn as observed by the node (for metrics and the benchmark)."""

    instance_id: str
    session_id: str
    seconds: float
    validated: bool
    passed: bool
    tokens: int
    cost_usd: float


def _report(outcome: ValidationOutcome, *, answers: bool) -> list[dict[str, Any]]:
    """Per-attempt, per-question report; answers only where the reader may see them."""
    out = []
    for rep in outcome.reports:
        results = []
        for r in rep.results:
            item: dict[str, Any] = {
                "question": r.question,
                "passed": r.passed,
                "missing_keywords": list(r.missing_keywords),
                "chars": r.chars,
                "max_chars": r.max_chars,
            }
            if r.error:
                item["error"] = r.error
            if answers:
                item["answer"] = r.answer
            results.append(item)
        out.append({"attempt": rep.attempt, "passed": rep.passed, "score": round(rep.score, 6),
                    "passed_count": rep.passed_count, "required": rep.required,
                    "elapsed_ms": round(rep.elapsed_ms, 3), "results": results})
    return out


class InstanceManager:
    """Spawns (and validates) instances on a conversation's turns, retires idle ones."""

    def __init__(
        self,
        *,
        store: Store,
        proposer: Proposer,
        backend: ModelBackend,
        plate: Plate,
        assembler: ContextAssembler,
        settings: ContinuitySettings,
        node_id: str,
        state_loader: StateLoader,
        max_output_tokens: int = 1024,
        validation_timeout_s: float = DEFAULT_TIMEOUT_S,
        on_spawn: Callable[[SpawnRecord], None] | None = None,
        validate_non_language_models: bool = False,
    ) -> None:
        self.store = store
        self.proposer = proposer
        self.backend = backend
        self.plate = plate
        self.assembler = assembler
        self.settings = settings
        self.node_id = node_id
        self.state_loader = state_loader
        self.max_output_tokens = max_output_tokens
        self.validation_timeout_s = validation_timeout_s
        self.on_spawn = on_spawn
        self.validate_non_language_models = validate_non_language_models
        self._live: dict[str, LiveInstance] = {}  # session id → instance
        self._revalidate: set[str] = set()  # sessions whose next spawn must validate (outliers)
        self._locks = SessionLocks()
        self._started_at = now_iso()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stale_cleared = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started_at = now_iso()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="instance-sweep")

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop the sweep and terminate this node's live instances (bounded: the log may be gone)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        live, self._live = list(self._live.values()), {}
        if not live:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self._terminate(i.instance_id, "node stopping") for i in live))
        except Exception as exc:  # the next start marks them terminated anyway
            log.warning("could not terminate %d instances on stop: %s", len(live), exc)

    @property
    def sweep_interval(self) -> float:
        return max(0.1, min(self.settings.instance_idle_timeout_s / 4, 30.0))

    async def _sweep_loop(self) -> None:
        while True:
            try:
                if not self._stale_cleared:
                    await self._clear_stale()
                await self.sweep_idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no quorum for a while: try again next round
                log.warning("instance sweep failed: %s", exc)
            await asyncio.sleep(self.sweep_interval)

    async def _clear_stale(self) -> None:
        """Instances this node registered before a restart are gone with the process."""
        stale = await self.store.read(queries.node_instances, self.node_id, self._started_at)
        await asyncio.gather(*(self._terminate(i, "node restarted") for i in stale))
        self._stale_cleared = True

    async def sweep_idle(self) -> list[str]:
        """Terminate instances unused for longer than ``instance_idle_timeout_s``; returns their ids."""
        cutoff = time.time() - self.settings.instance_idle_timeout_s
        idle = [i for i in self._live.values() if i.last_active < cutoff]
        for inst in idle:  # drop first: a turn starting now spawns a fresh one instead
            self._live.pop(inst.session_id, None)
        await asyncio.gather(*(self._terminate(i.instance_id, "idle") for i in idle))
        return [i.instance_id for i in idle]

    # -- the hook the conversation service calls ----------------------------------------

    async def instance_for(self, user_id: str, session_id: str) -> tuple[str | None, float | None]:
        """The conversation's live instance on this node, spawned (and validated) if needed.

        Raises NotReady (→ 503 with the per-question report) when validation fails every attempt.
        One spawn per conversation at a time (the conversation service serialises turns too;
        this lock keeps other callers, e.g. the benchmark, from spawning twice).
        """
        try:
            async with self._locks.get(session_id):
                live = self._live.get(session_id)
                if live is not None:
                    live.touch()
                    return live.instance_id, live.validation_score
                inst = await self.spawn(user_id, session_id)
                return inst.instance_id, inst.validation_score
        finally:
            self._locks.release(session_id)

    def touch(self, session_id: str) -> None:
        """A turn finished: the instance heartbeats (in memory; its answer updates the registry)."""
        live = self._live.get(session_id)
        if live is not None:
            live.touch()

    def reinitialise(self, session_id: str, *, validate: bool = True) -> str | None:
        """Forget the conversation's instance here; the next turn spawns (and validates) a new one."""
        live = self._live.pop(session_id, None)
        if validate:
            self._revalidate.add(session_id)
        return live.instance_id if live is not None else None

    def live(self) -> dict[str, dict[str, Any]]:
        """{instance id: in-memory view} of the instances this node holds."""
        return {
            i.instance_id: {"session_id": i.session_id, "last_active": iso_from_unix(i.last_active),
                            "validation_score": i.validation_score}
            for i in self._live.values()
        }

    # -- spawn ---------------------------------------------------------------------------

    async def _policy(self, session_id: str) -> tuple[bool, float | None, str]:
        """(validate now?, score carried over, why) under the configured policy."""
        policy = self.settings.validation
        if policy == "never":
            return False, None, "policy: never"
        if not self.backend.describe().get("is_language_model", True) and not self.validate_non_language_models:
            # The offline backend echoes plate lines; "validating" it would test the echo, not a model.
            return False, None, f"the {self.backend.name} backend is not a language model"
        if policy == "every":
            return True, None, "policy: every spawn"
        previous = await self.store.read(queries.last_passed_validation, session_id)
        if session_id in self._revalidate:
            return True, previous, "re-initialised after being flagged"
        if previous is None:
            return True, None, "policy: first spawn of the conversation"
        return False, previous, "validated earlier in this conversation"

    async def spawn(self, user_id: str, session_id: str) -> LiveInstance:
        """Load plate and state, validate per policy, register through the log; time → metrics."""
        started = time.perf_counter()
        instance_id = new_id("i")
        spawned_at = now_iso()
        must_validate, carried, why = await self._policy(session_id)
        validation: dict[str, Any] = {"policy": self.settings.validation, "ran": must_validate, "reason": why}
        tokens, cost = 0, 0.0
        outcome: ValidationOutcome | None = None
        if must_validate:
            outcome, tokens, cost, answers = await self._validate(user_id, session_id)
            final = outcome.final
            validation.update({
                "passed": outcome.passed, "score": round(final.score, 6), "passed_count": final.passed_count,
                "required": final.required, "questions": len(final.results), "attempts": len(outcome.reports),
                "tokens": tokens, "cost_usd": round(cost, 8),
                "elapsed_ms": round(sum(r.elapsed_ms for r in outcome.reports), 3),
                "reports": _report(outcome, answers=False),
            })
            score: float | None = final.score if outcome.passed else None
        else:
            answers = []
            validation.update({"passed": None, "score": carried})
            score = carried
        status = "active" if outcome is None or outcome.passed else "failed"
        register = c.RegisterInstance(
            request_id=new_id("r"), instance_id=instance_id, session_id=session_id, node_id=self.node_id,
            spawned_at=spawned_at, plate_version=self.plate.version, validation=validation, status=status,
        )
        await asyncio.gather(
            self.proposer.submit(register),
            *(self.proposer.submit(self._answer_command(instance_id, session_id, user_id, a)) for a in answers),
        )
        seconds = time.perf_counter() - started
        if self.on_spawn is not None:
            self.on_spawn(SpawnRecord(instance_id, session_id, seconds, must_validate, status == "active",
                                      tokens, cost))
        if outcome is not None and not outcome.passed:
            self._revalidate.add(session_id)
            raise NotReady(
                f"the instance failed validation {len(outcome.reports)} times "
                f"({outcome.final.passed_count} of {len(outcome.final.results)} answers passed, "
                f"{outcome.final.required} needed)",
                report={"instance_id": instance_id, "attempts": _report(outcome, answers=False)},
                retry_after=5.0,
            )
        self._revalidate.discard(session_id)
        inst = LiveInstance(instance_id, session_id, user_id, spawned_at, score, time.time())
        self._live[session_id] = inst
        return inst

    def _question_request(self, question: ValidationQuestion, state: dict[str, Any] | None) -> ModelRequest:
        """One question with the plate (byte-identical block: the prompt cache hits) and the state."""
        system = [self.assembler.plate_block]
        if state:
            system.append(ContextBlock("state", render_state(state)))
        cap = max(MIN_VALIDATION_TOKENS, 2 * math.ceil(question.max_chars / 4))
        return ModelRequest(system=system, messages=[ChatMessage(role="user", content=question.question)],
                            max_tokens=min(self.max_output_tokens, cap))

    async def _validate(
        self, user_id: str, session_id: str
    ) -> tuple[ValidationOutcome, int, float, list[dict[str, Any]]]:
        """Run the suite with retries; each attempt re-loads the state (a re-initialised context)."""
        by_text = {q.question: q for q in self.plate.questions}
        answers: list[dict[str, Any]] = []
        totals = {"tokens": 0, "cost": 0.0}

        async def factory(attempt: int) -> Callable[[str], Awaitable[tuple[str, int]]]:
            state = await self.state_loader(user_id, session_id)

            async def ask(question: str) -> tuple[str, int]:
                reply = await self.backend.complete(self._question_request(by_text[question], state))
                used = reply.usage.prompt_tokens + reply.usage.output_tokens
                totals["tokens"] += used
                totals["cost"] += reply.cost_usd
                answers.append({"attempt": attempt, "question": question, "text": reply.text, "model": reply.model,
                                "usage": msgspec.to_builtins(reply.usage), "cost_usd": reply.cost_usd,
                                "tokens": reply.usage.output_tokens})
                return reply.text, used

            return ask

        outcome = await validate_with_retries(factory, self.plate.questions, self.settings.validation_attempts,
                                              timeout=self.validation_timeout_s)
        passed = {(rep.attempt, r.question): r.passed for rep in outcome.reports for r in rep.results}
        for a in answers:
            a["passed"] = passed.get((a["attempt"], a["question"]), False)
        return outcome, int(totals["tokens"]), float(totals["cost"]), answers

    def _answer_command(self, instance_id: str, session_id: str, user_id: str, a: dict[str, Any]) -> c.AppendMessage:
        """A validation answer, kept (kind="validation": never listed, searched or put in a context)."""
        return c.AppendMessage(
            request_id=new_id("r"), message_id=new_id("m"), session_id=session_id, user_id=user_id,
            role="assistant", content=a["text"], created_at=now_iso(), tokens=a["tokens"], model=a["model"],
            manifest={"validation": {"question": a["question"], "attempt": a["attempt"], "passed": a["passed"]}},
            usage={**a["usage"], "cost_usd": a["cost_usd"]}, instance_id=instance_id, kind="validation",
        )

    async def _terminate(self, instance_id: str, reason: str) -> None:
        cmd = c.TerminateInstance(request_id=new_id("r"), instance_id=instance_id, at=now_iso(), reason=reason)
        await self.proposer.submit(cmd)

    # -- terminations committed by anyone ------------------------------------------------

    def on_commit(self, applied: list[tuple[c.Command | None, ApplyResult]]) -> None:
        """State-machine commit listener (any thread): drop instances terminated in the log."""
        events: list[tuple[str, str, str]] = []
        for cmd, result in applied:
            if not result.ok or result.duplicate:
                continue
            if isinstance(cmd, c.TerminateInstance):
                events.append(("instance", cmd.instance_id, cmd.reason))
            elif isinstance(cmd, c.EndConversation):
                events.append(("session", cmd.session_id, "conversation ended"))
        if events and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._forget, events)

    def _forget(self, events: list[tuple[str, str, str]]) -> None:
        by_id = {i.instance_id: i.session_id for i in self._live.values()}
        for kind, ident, reason in events:
            session_id = ident if kind == "session" else by_id.get(ident)
            if session_id is None:
                continue
            self._live.pop(session_id, None)
            if kind == "session":
                self._revalidate.discard(session_id)
            elif reason.startswith(OUTLIER_REASON):
                self._revalidate.add(session_id)
