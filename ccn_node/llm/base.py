"""The model backend protocol: the few typed values every backend speaks.

Callers (the conversation service) see only these types, never an SDK object, so the
anthropic, OpenAI-compatible and offline backends are interchangeable and the SDK can
change underneath without touching `continuity/`.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import msgspec

__all__ = [
    "ChatMessage",
    "Completed",
    "ContextBlock",
    "ModelBackend",
    "ModelBadRequest",
    "ModelError",
    "ModelRateLimited",
    "ModelReply",
    "ModelRequest",
    "ModelStreamInterrupted",
    "ModelUnavailable",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "estimate_tokens",
    "parse_retry_after",
]


class ContextBlock(msgspec.Struct, frozen=True):
    """One system-side context section, in order (plate first, byte-identical across turns).

    `cache=True` marks the prompt-cache breakpoint: everything up to and including the
    last block so marked is the cacheable prefix.
    """

    kind: str
    text: str
    cache: bool = False


class ChatMessage(msgspec.Struct, frozen=True):
    """One turn of the dialogue sent to the model."""

    role: Literal["user", "assistant"]
    content: str


class ModelRequest(msgspec.Struct):
    """Everything a backend needs for one call; `metadata["user_id"]` is forwarded if set."""

    system: list[ContextBlock]
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float | None = None
    metadata: dict[str, str] = {}


class Usage(msgspec.Struct, frozen=True):
    """Token counts as the Anthropic API reports them.

    `input_tokens` excludes the cached prefix: the prompt is
    input_tokens + cache_creation_input_tokens + cache_read_input_tokens.
    """

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        """All input tokens of the request, cached or not."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


class ModelReply(msgspec.Struct, frozen=True):
    """A complete answer. Only a `ModelReply` may be stored as a complete assistant message.

    `priced` is False when the model has no entry in the pricing table (then cost_usd is 0.0
    because it is unknown, not because it was free).
    """

    text: str
    usage: Usage
    model: str
    backend: str
    stop_reason: str
    cost_usd: float
    is_language_model: bool
    latency_ms: float
    priced: bool = True


class TextDelta(msgspec.Struct, frozen=True):
    """A piece of the answer, to be forwarded to the client as it arrives."""

    text: str


class Completed(msgspec.Struct, frozen=True):
    """The last event of a successful stream; `reply.text` is the concatenation of the deltas."""

    reply: ModelReply


StreamEvent = TextDelta | Completed


class ModelError(Exception):
    """A model call failed; `code` is stable, `http_status` is what the API should answer."""

    http_status: ClassVar[int] = 502

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, retry_after={self.retry_after!r})"


class ModelUnavailable(ModelError):
    """Model unreachable, overloaded, failing (5xx/529), timing out or not configured → 503."""

    http_status = 503


class ModelRateLimited(ModelError):
    """429 after the client's own retries; `retry_after` (seconds) is passed on to our client."""

    http_status = 429


class ModelBadRequest(ModelError):
    """The model API rejected the request we built (a bug or an oversize context, not the user's)."""

    http_status = 502


class ModelStreamInterrupted(ModelError):
    """The stream failed after it started.

    `partial_text` is what had arrived; report it, never store it as a complete answer.
    """

    http_status = 503

    def __init__(
        self,
        code: str,
        message: str,
        retry_after: float | None = None,
        *,
        partial_text: str = "",
    ) -> None:
        super().__init__(code, message, retry_after)
        self.partial_text = partial_text


@runtime_checkable
class ModelBackend(Protocol):
    """What `continuity/` needs from a model.

    `stream()` yields zero or more `TextDelta` then exactly one `Completed`, or raises a
    `ModelError` (a `ModelStreamInterrupted` once the answer has started). Closing the
    iterator early releases the connection.
    """

    name: str
    model: str

    async def complete(self, req: ModelRequest) -> ModelReply: ...

    def stream(self, req: ModelRequest) -> AsyncIterator[StreamEvent]: ...

    async def aclose(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def configured(self) -> bool: ...


def estimate_tokens(text: str) -> int:
    """ceil(chars/4): the project's budget estimate where no tokenizer is available."""
    return math.ceil(len(text) / 4)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP date), else None."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, float(email.utils.mktime_tz(parsed) - time.time()))
