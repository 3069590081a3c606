"""The Anthropic Messages API through the official `anthropic` SDK (async, streaming, caching).

Retries are the SDK's: `max_retries` is set once on the client, which already backs off on
408/409/429/5xx/529 and connection errors and honours `retry-after`. Nothing here retries
again; what is still failing after the SDK gave up becomes one of our `ModelError`s.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from ccn_node.llm.base import (
    ChatMessage,
    Completed,
    ModelBadRequest,
    ModelError,
    ModelRateLimited,
    ModelReply,
    ModelRequest,
    ModelStreamInterrupted,
    ModelUnavailable,
    StreamEvent,
    TextDelta,
    Usage,
    parse_retry_after,
)
from ccn_node.llm.pricing import PriceTable

__all__ = ["DEFAULT_BASE_URL", "AnthropicBackend"]

DEFAULT_BASE_URL = "https://api.anthropic.com"


def _map_error(exc: BaseException) -> ModelError:
    """Translate what the SDK raises (after its own retries) into our error kinds."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ModelUnavailable("model_timeout", "the model API did not answer in time")
    if isinstance(exc, anthropic.APIConnectionError):
        return ModelUnavailable("model_unreachable", f"cannot reach the model API: {exc.message}")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        retry_after = parse_retry_after(exc.response.headers)
        kind = exc.type or ""
        detail = exc.api_message or exc.message
        if status == 429 or kind == "rate_limit_error":
            return ModelRateLimited("model_rate_limited", f"model API rate limit: {detail}", retry_after)
        if status == 529 or kind == "overloaded_error":
            return ModelUnavailable("model_overloaded", f"model API overloaded: {detail}", retry_after)
        if status in (401, 403):
            return ModelUnavailable("model_auth_failed", f"model API refused the credentials: {detail}")
        if status >= 500 or status in (408, 409):
            return ModelUnavailable("model_upstream_error", f"model API error {status}: {detail}", retry_after)
        return ModelBadRequest("model_bad_request", f"model API rejected the request ({status}): {detail}")
    if isinstance(exc, anthropic.AnthropicError):
        return ModelUnavailable("model_client_error", f"model client error: {exc}")
    return ModelUnavailable("model_client_error", f"model call failed: {type(exc).__name__}: {exc}")


def _normalise_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Drop empty turns and join consecutive same-role turns: the API wants them alternating."""
    out: list[dict[str, str]] = []
    for m in messages:
        if not m.content:
            continue
        if out and out[-1]["role"] == m.role:
            out[-1]["content"] += "\n\n" + m.content
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class AnthropicBackend:
    """`ModelBackend` over `anthropic.AsyncAnthropic`; one client per backend, reused."""

    name = "anthropic"

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str = "",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        temperature: float | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url or DEFAULT_BASE_URL
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.temperature = temperature
        self._prices = prices or PriceTable()
        self._client: anthropic.AsyncAnthropic | None = None
        if api_key:
            self._client = anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=self.base_url,
                timeout=timeout_s,
                max_retries=max_retries,
            )

    def configured(self) -> bool:
        """True when an API key was given (reachability is not checked here)."""
        return self._client is not None

    def describe(self) -> dict[str, Any]:
        """For /ready and reply metadata; never includes the key."""
        return {
            "backend": self.name,
            "model": self.model,
            "base_url": self.base_url,
            "configured": self.configured(),
            "is_language_model": True,
            "max_retries": self.max_retries,
            "timeout_s": self.timeout_s,
            "priced": self._prices.lookup(self.model) is not None,
        }

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()

    def _params(self, req: ModelRequest) -> dict[str, Any]:
        """The request body: system text blocks, cache_control on the last block marked cache."""
        blocks = [b for b in req.system if b.text]
        last_cached = max((i for i, b in enumerate(blocks) if b.cache), default=-1)
        system: list[dict[str, Any]] = []
        for i, b in enumerate(blocks):
            block: dict[str, Any] = {"type": "text", "text": b.text}
            if i == last_cached:
                block["cache_control"] = {"type": "ephemeral"}
            system.append(block)
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": req.max_tokens,
            "messages": _normalise_messages(req.messages),
        }
        if system:
            params["system"] = system
        temperature = req.temperature if req.temperature is not None else self.temperature
        if temperature is not None:
            # SDK 2.x has no `temperature` argument (newer models reject sampling
            # parameters); send it raw only when configured, for models that accept it.
            params["extra_body"] = {"temperature": temperature}
        if req.metadata.get("user_id"):
            params["metadata"] = {"user_id": req.metadata["user_id"]}
        return params

    def _client_or_raise(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            raise ModelUnavailable("model_not_configured", "no Anthropic API key is configured")
        return self._client

    def _reply(self, text: str, usage: Usage, model: str, stop_reason: str, t0: float) -> ModelReply:
        cost = self._prices.cost(model or self.model, usage)
        return ModelReply(
            text=text,
            usage=usage,
            model=model or self.model,
            backend=self.name,
            stop_reason=stop_reason,
            cost_usd=cost.usd,
            is_language_model=True,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            priced=cost.priced,
        )

    async def complete(self, req: ModelRequest) -> ModelReply:
        """One non-streaming call; the SDK retries, we only translate the final failure."""
        client = self._client_or_raise()
        t0 = time.perf_counter()
        try:
            msg = await client.messages.create(**self._params(req))
        except anthropic.AnthropicError as exc:
            raise _map_error(exc) from exc
        text = "".join(b.text for b in msg.content if b.type == "text")
        u = msg.usage
        usage = Usage(
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_creation_input_tokens=u.cache_creation_input_tokens or 0,
            cache_read_input_tokens=u.cache_read_input_tokens or 0,
        )
        return self._reply(text, usage, msg.model, msg.stop_reason or "", t0)

    async def stream(self, req: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Raw SSE events → TextDelta per text delta, then Completed with usage and cost.

        Failures before the first event (429, 529, refused connection…) raise the mapped
        error after the SDK's retries; any failure once events flow raises
        ModelStreamInterrupted carrying the text received so far.
        """
        client = self._client_or_raise()
        t0 = time.perf_counter()
        try:
            raw = await client.messages.create(**self._params(req), stream=True)
        except anthropic.AnthropicError as exc:
            raise _map_error(exc) from exc

        parts: list[str] = []
        model = self.model
        stop_reason = ""
        input_tokens = output_tokens = cache_write = cache_read = 0
        stopped = False
        async with raw:
            try:
                async for event in raw:
                    if event.type == "message_start":
                        model = event.message.model or model
                        u = event.message.usage
                        input_tokens = u.input_tokens
                        output_tokens = u.output_tokens
                        cache_write = u.cache_creation_input_tokens or 0
                        cache_read = u.cache_read_input_tokens or 0
                    elif event.type == "content_block_delta":
                        if event.delta.type == "text_delta" and event.delta.text:
                            parts.append(event.delta.text)
                            yield TextDelta(event.delta.text)
                    elif event.type == "message_delta":
                        d = event.usage
                        output_tokens = d.output_tokens
                        if d.input_tokens is not None:
                            input_tokens = d.input_tokens
                        if d.cache_creation_input_tokens is not None:
                            cache_write = d.cache_creation_input_tokens
                        if d.cache_read_input_tokens is not None:
                            cache_read = d.cache_read_input_tokens
                        stop_reason = event.delta.stop_reason or stop_reason
                    elif event.type == "message_stop":
                        stopped = True
            except Exception as exc:
                mapped = _map_error(exc)
                raise ModelStreamInterrupted(
                    "model_stream_interrupted",
                    f"the model stream broke after {len(''.join(parts))} characters: {mapped.message}",
                    mapped.retry_after,
                    partial_text="".join(parts),
                ) from exc
        if not stopped:
            raise ModelStreamInterrupted(
                "model_stream_interrupted",
                "the model stream ended without message_stop",
                partial_text="".join(parts),
            )
        usage = Usage(input_tokens, output_tokens, cache_write, cache_read)
        yield Completed(self._reply("".join(parts), usage, model, stop_reason, t0))
