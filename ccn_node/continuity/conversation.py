"""The conversation service: starts and ends conversations and runs turns, one at a time.

A turn: store the user's message through the command log, assemble the context, stream the
model's answer, measure it (character probe, relational state, seed metrics), store the
answer with its usage, manifest and metrics, and only then acknowledge. A second message
sent to the same conversation while a turn runs waits for it (or is refused when the client
asks not to wait); turns are never interleaved. An idempotency key makes a retried send
return the first outcome instead of storing the message twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import apsw
import msgspec
import numpy as np

from ccn_node.clock import new_id, now_iso
from ccn_node.continuity import metrics as seed_metrics
from ccn_node.continuity.context import AssembledContext, ContextAssembler, recent_turn
from ccn_node.continuity.errors import Busy, Ended, Invalid, ModelDown, NotFound, QuotaExceeded
from ccn_node.continuity.plate import Plate
from ccn_node.continuity.probe import DIMENSIONS, RELATIONAL_DIMENSIONS, LexicalProbe, Probe, relational_state
from ccn_node.continuity.retrieval import Turn
from ccn_node.llm.base import (
    Completed,
    ModelBackend,
    ModelError,
    ModelRateLimited,
    ModelRequest,
    ModelStreamInterrupted,
    TextDelta,
    estimate_tokens,
)
from ccn_node.replication import commands as c
from ccn_node.replication.proposer import CommandRejected, Proposer
from ccn_node.store import queries
from ccn_node.store.database import Store

log = logging.getLogger(__name__)

DeltaSink = Callable[[str], Awaitable[None]]
MAX_IDEMPOTENCY_KEY = 200


@dataclass
class TurnResult:
    session_id: str
    user_message_id: str
    assistant_message_id: str
    seq: int
    content: str
    model: str
    backend: str
    is_language_model: bool
    usage: dict[str, Any]
    cost_usd: float
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    replayed: bool = False
    latency_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user_message_id": self.user_message_id,
            "message_id": self.assistant_message_id,
            "seq": self.seq,
            "content": self.content,
            "model": self.model,
            "backend": self.backend,
            "is_language_model": self.is_language_model,
            "usage": self.usage,
            "cost_usd": self.cost_usd,
            "metrics": self.metrics,
            "replayed": self.replayed,
        }


@dataclass
class TurnInputs:
    """What the database says before a turn: the conversation, state, and recent metrics."""

    conversation: dict[str, Any]
    state: dict[str, Any] | None
    consensus: list[float] | None
    ccc_history: list[float] = field(default_factory=list)
    dialogue: list[tuple[str, str]] = field(default_factory=list)
    # The latest usable turns, read with the dialogue so the assembler need not read them
    # again; None when the window read could hold too few of them (the assembler reads).
    history: list[Turn] | None = None


@dataclass
class TurnHooks:
    """Optional collaborators, set by the node: instance tracking and usage accounting."""

    instance_for: Callable[[str, str], Awaitable[tuple[str | None, float | None]]] | None = None
    on_turn: Callable[[str, TurnResult], None] | None = None


class SessionLocks:
    """One lock per conversation, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def get(self, session_id: str) -> asyncio.Lock:
        lock, users = self._locks.get(session_id, (asyncio.Lock(), 0))
        self._locks[session_id] = (lock, users + 1)
        return lock

    def release(self, session_id: str) -> None:
        lock, users = self._locks[session_id]
        if users <= 1:
            del self._locks[session_id]
        else:
            self._locks[session_id] = (lock, users - 1)


DIALOGUE_TURNS = 12  # turns the relational state is computed from


def _load_turn_inputs(conn: apsw.Connection, user_id: str, session_id: str, recent_turns: int) -> TurnInputs | None:
    conv = queries.get_conversation(conn, user_id, session_id)
    if conv is None:
        return None
    state = queries.character_state_at(conn, session_id) or queries.user_character_state(conn, user_id)
    rows = conn.execute("SELECT consensus_vector FROM consensus_log ORDER BY created_at DESC LIMIT 1").fetchall()
    consensus = json.loads(rows[0][0]) if rows else None
    ccc = [
        r[0]
        for r in conn.execute(
            "SELECT ccc FROM consciousness_metrics WHERE session_id = ? AND ccc IS NOT NULL ORDER BY id DESC LIMIT 20",
            (session_id,),
        ).fetchall()
    ]
    # One read of the conversation's tail serves both the relational state (the last turns as
    # stored) and the assembler's recent window (usable turns: not erased, not empty). One
    # extra row covers the turn's own user message, which the assembler excludes.
    window = max(DIALOGUE_TURNS, recent_turns + 1)
    tail = conn.execute(
        "SELECT message_id, session_id, seq, role, content, created_at, erased_at FROM messages"
        " WHERE session_id = ? AND user_id = ? AND kind = 'chat' ORDER BY seq DESC LIMIT ?",
        (session_id, user_id, window),
    ).fetchall()[::-1]
    dialogue = [(r[3], r[4]) for r in tail[-DIALOGUE_TURNS:]]
    usable = [recent_turn(r) for r in tail if r[6] is None and r[4] != ""]
    history = usable if len(tail) < window or len(usable) > recent_turns else None
    return TurnInputs(conversation=conv, state=state, consensus=consensus, ccc_history=ccc[::-1], dialogue=dialogue,
                      history=history)


class ConversationService:
    def __init__(
        self,
        *,
        store: Store,
        proposer: Proposer,
        assembler: ContextAssembler,
        backend: ModelBackend,
        plate: Plate,
        max_output_tokens: int,
        max_message_chars: int,
        turn_wait_s: float,
        token_budget: Any | None = None,
        probe: Probe | None = None,
        hooks: TurnHooks | None = None,
    ) -> None:
        self.store = store
        self.proposer = proposer
        self.assembler = assembler
        self.backend = backend
        self.plate = plate
        self.max_output_tokens = max_output_tokens
        self.max_message_chars = max_message_chars
        self.turn_wait_s = turn_wait_s
        self.token_budget = token_budget
        self.probe: Probe = probe or LexicalProbe()
        self.hooks = hooks or TurnHooks()
        self._locks = SessionLocks()
        self._known_users: set[str] = set()
        self.turns_in_flight = 0

    # -- users and conversations ---------------------------------------------------------

    async def ensure_user(self, user_id: str, role: str) -> None:
        """Create the user row the first time a valid token shows up (exactly once)."""
        if user_id in self._known_users:
            return
        if not await self.store.read(queries.user_exists, user_id):
            cmd = c.CreateUser(
                request_id=f"user:{user_id}", user_id=user_id, name=user_id, role=role, created_at=now_iso()
            )
            try:
                await self.proposer.submit(cmd)
            except CommandRejected as exc:
                if exc.code != "conflict":
                    raise
        self._known_users.add(user_id)

    async def start(
        self, user_id: str, role: str, *, title: str = "", metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        await self.ensure_user(user_id, role)
        session_id = new_id("c")
        cmd = c.StartConversation(
            request_id=new_id("r"),
            session_id=session_id,
            user_id=user_id,
            title=title,
            created_at=now_iso(),
            plate_version=self.plate.version,
            plate_sha256=self.plate.sha256,
            metadata=metadata or {},
        )
        await self.proposer.submit(cmd)
        # Answered from the command it applied: a fresh id cannot be a duplicate, and a read
        # here was a reader-thread hop per start on a busy event loop (api/DESIGN.md).
        return queries.started_conversation(session_id, user_id, cmd.title, cmd.created_at, cmd.plate_version,
                                            cmd.plate_sha256, cmd.metadata)

    async def get(self, user_id: str, session_id: str) -> dict[str, Any]:
        def read(conn: apsw.Connection) -> dict[str, Any] | None:
            conv = queries.get_conversation(conn, user_id, session_id)
            if conv is None:
                return None
            conv["messages"] = queries.list_messages(conn, user_id, session_id)
            return conv

        conv = await self.store.read(read)
        if conv is None:
            raise NotFound("conversation not found")
        return conv

    async def end(self, user_id: str, session_id: str, reason: str = "client") -> dict[str, Any]:
        """End a conversation gracefully: waits for a running turn, then persists the end."""
        lock = self._locks.get(session_id)
        try:
            async with asyncio.timeout(self.turn_wait_s):
                await lock.acquire()
        except TimeoutError:
            self._locks.release(session_id)
            raise Busy("a turn is still running; try again") from None
        try:
            conv = await self.store.read(queries.get_conversation, user_id, session_id)
            if conv is None:
                raise NotFound("conversation not found")
            cmd = c.EndConversation(request_id=new_id("r"), session_id=session_id, ended_at=now_iso(), reason=reason)
            value = await self.proposer.submit(cmd)
            conv = await self.store.read(queries.get_conversation, user_id, session_id)
            assert conv is not None
            conv["already_ended"] = value.get("already_ended", False)
            return conv
        finally:
            lock.release()
            self._locks.release(session_id)

    async def context_state(self, user_id: str, session_id: str) -> dict[str, Any] | None:
        """The state block's data for a conversation (what a spawning instance is validated with)."""
        inputs = await self.store.read(_load_turn_inputs, user_id, session_id, self.assembler.settings.recent_turns)
        return None if inputs is None else self._state_for_context(inputs)

    async def dry_run(self, user_id: str, session_id: str, content: str) -> AssembledContext:
        """The context the next turn would send, without calling the model or storing anything."""
        self._check_content(content)
        inputs = await self.store.read(_load_turn_inputs, user_id, session_id, self.assembler.settings.recent_turns)
        if inputs is None:
            raise NotFound("conversation not found")
        return await self.store.read_searchable(self._assemble, user_id, session_id, content, inputs, set())

    # -- the turn ------------------------------------------------------------------------

    def _check_content(self, content: str) -> None:
        if not content.strip():
            raise Invalid("content must not be empty", field="content")
        if len(content) > self.max_message_chars:
            raise Invalid(f"content is longer than {self.max_message_chars} characters", field="content")
        if "\x00" in content:
            raise Invalid("content must not contain NUL characters", field="content")

    def _assemble(
        self, conn: apsw.Connection, user_id: str, session_id: str, content: str, inputs: TurnInputs, exclude: set[str]
    ) -> AssembledContext:
        return self.assembler.assemble(
            conn,
            user_id=user_id,
            session_id=session_id,
            user_text=content,
            state=self._state_for_context(inputs),
            exclude_message_ids=exclude,
            history=inputs.history,
        )

    def _state_for_context(self, inputs: TurnInputs) -> dict[str, Any] | None:
        if inputs.state is None and inputs.consensus is None:
            return None
        state: dict[str, Any] = {}
        if inputs.state is not None:
            state["character"] = dict(zip(DIMENSIONS, inputs.state["character_vector"], strict=False))
            if inputs.state.get("relational_state"):
                state["relational"] = dict(zip(RELATIONAL_DIMENSIONS, inputs.state["relational_state"], strict=False))
            state["measured_at"] = inputs.state["created_at"]
        if inputs.consensus is not None:
            state["consensus"] = dict(zip(DIMENSIONS, inputs.consensus, strict=False))
        return state

    async def turn(
        self,
        user_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        wait: bool = True,
        on_delta: DeltaSink | None = None,
    ) -> TurnResult:
        self._check_content(content)
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise Invalid(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters", field="Idempotency-Key")
        lock = self._locks.get(session_id)
        try:
            if lock.locked() and not wait:
                raise Busy("a turn is already running in this conversation")
            try:
                async with asyncio.timeout(self.turn_wait_s):
                    await lock.acquire()
            except TimeoutError:
                raise Busy("timed out waiting for the running turn to finish") from None
            try:
                self.turns_in_flight += 1
                return await self._turn_locked(user_id, session_id, content, idempotency_key, on_delta)
            finally:
                self.turns_in_flight -= 1
                lock.release()
        finally:
            self._locks.release(session_id)

    async def _turn_locked(
        self, user_id: str, session_id: str, content: str, key: str | None, on_delta: DeltaSink | None
    ) -> TurnResult:
        started = time.perf_counter()
        inputs = await self.store.read(_load_turn_inputs, user_id, session_id, self.assembler.settings.recent_turns)
        if inputs is None:
            raise NotFound("conversation not found")
        if inputs.conversation["status"] != "active":
            raise Ended("the conversation has ended")

        question: dict[str, Any] | None = None
        if key is not None:
            question, answer = await self.store.read(queries.find_by_idempotency_key, session_id, key)
            if question is not None and question["content"] != content and not question.get("erased_at"):
                raise Invalid("this Idempotency-Key was used for a different message", field="Idempotency-Key")
            if answer is not None:
                assert question is not None
                return self._replay(session_id, question, answer)

        if self.token_budget is not None and self.token_budget.remaining(user_id) <= 0:
            raise QuotaExceeded("daily model token quota used up", retry_after=self.token_budget.seconds_to_reset())

        # The instance first: a refused spawn (validation failed → NotReady) stores nothing visible.
        instance_id, validation_score = (None, None)
        if self.hooks.instance_for is not None:
            instance_id, validation_score = await self.hooks.instance_for(user_id, session_id)

        if question is None:
            user_cmd = c.AppendMessage(
                request_id=f"{session_id}:{key}:user" if key else new_id("r"),
                message_id=new_id("m"),
                session_id=session_id,
                user_id=user_id,
                role="user",
                content=content,
                created_at=now_iso(),
                tokens=estimate_tokens(content),
                idempotency_key=key,
            )
            try:
                value = await self.proposer.submit(user_cmd)
            except CommandRejected as exc:
                raise _rejection(exc) from None
            user_message_id = value["message_id"]
        else:
            user_message_id = question["message_id"]

        context = await self.store.read_searchable(
            self._assemble, user_id, session_id, content, inputs, {user_message_id}
        )
        request = ModelRequest(
            system=context.system,
            messages=context.messages,
            max_tokens=self.max_output_tokens,
            metadata={"user_id": user_id},
        )
        reply = None
        try:
            async for event in self.backend.stream(request):
                if isinstance(event, TextDelta):
                    if on_delta is not None and event.text:
                        await on_delta(event.text)
                elif isinstance(event, Completed):
                    reply = event.reply
        except ModelStreamInterrupted as exc:
            raise ModelDown(f"the model stream failed midway: {exc.message}", retry_after=exc.retry_after,
                            partial=exc.partial_text) from None
        except ModelRateLimited as exc:
            raise ModelDown(f"the model is rate limited: {exc.message}", retry_after=exc.retry_after or 5.0) from None
        except ModelError as exc:
            raise ModelDown(f"the model is unavailable: {exc.message}", retry_after=exc.retry_after or 5.0) from None
        if reply is None:
            raise ModelDown("the model stream ended without a complete answer")

        measured = self._measure(reply.text, content, context, inputs, validation_score)
        usage = msgspec.to_builtins(reply.usage)
        if self.token_budget is not None:
            self.token_budget.spend(user_id, reply.usage.prompt_tokens + reply.usage.output_tokens)
        usage.update({"cost_usd": reply.cost_usd, "priced": reply.priced, "latency_ms": round(reply.latency_ms, 3),
                      "backend": reply.backend, "is_language_model": reply.is_language_model,
                      "stop_reason": reply.stop_reason})
        answer_cmd = c.AppendMessage(
            request_id=f"{session_id}:{key}:assistant" if key else new_id("r"),
            message_id=new_id("m"),
            session_id=session_id,
            user_id=user_id,
            role="assistant",
            content=reply.text,
            created_at=now_iso(),
            tokens=reply.usage.output_tokens,
            reply_to=user_message_id,
            model=reply.model,
            manifest=context.manifest,
            usage=usage,
            character_snapshot=measured["character"],
            relational_state=measured["relational"],
            metrics=measured["metrics"],
            instance_id=instance_id,
        )
        try:
            value = await self.proposer.submit(answer_cmd)
        except CommandRejected as exc:
            raise _rejection(exc) from None
        result = TurnResult(
            session_id=session_id,
            user_message_id=user_message_id,
            assistant_message_id=value["message_id"],
            seq=value["seq"],
            content=reply.text,
            model=reply.model,
            backend=reply.backend,
            is_language_model=reply.is_language_model,
            usage=usage,
            cost_usd=reply.cost_usd,
            metrics=measured["metrics"],
            manifest=context.manifest,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        if self.hooks.on_turn is not None:
            self.hooks.on_turn(user_id, result)
        return result

    def _measure(
        self, answer: str, user_text: str, context: AssembledContext, inputs: TurnInputs, validation: float | None
    ) -> dict[str, Any]:
        character = self.probe.measure(answer)
        relational = relational_state([*inputs.dialogue, ("user", user_text), ("assistant", answer)])
        consensus = np.asarray(inputs.consensus, dtype=np.float64) if inputs.consensus is not None else None
        sections = {block.kind: block.text for block in context.system}
        if context.messages:
            sections["recent"] = "\n".join(m.content for m in context.messages[:-1])
        turn = seed_metrics.turn_metrics(
            character,
            np.asarray(self.plate.baseline, dtype=np.float64),
            consensus,
            answer,
            sections,
            user_text=user_text,
            validation_score=validation,
            ccc_history=inputs.ccc_history,
        )
        values = {k: v for k, v in msgspec.to_builtins(turn).items() if v is not None}
        for key, value in values.items():
            if not math.isfinite(value):
                raise ValueError(f"metric {key} is not finite")
        return {
            "character": [round(float(x), 6) for x in character],
            "relational": [round(float(x), 6) for x in relational],
            "metrics": {k: round(float(v), 6) for k, v in values.items()},
        }

    def _replay(self, session_id: str, question: dict[str, Any], answer: dict[str, Any]) -> TurnResult:
        usage = answer.get("usage") or {}
        return TurnResult(
            session_id=session_id,
            user_message_id=question["message_id"],
            assistant_message_id=answer["message_id"],
            seq=answer["seq"],
            content=answer["content"],
            model=answer.get("model") or "",
            backend=usage.get("backend", ""),
            is_language_model=bool(usage.get("is_language_model", False)),
            usage=usage,
            cost_usd=float(usage.get("cost_usd", 0.0)),
            metrics=answer.get("metrics") or {},
            manifest=answer.get("manifest") or {},
            replayed=True,
        )


def _rejection(exc: CommandRejected) -> Exception:
    if exc.code == "conversation_ended":
        return Ended("the conversation has ended")
    if exc.code == "not_found":
        return NotFound("conversation not found")
    return Invalid(str(exc))
