"""A local fake of the Anthropic Messages API (and a minimal OpenAI chat-completions API).

The real `anthropic` SDK talks HTTP to it, so tests exercise the SDK's retries, SSE parsing
and error classes rather than a mock of our own code. It binds 127.0.0.1 on a free port and
runs either inside the caller's event loop (`async with FakeMessagesAPI() as api`) or in a
thread of its own for synchronous tests (`with FakeMessagesAPI() as api`).

Scriptable through `api.behaviour` (a `Behaviour`): latency, failing the first K calls with
429/529 and `retry-after`, an `error` event or a cut connection mid-stream, a custom reply
function. Every request received is recorded in `api.requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from nodeproc import NodeProcess

__all__ = ["Behaviour", "FakeMessagesAPI", "RecordedRequest", "default_reply"]

_TOP_LEVEL_KEYS = {
    "model",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "cache_control",
    "container",
    "diagnostics",
    "inference_geo",
    "output_config",
    "speed",
}


def default_reply(body: dict[str, Any]) -> str:
    """A deterministic answer built from the request, long enough to stream in several parts."""
    messages = body.get("messages") or []
    last = messages[-1]["content"] if messages else ""
    if isinstance(last, list):
        last = " ".join(b.get("text", "") for b in last if isinstance(b, dict))
    system = body.get("system") or []
    n_blocks = len(system) if isinstance(system, list) else 1
    return (
        f"Fake answer to: {last[:80]}. "
        f"I received {n_blocks} system block(s) and {len(messages)} message(s). "
        "This sentence only makes the reply long enough to arrive in several deltas."
    )


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


@dataclass
class Behaviour:
    """What the fake does with the next requests; change fields between calls."""

    latency_s: float = 0.0  # wait before answering (before headers)
    fail_first: int = 0  # how many of the next calls fail with fail_status
    fail_status: int = 429  # 429 (rate_limit_error), 529 (overloaded_error), 500, 503…
    retry_after: str | None = "0"  # the retry-after header sent with failures; None = absent
    error_after_deltas: int | None = None  # send an SSE `error` event after N deltas
    cut_after_deltas: int | None = None  # drop the connection after N deltas
    delta_chars: int = 12  # size of each text delta
    delta_delay_s: float = 0.0  # pause between deltas
    reply: Callable[[dict[str, Any]], str] = default_reply
    cache_min_tokens: int = 0  # the real API caches only prefixes above a model minimum
    openai_usage: bool = True  # whether the fake OpenAI server honours include_usage


@dataclass
class RecordedRequest:
    """One request as received, before validation."""

    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }
    return web.json_response(body, status=status, headers=headers)


def _validate_messages_body(body: Any) -> str | None:
    """The request checks the real API makes; returns an error message or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    extra = sorted(set(body) - _TOP_LEVEL_KEYS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        return "max_tokens: Field required"
    if max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: at least one message is required"
    previous = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        if isinstance(content, str):
            if not content:
                return f"messages.{i}: text content blocks must be non-empty"
        elif isinstance(content, list):
            if not content or any(
                not isinstance(b, dict) or b.get("type") != "text" or not b.get("text")
                for b in content
            ):
                return f"messages.{i}.content: text content blocks must be non-empty"
        else:
            return f"messages.{i}.content: Input should be a valid string or list"
        if m["role"] == previous:
            return f"messages.{i}: roles must alternate between 'user' and 'assistant'"
        previous = m["role"]
    system = body.get("system")
    breakpoints = 0
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            return "system: Input should be a valid string or list"
        for i, b in enumerate(system):
            if not isinstance(b, dict) or b.get("type") != "text":
                return f"system.{i}.type: Input should be 'text'"
            if not isinstance(b.get("text"), str) or not b["text"]:
                return f"system.{i}: text content blocks must be non-empty"
            cc = b.get("cache_control")
            if cc is not None:
                if not isinstance(cc, dict) or cc.get("type") != "ephemeral":
                    return f"system.{i}.cache_control.type: Input should be 'ephemeral'"
                breakpoints += 1
    if breakpoints > 4:
        return "A maximum of 4 blocks with cache_control may be provided"
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 1
    ):
        return "temperature: Input should be less than or equal to 1"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or set(metadata) - {"user_id"}
    ):
        return "metadata: Extra inputs are not permitted"
    return None


class FakeMessagesAPI:
    """The server; see the module docstring."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._seen_prefixes: set[str] = set()
        self._calls_failed = 0
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    # -- addresses --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """For `anthropic.AsyncAnthropic(base_url=...)`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """For the OpenAI-compatible backend (…/v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self, behaviour: Behaviour | None = None) -> None:
        """Forget recorded requests, cache state and failure counts."""
        with self._lock:
            self.behaviour = behaviour or Behaviour()
            self.requests.clear()
            self._seen_prefixes.clear()
            self._calls_failed = 0

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeMessagesAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> FakeMessagesAPI:
        """Run the server on its own loop in a daemon thread (for synchronous tests)."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-messages-api", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake Messages API did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None

    # -- shared pieces ----------------------------------------------------------------

    async def _record(self, request: web.Request) -> tuple[RecordedRequest, Any]:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        rec = RecordedRequest(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        with self._lock:
            self.requests.append(rec)
        return rec, body

    def _should_fail(self) -> bool:
        with self._lock:
            if self._calls_failed < self.behaviour.fail_first:
                self._calls_failed += 1
                return True
            return False

    def _failure(self) -> web.Response:
        b = self.behaviour
        headers = {"retry-after": b.retry_after} if b.retry_after is not None else {}
        kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(b.fail_status, "api_error")
        message = {429: "Number of requests has exceeded your rate limit", 529: "Overloaded"}.get(
            b.fail_status, "Internal server error"
        )
        return _error(b.fail_status, kind, message, headers)

    def _chunks(self, text: str) -> list[str]:
        n = max(1, self.behaviour.delta_chars)
        return [text[i : i + n] for i in range(0, len(text), n)] or [""]

    async def _cut(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        """Drop the TCP connection without finishing the chunked body."""
        resp.force_close()
        if request.transport is not None:
            request.transport.abort()
        return resp

    # -- Anthropic Messages -----------------------------------------------------------

    def _usage(self, body: dict[str, Any], reply: str) -> dict[str, int]:
        """ceil(chars/4) per text; the prefix up to the last cache_control is cached."""
        system = body.get("system")
        blocks: list[dict[str, Any]] = (
            [{"type": "text", "text": system}] if isinstance(system, str) else list(system or [])
        )
        total = sum(_tokens(b["text"]) for b in blocks)
        for m in body["messages"]:
            c = m["content"]
            total += _tokens(c) if isinstance(c, str) else sum(_tokens(b["text"]) for b in c)
        last_cc = max((i for i, b in enumerate(blocks) if b.get("cache_control")), default=-1)
        cache_write = cache_read = 0
        if last_cc >= 0:
            prefix = blocks[: last_cc + 1]
            prefix_tokens = sum(_tokens(b["text"]) for b in prefix)
            if prefix_tokens >= self.behaviour.cache_min_tokens:
                key = json.dumps([body["model"], prefix], sort_keys=True)
                with self._lock:
                    hit = key in self._seen_prefixes
                    self._seen_prefixes.add(key)
                if hit:
                    cache_read = prefix_tokens
                else:
                    cache_write = prefix_tokens
        return {
            "input_tokens": total - cache_write - cache_read,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "output_tokens": _tokens(reply),
        }

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        rec, body = await self._record(request)
        b = self.behaviour
        if b.latency_s:
            await asyncio.sleep(b.latency_s)
        if not request.headers.get("x-api-key") and not request.headers.get("authorization"):
            rec.status = 401
            return _error(401, "authentication_error", "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            rec.status = 400
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        if body is None:
            rec.status = 400
            return _error(400, "invalid_request_error", "There was an issue with your request body")
        problem = _validate_messages_body(body)
        if problem is not None:
            rec.status = 400
            return _error(400, "invalid_request_error", problem)
        if self._should_fail():
            rec.status = b.fail_status
            return self._failure()
        text = b.reply(body)
        stop_reason = "end_turn"
        if _tokens(text) > body["max_tokens"]:
            text, stop_reason = text[: body["max_tokens"] * 4], "max_tokens"
        usage = self._usage(body, text)
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        rec.status = 200
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
                headers={"request-id": f"req_{uuid.uuid4().hex[:24]}"},
            )
        return await self._messages_sse(request, body, text, stop_reason, usage, msg_id)

    async def _messages_sse(
        self,
        request: web.Request,
        body: dict[str, Any],
        text: str,
        stop_reason: str,
        usage: dict[str, int],
        msg_id: str,
    ) -> web.StreamResponse:
        b = self.behaviour
        resp = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await resp.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        start_usage = dict(usage, output_tokens=1)
        await send(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
        await send(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        await send("ping", {"type": "ping"})
        for n, chunk in enumerate(self._chunks(text)):
            if b.error_after_deltas is not None and n == b.error_after_deltas:
                await send(
                    "error",
                    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                )
                await resp.write_eof()
                return resp
            if b.cut_after_deltas is not None and n == b.cut_after_deltas:
                return await self._cut(request, resp)
            if b.delta_delay_s:
                await asyncio.sleep(b.delta_delay_s)
            await send(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}},
            )
        await send("content_block_stop", {"type": "content_block_stop", "index": 0})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp

    # -- OpenAI chat completions ------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        rec, body = await self._record(request)
        b = self.behaviour
        if b.latency_s:
            await asyncio.sleep(b.latency_s)
        problem = None
        if not isinstance(body, dict):
            problem = "request body must be a JSON object"
        elif not isinstance(body.get("model"), str):
            problem = "model is required"
        elif not isinstance(body.get("messages"), list) or not body["messages"]:
            problem = "messages must be a non-empty array"
        elif any(
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
            for m in body["messages"]
        ):
            problem = "each message needs a role and string content"
        if problem is not None:
            rec.status = 400
            return web.json_response(
                {"error": {"message": problem, "type": "invalid_request_error", "code": None}},
                status=400,
            )
        if self._should_fail():
            rec.status = b.fail_status
            headers = {"retry-after": b.retry_after} if b.retry_after is not None else {}
            return web.json_response(
                {"error": {"message": "try again later", "type": "server_error", "code": None}},
                status=b.fail_status,
                headers=headers,
            )
        # The default reply reads Anthropic-style bodies; give it the user/assistant turns.
        turns = [m for m in body["messages"] if m["role"] != "system"]
        text = b.reply({"messages": turns, "system": [m for m in body["messages"] if m["role"] == "system"]})
        finish = "stop"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and _tokens(text) > max_tokens:
            text, finish = text[: max_tokens * 4], "length"
        prompt = sum(_tokens(m["content"]) for m in body["messages"])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": _tokens(text),
            "total_tokens": prompt + _tokens(text),
        }
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        rec.status = 200
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        async def send(data: dict[str, Any] | str) -> None:
            payload = data if isinstance(data, str) else json.dumps(data)
            await resp.write(f"data: {payload}\n\n".encode())

        await send(chunk({"role": "assistant", "content": ""}, None))
        for n, piece in enumerate(self._chunks(text)):
            if b.error_after_deltas is not None and n == b.error_after_deltas:
                await send({"error": {"message": "model crashed", "type": "server_error"}})
                await resp.write_eof()
                return resp
            if b.cut_after_deltas is not None and n == b.cut_after_deltas:
                return await self._cut(request, resp)
            if b.delta_delay_s:
                await asyncio.sleep(b.delta_delay_s)
            await send(chunk({"content": piece}, None))
        await send(chunk({}, finish))
        stream_options = body.get("stream_options") or {}
        if b.openai_usage and stream_options.get("include_usage"):
            await send(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body["model"],
                    "choices": [],
                    "usage": usage,
                }
            )
        await send("[DONE]")
        await resp.write_eof()
        return resp


@contextlib.contextmanager
def anthropic_node(
    tmp: Any, fake: FakeMessagesAPI, continuity: str, *, max_retries: int = 0, timeout_s: int = 5
) -> Iterator[NodeProcess]:
    """A started node whose model is the real `anthropic` SDK talking to ``fake``; stopped on exit.

    ``continuity`` is the body of the config's ``[continuity]`` table (e.g. ``validation = "never"``).
    """
    extra = f"""
[model]
backend = "anthropic"
base_url = "{fake.base_url}"
max_retries = {max_retries}
timeout_s = {timeout_s}
[continuity]
{continuity}
[limits]
requests_per_minute = 100000
burst = 10000
"""
    proc = NodeProcess(tmp, config_extra=extra, env={"ANTHROPIC_API_KEY": "sk-test"})
    proc.config_path.write_text(proc.config_path.read_text().replace('backend = "auto"\n', ""))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
