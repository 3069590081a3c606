"""The real `anthropic` SDK, through `AnthropicBackend`, against the local fake Messages API:
JSON and SSE, usage with prompt-cache hits, cost, the SDK's retries honouring retry-after,
and every failure mapped to our error kinds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from fake_messages_api import Behaviour, FakeMessagesAPI

from ccn_node.llm.anthropic_backend import AnthropicBackend
from ccn_node.llm.base import (
    ChatMessage,
    Completed,
    ContextBlock,
    ModelBackend,
    ModelBadRequest,
    ModelRateLimited,
    ModelReply,
    ModelRequest,
    ModelStreamInterrupted,
    ModelUnavailable,
    TextDelta,
)
from ccn_node.llm.pricing import PriceTable
from ccn_node.loopback import free_port

pytestmark = pytest.mark.timeout(30)

MODEL = "claude-sonnet-4-6"
PLATE = "# THE PLATE\n\nI am the assistant of this node. I value honesty and care.\n" * 20


def _request(text: str = "Hello, who are you?", **kw: Any) -> ModelRequest:
    return ModelRequest(
        system=[
            ContextBlock("plate", PLATE, cache=True),
            ContextBlock("state", "drift 0.01"),
            ContextBlock("recent", "user: earlier question\nassistant: earlier answer"),
        ],
        messages=[ChatMessage("user", text)],
        max_tokens=kw.pop("max_tokens", 300),
        **kw,
    )


def _run(
    body: Callable[[FakeMessagesAPI, AnthropicBackend], Awaitable[None]],
    behaviour: Behaviour | None = None,
    **backend_kw: Any,
) -> None:
    """Start the fake, build a backend on it, run `body`, close both."""

    async def main() -> None:
        async with FakeMessagesAPI(behaviour) as api:
            kw: dict[str, Any] = {"timeout_s": 5.0, "max_retries": 2} | backend_kw
            backend = AnthropicBackend(model=MODEL, api_key="test-key", base_url=api.base_url, **kw)
            try:
                await body(api, backend)
            finally:
                await backend.aclose()

    asyncio.run(main())


async def _collect(backend: ModelBackend, req: ModelRequest) -> tuple[list[str], ModelReply]:
    deltas: list[str] = []
    reply: ModelReply | None = None
    async for event in backend.stream(req):
        assert reply is None, "nothing may follow Completed"
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert isinstance(event, Completed)
            reply = event.reply
    assert reply is not None
    return deltas, reply


def test_protocol_and_describe() -> None:
    backend = AnthropicBackend(model=MODEL, api_key="sk-secret-123", base_url="http://127.0.0.1:9")
    assert isinstance(backend, ModelBackend)
    assert backend.configured()
    info = backend.describe()
    assert info["backend"] == "anthropic" and info["model"] == MODEL and info["priced"] is True
    assert "sk-secret-123" not in json.dumps(info)
    assert not AnthropicBackend(model=MODEL, api_key="").configured()


def test_not_configured_is_unavailable() -> None:
    async def main() -> None:
        backend = AnthropicBackend(model=MODEL, api_key="")
        with pytest.raises(ModelUnavailable) as err:
            await backend.complete(_request())
        assert err.value.code == "model_not_configured"

    asyncio.run(main())


def test_complete_json_request_shape_usage_and_cost() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        req = _request(temperature=0.3, metadata={"user_id": "u1", "other": "x"})
        reply = await backend.complete(req)
        assert reply.text.startswith("Fake answer to: Hello, who are you?")
        assert reply.backend == "anthropic" and reply.model == MODEL
        assert reply.is_language_model and reply.priced and reply.stop_reason == "end_turn"
        assert reply.latency_ms > 0

        (rec,) = api.requests
        assert rec.status == 200
        # SDK 2.x sends the key as a bearer token; 0.x sent x-api-key
        assert "test-key" in (rec.headers.get("x-api-key"), rec.headers.get("authorization", "")[7:])
        sent = rec.body
        assert sent["model"] == MODEL and sent["max_tokens"] == 300 and "stream" not in sent
        assert sent["temperature"] == 0.3 and sent["metadata"] == {"user_id": "u1"}
        assert [b["text"] for b in sent["system"]] == [b.text for b in req.system]
        assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert all("cache_control" not in b for b in sent["system"][1:])
        assert sent["messages"] == [{"role": "user", "content": "Hello, who are you?"}]

        u = reply.usage
        plate_tokens = -(-len(PLATE) // 4)
        assert u.cache_creation_input_tokens == plate_tokens and u.cache_read_input_tokens == 0
        assert u.output_tokens == -(-len(reply.text) // 4)
        price = PriceTable().lookup(MODEL)
        assert price is not None
        expected = (
            u.input_tokens * price.input
            + u.cache_creation_input_tokens * price.cache_write
            + u.output_tokens * price.output
        ) / 1e6
        assert reply.cost_usd == pytest.approx(expected)

    _run(body)


def test_stream_deltas_usage_and_cache_hit_on_second_call() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        deltas1, first = await _collect(backend, _request("first question"))
        deltas2, second = await _collect(backend, _request("second question"))
        assert len(deltas1) >= 5 and "".join(deltas1) == first.text
        assert "".join(deltas2) == second.text and "second question" in second.text
        assert all(r.body["stream"] is True for r in api.requests)

        plate_tokens = -(-len(PLATE) // 4)
        assert first.usage.cache_creation_input_tokens == plate_tokens
        assert first.usage.cache_read_input_tokens == 0
        assert second.usage.cache_creation_input_tokens == 0
        assert second.usage.cache_read_input_tokens == plate_tokens
        assert first.usage.prompt_tokens == second.usage.prompt_tokens
        assert first.usage.output_tokens == -(-len(first.text) // 4)
        # a cache read costs a tenth of input and a write 1.25x: the second call is cheaper
        assert 0 < second.cost_usd < first.cost_usd
        price = PriceTable().lookup(MODEL)
        assert price is not None
        u = second.usage
        assert second.cost_usd == pytest.approx(
            (
                u.input_tokens * price.input
                + u.cache_read_input_tokens * price.cache_read
                + u.output_tokens * price.output
            )
            / 1e6
        )

    _run(body)


def test_stream_and_complete_agree() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        _, streamed = await _collect(backend, _request())
        completed = await backend.complete(_request())
        assert streamed.text == completed.text
        assert streamed.usage.output_tokens == completed.usage.output_tokens

    _run(body)


def test_max_tokens_stop_reason() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        _, reply = await _collect(backend, _request(max_tokens=5))
        assert reply.stop_reason == "max_tokens" and len(reply.text) == 20

    _run(body)


def test_429_then_success_honours_retry_after() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        t0 = time.perf_counter()
        reply = await backend.complete(_request())
        elapsed = time.perf_counter() - t0
        assert reply.text
        assert [r.status for r in api.requests] == [429, 429, 200]
        assert elapsed >= 2 * 0.3 * 0.95  # two waits of retry-after: 0.3

    _run(body, Behaviour(fail_first=2, fail_status=429, retry_after="0.3"))


def test_429_then_success_when_streaming() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        deltas, reply = await _collect(backend, _request())
        assert "".join(deltas) == reply.text
        assert [r.status for r in api.requests] == [429, 200]

    _run(body, Behaviour(fail_first=1, fail_status=429, retry_after="0.05"))


def test_429_exhausted_is_rate_limited_with_retry_after() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        with pytest.raises(ModelRateLimited) as err:
            await backend.complete(_request())
        assert err.value.retry_after == pytest.approx(0.05)
        assert err.value.http_status == 429
        assert len(api.requests) == 2  # the SDK's one retry, none of ours on top

    _run(body, Behaviour(fail_first=10, fail_status=429, retry_after="0.05"), max_retries=1)


def test_529_exhausted_is_unavailable() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        with pytest.raises(ModelUnavailable) as err:
            async for _ in backend.stream(_request()):
                pass
        assert err.value.code == "model_overloaded" and err.value.http_status == 503
        assert len(api.requests) == 3  # 1 + max_retries

    _run(body, Behaviour(fail_first=10, fail_status=529, retry_after="0.05"), max_retries=2)


def test_500_exhausted_is_unavailable() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        with pytest.raises(ModelUnavailable) as err:
            await backend.complete(_request())
        assert err.value.code == "model_upstream_error"

    _run(body, Behaviour(fail_first=10, fail_status=500, retry_after="0.01"), max_retries=1)


def test_error_event_mid_stream_is_interrupted_with_partial_text() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        seen: list[str] = []
        with pytest.raises(ModelStreamInterrupted) as err:
            async for event in backend.stream(_request()):
                assert isinstance(event, TextDelta), "no Completed after a failed stream"
                seen.append(event.text)
        assert len(seen) == 3
        assert err.value.partial_text == "".join(seen) and err.value.partial_text
        assert "overloaded" in err.value.message.lower()
        assert len(api.requests) == 1  # a started stream is never retried

    _run(body, Behaviour(error_after_deltas=3))


def test_connection_cut_mid_stream_is_interrupted() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        seen: list[str] = []
        with pytest.raises(ModelStreamInterrupted) as err:
            async for event in backend.stream(_request()):
                assert isinstance(event, TextDelta)
                seen.append(event.text)
        assert err.value.partial_text == "".join(seen) and len(seen) == 2

    _run(body, Behaviour(cut_after_deltas=2))


def test_connection_refused_is_unavailable() -> None:
    port = free_port()  # nobody listens there

    async def main() -> None:
        backend = AnthropicBackend(
            model=MODEL, api_key="k", base_url=f"http://127.0.0.1:{port}", max_retries=0, timeout_s=2
        )
        try:
            with pytest.raises(ModelUnavailable) as err:
                await backend.complete(_request())
            assert err.value.code == "model_unreachable"
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_timeout_is_unavailable() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        t0 = time.perf_counter()
        with pytest.raises(ModelUnavailable) as err:
            await backend.complete(_request())
        assert err.value.code == "model_timeout"
        assert time.perf_counter() - t0 < 3

    _run(body, Behaviour(latency_s=2.0), timeout_s=0.3, max_retries=0)


def test_rejected_request_is_bad_request() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        with pytest.raises(ModelBadRequest) as err:
            await backend.complete(_request(temperature=1.5))
        assert "temperature" in err.value.message
        assert len(api.requests) == 1  # 400 is not retried

    _run(body)


def test_messages_normalised_to_alternate() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        req = ModelRequest(
            system=[ContextBlock("plate", PLATE, cache=True), ContextBlock("empty", "")],
            messages=[
                ChatMessage("user", "one"),
                ChatMessage("user", "two"),
                ChatMessage("assistant", ""),
                ChatMessage("assistant", "three"),
                ChatMessage("user", "four"),
            ],
            max_tokens=100,
        )
        await backend.complete(req)
        sent = api.requests[0].body
        assert sent["messages"] == [
            {"role": "user", "content": "one\n\ntwo"},
            {"role": "assistant", "content": "three"},
            {"role": "user", "content": "four"},
        ]
        assert len(sent["system"]) == 1 and "cache_control" in sent["system"][0]

    _run(body)


def test_closing_the_stream_early_releases_it() -> None:
    async def body(api: FakeMessagesAPI, backend: AnthropicBackend) -> None:
        gen = backend.stream(_request())
        first = await gen.__anext__()
        assert isinstance(first, TextDelta)
        await gen.aclose()
        # the client is still usable afterwards
        reply = await backend.complete(_request("after"))
        assert "after" in reply.text

    _run(body, Behaviour(delta_delay_s=0.01))


def test_fake_rejects_malformed_requests_like_the_real_api() -> None:
    good = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    cases: list[dict[str, Any]] = [
        {k: v for k, v in good.items() if k != "model"},
        {k: v for k, v in good.items() if k != "max_tokens"},
        good | {"messages": []},
        good | {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
        good | {"messages": [{"role": "system", "content": "a"}]},
        good | {"system": [{"type": "text", "text": ""}]},
        good | {"system": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]},
        good | {"unknown_field": 1},
    ]

    async def main() -> None:
        async with FakeMessagesAPI() as api, aiohttp.ClientSession() as http:
            headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
            url = f"{api.base_url}/v1/messages"
            async with http.post(url, json=good, headers=headers) as resp:
                assert resp.status == 200
            for case in cases:
                async with http.post(url, json=case, headers=headers) as resp:
                    assert resp.status == 400, case
                    data = await resp.json()
                    assert data["type"] == "error"
                    assert data["error"]["type"] == "invalid_request_error"
            async with http.post(url, json=good, headers={"anthropic-version": "2023-06-01"}) as resp:
                assert resp.status == 401

    asyncio.run(main())


def test_fake_runs_in_a_thread_for_sync_callers() -> None:
    import anthropic

    with FakeMessagesAPI() as api:
        client = anthropic.Anthropic(api_key="k", base_url=api.base_url, max_retries=0, timeout=5)
        msg = client.messages.create(
            model=MODEL,
            max_tokens=50,
            system=[{"type": "text", "text": "plate", "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "sync hello"}],
        )
        client.close()
        assert "sync hello" in msg.content[0].text
        assert msg.usage.cache_creation_input_tokens == 2
        assert len(api.requests) == 1
