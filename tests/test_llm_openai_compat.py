"""The OpenAI-compatible backend against the fake chat-completions endpoint: JSON and SSE
with include_usage, system blocks joined into one system message, retries before the answer
starts, and failures mapped to our error kinds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fake_messages_api import Behaviour, FakeMessagesAPI

from ccn_node.llm.base import (
    ChatMessage,
    Completed,
    ContextBlock,
    ModelBackend,
    ModelBadRequest,
    ModelRateLimited,
    ModelRequest,
    ModelStreamInterrupted,
    ModelUnavailable,
    TextDelta,
)
from ccn_node.llm.openai_compat import OpenAICompatBackend
from ccn_node.llm.pricing import PriceTable
from ccn_node.loopback import free_port

pytestmark = pytest.mark.timeout(30)


def _request(text: str = "What is continuity?", max_tokens: int = 300) -> ModelRequest:
    return ModelRequest(
        system=[
            ContextBlock("plate", "I am the node's assistant.", cache=True),
            ContextBlock("state", "drift 0.01"),
            ContextBlock("empty", ""),
        ],
        messages=[
            ChatMessage("user", "hi"),
            ChatMessage("assistant", "hello"),
            ChatMessage("user", text),
        ],
        max_tokens=max_tokens,
        metadata={"user_id": "u7"},
    )


def _run(
    body: Callable[[FakeMessagesAPI, OpenAICompatBackend], Awaitable[None]],
    behaviour: Behaviour | None = None,
    **kw: Any,
) -> None:
    async def main() -> None:
        async with FakeMessagesAPI(behaviour) as api:
            args: dict[str, Any] = {"timeout_s": 5.0, "max_retries": 2} | kw
            backend = OpenAICompatBackend(model="llama-3.1-8b", base_url=api.base_url, **args)
            try:
                await body(api, backend)
            finally:
                await backend.aclose()

    asyncio.run(main())


def test_base_url_gets_v1_and_protocol() -> None:
    backend = OpenAICompatBackend(model="m", base_url="http://127.0.0.1:11434")
    assert backend.base_url == "http://127.0.0.1:11434/v1"
    assert OpenAICompatBackend(model="m", base_url="http://h:1/v1/").base_url == "http://h:1/v1"
    assert isinstance(backend, ModelBackend) and backend.configured()
    assert backend.describe()["priced"] is False


def test_complete_json() -> None:
    async def body(api: FakeMessagesAPI, backend: OpenAICompatBackend) -> None:
        reply = await backend.complete(_request())
        assert reply.text.startswith("Fake answer to: What is continuity?")
        assert reply.backend == "openai" and reply.model == "llama-3.1-8b"
        assert reply.stop_reason == "end_turn" and reply.is_language_model
        assert reply.cost_usd == 0.0 and reply.priced is False
        sent = api.requests[0].body
        assert sent["messages"][0] == {
            "role": "system",
            "content": "I am the node's assistant.\n\ndrift 0.01",
        }
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
        assert sent["stream"] is False and sent["max_tokens"] == 300 and sent["user"] == "u7"
        prompt = sum(-(-len(m["content"]) // 4) for m in sent["messages"])
        assert reply.usage.input_tokens == prompt
        assert reply.usage.output_tokens == -(-len(reply.text) // 4)

    _run(body)


def test_stream_with_include_usage() -> None:
    async def body(api: FakeMessagesAPI, backend: OpenAICompatBackend) -> None:
        deltas: list[str] = []
        events = [e async for e in backend.stream(_request())]
        for e in events[:-1]:
            assert isinstance(e, TextDelta)
            deltas.append(e.text)
        done = events[-1]
        assert isinstance(done, Completed)
        assert len(deltas) >= 5 and "".join(deltas) == done.reply.text
        sent = api.requests[0].body
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        assert done.reply.usage.output_tokens == -(-len(done.reply.text) // 4)

    _run(body)


def test_stream_without_server_usage_is_estimated() -> None:
    async def body(api: FakeMessagesAPI, backend: OpenAICompatBackend) -> None:
        events = [e async for e in backend.stream(_request())]
        done = events[-1]
        assert isinstance(done, Completed)
        assert done.reply.usage.output_tokens == -(-len(done.reply.text) // 4)
        assert done.reply.usage.input_tokens > 0

    _run(body, Behaviour(openai_usage=False))


def test_length_finish_reason_and_pricing_override() -> None:
    async def main() -> None:
        async with FakeMessagesAPI() as api:
            prices = PriceTable({"llama-3.1-8b": {"input": 1.0, "output": 2.0}})
            backend = OpenAICompatBackend(model="llama-3.1-8b", base_url=api.base_url, prices=prices)
            try:
                reply = await backend.complete(_request(max_tokens=4))
            finally:
                await backend.aclose()
        assert reply.stop_reason == "max_tokens" and len(reply.text) == 16
        assert reply.priced
        expected = (reply.usage.input_tokens * 1.0 + reply.usage.output_tokens * 2.0) / 1e6
        assert reply.cost_usd == pytest.approx(expected)

    asyncio.run(main())


def test_503_then_success_is_retried_with_retry_after() -> None:
    async def body(api: FakeMessagesAPI, backend: OpenAICompatBackend) -> None:
        t0 = time.perf_counter()
        events = [e async for e in backend.stream(_request())]
        assert isinstance(events[-1], Completed)
        assert [r.status for r in api.requests] == [503, 503, 200]
        assert time.perf_counter() - t0 >= 2 * 0.2 * 0.95

    _run(body, Behaviour(fail_first=2, fail_status=503, retry_after="0.2"))


def test_429_exhausted_is_rate_limited() -> None:
    async def body(api: FakeMessagesAPI, backend: OpenAICompatBackend) -> None:
        with pytest.raises(ModelRateLimited) as err:
            await backend.complete(_request())
        assert err.value.retry_after == pytest.approx(0.01)
        assert len(api.requests) == 2

    _run(body, Behaviour(fail_first=9, fail_status=429, retry_after="0.01"), max_retries=1)


def test_bad_request_is_not_retried() -> None:
    async def body(api: FakeMessagesAPI, backend: OpenAICompatBackend) -> None:
        with pytest.raises(ModelBadRequest):
            await backend.complete(ModelRequest(system=[], messages=[], max_tokens=10))
        assert len(api.requests) == 1

    _run(body)


def test_connection_refused_is_unavailable() -> None:
    port = free_port()  # nobody listens there

    async def main() -> None:
        backend = OpenAICompatBackend(
            model="m", base_url=f"http://127.0.0.1:{port}", max_retries=1, timeout_s=2
        )
        try:
            with pytest.raises(ModelUnavailable) as err:
                await backend.complete(_request())
            assert err.value.code == "model_unreachable"
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_timeout_is_unavailable() -> None:
    async def body(api: FakeMessagesAPI, backend: OpenAICompatBackend) -> None:
        with pytest.raises(ModelUnavailable) as err:
            await backend.complete(_request())
        assert err.value.code == "model_timeout"

    _run(body, Behaviour(latency_s=2.0), timeout_s=0.3, max_retries=0)


@pytest.mark.parametrize("where", ["error", "cut"])
def test_failure_mid_stream_is_interrupted(where: str) -> None:
    behaviour = Behaviour(error_after_deltas=3) if where == "error" else Behaviour(cut_after_deltas=3)

    async def body(api: FakeMessagesAPI, backend: OpenAICompatBackend) -> None:
        seen: list[str] = []
        with pytest.raises(ModelStreamInterrupted) as err:
            async for event in backend.stream(_request()):
                assert isinstance(event, TextDelta)
                seen.append(event.text)
        assert len(seen) == 3 and err.value.partial_text == "".join(seen)
        assert len(api.requests) == 1

    _run(body, behaviour)
