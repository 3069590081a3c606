"""The offline backend: deterministic, labelled as not a language model, streams in several
deltas, counts usage as ceil(chars/4), and answers from the plate and the history it is given."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from ccn_node.llm.base import (
    ChatMessage,
    Completed,
    ContextBlock,
    ModelBackend,
    ModelReply,
    ModelRequest,
    TextDelta,
)
from ccn_node.llm.offline import OFFLINE_LABEL, OfflineBackend

pytestmark = pytest.mark.timeout(30)

PLATE = """# THE PLATE

I am Sol, the assistant of this node. I keep continuity across sessions.

## Core values
- Honesty: I say what I believe is true and admit uncertainty.
- Care for the people I talk with.

## Voice
Warm, direct and concise.
"""


def _request(question: str, max_tokens: int = 500) -> ModelRequest:
    return ModelRequest(
        system=[
            ContextBlock("plate", PLATE, cache=True),
            ContextBlock("state", "drift 0.02, trust 0.8"),
            ContextBlock(
                "relevant",
                "user: My dog is called Biscuit. assistant: A fine name. user: I live in Porto.",
            ),
            ContextBlock("recent", "user: hello\nassistant: hi there"),
        ],
        messages=[
            ChatMessage("user", "hello"),
            ChatMessage("assistant", "hi there"),
            ChatMessage("user", question),
        ],
        max_tokens=max_tokens,
    )


async def _stream(backend: OfflineBackend, req: ModelRequest) -> tuple[list[str], ModelReply]:
    deltas: list[str] = []
    reply = None
    async for event in backend.stream(req):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            assert isinstance(event, Completed)
            reply = event.reply
    assert reply is not None
    return deltas, reply


def test_protocol_and_labels() -> None:
    backend = OfflineBackend()
    assert isinstance(backend, ModelBackend) and backend.configured()
    assert backend.describe()["is_language_model"] is False
    reply = asyncio.run(backend.complete(_request("Who are you?")))
    assert reply.backend == "offline" and reply.is_language_model is False
    assert reply.cost_usd == 0.0 and reply.text.startswith(OFFLINE_LABEL)


def test_deterministic_and_stream_equals_complete() -> None:
    req = _request("What are your core values?")

    async def main() -> None:
        backend = OfflineBackend()
        a = await backend.complete(req)
        b = await backend.complete(req)
        deltas, c = await _stream(backend, req)
        assert a.text == b.text == c.text == "".join(deltas)
        assert a.usage == b.usage == c.usage
        assert len(deltas) >= 5

    asyncio.run(main())


def test_usage_is_ceil_chars_over_four() -> None:
    req = _request("Describe your voice.")
    reply = asyncio.run(OfflineBackend().complete(req))
    prompt = sum(math.ceil(len(b.text) / 4) for b in req.system) + sum(
        math.ceil(len(m.content) / 4) for m in req.messages
    )
    assert reply.usage.input_tokens == prompt
    assert reply.usage.output_tokens == math.ceil(len(reply.text) / 4)
    assert reply.usage.cache_creation_input_tokens == reply.usage.cache_read_input_tokens == 0


def test_reply_uses_the_context() -> None:
    reply = asyncio.run(OfflineBackend().complete(_request("What are your core values? Name my dog.")))
    text = reply.text
    assert 'You said: "What are your core values? Name my dog."' in text
    assert "4 context sections: plate" in text and "recent" in text
    assert "2 earlier turns" in text
    assert "Honesty: I say what I believe is true" in text  # the plate answers the question
    assert 'From relevant: "user: My dog is called Biscuit."' in text  # the history quote


def test_plate_answers_validation_questions() -> None:
    backend = OfflineBackend()
    cases = {
        "Who are you?": "I am Sol, the assistant of this node.",
        "Describe your voice.": "Warm, direct and concise.",
        "Do you care for people?": "Care for the people I talk with.",
    }
    for question, expected in cases.items():
        assert expected in asyncio.run(backend.complete(_request(question))).text, question


def test_max_tokens_truncates() -> None:
    reply = asyncio.run(OfflineBackend().complete(_request("Who are you?", max_tokens=10)))
    assert reply.stop_reason == "max_tokens" and len(reply.text) == 40


def test_empty_request_still_answers() -> None:
    reply = asyncio.run(OfflineBackend().complete(ModelRequest(system=[], messages=[], max_tokens=50)))
    assert reply.text.startswith(OFFLINE_LABEL) and reply.stop_reason in ("end_turn", "max_tokens")


def test_artificial_latency() -> None:
    backend = OfflineBackend(latency_ms=150)
    t0 = time.perf_counter()
    reply = asyncio.run(backend.complete(_request("hi")))
    assert time.perf_counter() - t0 >= 0.14
    assert reply.latency_ms >= 140
