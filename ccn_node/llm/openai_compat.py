"""OpenAI-compatible `/v1/chat/completions` over aiohttp, for a local model server.

llama.cpp (`llama-server`), Ollama (`/v1`) and vLLM all speak this dialect. There is no
SDK here, so this module owns the (single) retry loop: before any byte of an answer has
arrived, connection errors, 429 and 5xx are retried `max_retries` times with the same
back-off as the anthropic SDK (0.5 s doubling, capped at 8 s, or the server's
`retry-after`). Once an answer has started nothing is retried.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ccn_node.llm.base import (
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
    estimate_tokens,
    parse_retry_after,
)
from ccn_node.llm.pricing import PriceTable

__all__ = ["DEFAULT_OPENAI_BASE_URL", "OpenAICompatBackend"]

DEFAULT_OPENAI_BASE_URL = "http://127.0.0.1:8080/v1"

_FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}


def _normalise_base_url(url: str) -> str:
    """Accept "http://host:port" as well as "http://host:port/v1"."""
    url = (url or DEFAULT_OPENAI_BASE_URL).rstrip("/")
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url


def _status_error(status: int, text: str, headers: Any) -> ModelError:
    """An HTTP error answer → our error kind."""
    detail = text[:300]
    try:
        body = json.loads(text)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            detail = str(err["message"])
        elif isinstance(err, str):
            detail = err
    except ValueError:
        pass
    retry_after = parse_retry_after(headers)
    if status == 429:
        return ModelRateLimited("model_rate_limited", f"model server rate limit: {detail}", retry_after)
    if status in (401, 403):
        return ModelUnavailable("model_auth_failed", f"model server refused the credentials: {detail}")
    if status >= 500 or status in (408, 409):
        return ModelUnavailable("model_upstream_error", f"model server error {status}: {detail}", retry_after)
    return ModelBadRequest("model_bad_request", f"model server rejected the request ({status}): {detail}")


class OpenAICompatBackend:
    """`ModelBackend` for an OpenAI-compatible chat-completions server."""

    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "",
        api_key: str = "",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        temperature: float | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.model = model
        self.base_url = _normalise_base_url(base_url)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.temperature = temperature
        self._api_key = api_key
        self._prices = prices or PriceTable()
        self._session: aiohttp.ClientSession | None = None

    def configured(self) -> bool:
        """A URL and a model name are all a local server needs."""
        return bool(self.base_url and self.model)

    def describe(self) -> dict[str, Any]:
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
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        """Created on first use, inside the running loop."""
        if self._session is None or self._session.closed:
            headers = {"content-type": "application/json"}
            if self._api_key:
                headers["authorization"] = f"Bearer {self._api_key}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout_s, sock_connect=self.timeout_s, sock_read=self.timeout_s
                ),
            )
        return self._session

    def _body(self, req: ModelRequest, stream: bool) -> dict[str, Any]:
        """All system blocks joined into one system message, then the turns."""
        messages: list[dict[str, str]] = []
        system = "\n\n".join(b.text for b in req.system if b.text)
        if system:
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.content} for m in req.messages if m.content)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": req.max_tokens,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        temperature = req.temperature if req.temperature is not None else self.temperature
        if temperature is not None:
            body["temperature"] = temperature
        if req.metadata.get("user_id"):
            body["user"] = req.metadata["user_id"]
        return body

    async def _post(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST with the retry policy of the module docstring; returns a 200 response."""
        session = self._get_session()
        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            error: ModelError
            try:
                resp = await session.post(url, json=body)
            except TimeoutError:
                error = ModelUnavailable("model_timeout", "the model server did not answer in time")
            except aiohttp.ClientError as exc:
                error = ModelUnavailable("model_unreachable", f"cannot reach the model server: {exc}")
            else:
                if resp.status == 200:
                    return resp
                text = await resp.text(errors="replace")
                resp.release()
                error = _status_error(resp.status, text, resp.headers)
            retryable = (
                isinstance(error, ModelUnavailable | ModelRateLimited)
                and error.code != "model_auth_failed"
            )
            if attempt >= self.max_retries or not retryable:
                raise error
            delay = error.retry_after
            if delay is None:
                delay = min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())
            attempt += 1
            await asyncio.sleep(delay)

    def _reply(
        self, text: str, usage: Usage, model: str, finish: str | None, t0: float
    ) -> ModelReply:
        cost = self._prices.cost(model, usage)
        return ModelReply(
            text=text,
            usage=usage,
            model=model,
            backend=self.name,
            stop_reason=_FINISH_TO_STOP.get(finish or "", finish or ""),
            cost_usd=cost.usd,
            is_language_model=True,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            priced=cost.priced,
        )

    @staticmethod
    def _usage(raw: Any, body: dict[str, Any], text: str) -> Usage:
        """Server-reported usage; ceil(chars/4) estimates where the server reports none."""
        if isinstance(raw, dict) and isinstance(raw.get("prompt_tokens"), int):
            details = raw.get("prompt_tokens_details") or {}
            cached = (details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
            return Usage(
                input_tokens=raw["prompt_tokens"] - cached,
                output_tokens=int(raw.get("completion_tokens") or 0),
                cache_read_input_tokens=cached,
            )
        prompt = sum(estimate_tokens(m["content"]) for m in body["messages"])
        return Usage(input_tokens=prompt, output_tokens=estimate_tokens(text))

    async def complete(self, req: ModelRequest) -> ModelReply:
        t0 = time.perf_counter()
        body = self._body(req, stream=False)
        resp = await self._post(body)
        try:
            data = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise ModelUnavailable("model_bad_response", f"unreadable model server answer: {exc}") from exc
        finally:
            resp.release()
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ModelUnavailable("model_bad_response", "model server answer has no choices") from exc
        usage = self._usage(data.get("usage"), body, text)
        return self._reply(text, usage, data.get("model") or self.model, finish, t0)

    async def stream(self, req: ModelRequest) -> AsyncIterator[StreamEvent]:
        """SSE `data:` lines until `data: [DONE]`; usage from the include_usage chunk."""
        t0 = time.perf_counter()
        body = self._body(req, stream=True)
        resp = await self._post(body)
        parts: list[str] = []
        finish: str | None = None
        raw_usage: Any = None
        model = self.model
        done = False

        def interrupted(message: str) -> ModelStreamInterrupted:
            return ModelStreamInterrupted(
                "model_stream_interrupted",
                f"the model stream broke after {sum(map(len, parts))} characters: {message}",
                partial_text="".join(parts),
            )

        try:
            async for line_bytes in resp.content:
                line = line_bytes.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    raise interrupted("unparseable event from the model server") from None
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    err = chunk["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise interrupted(f"model server error: {msg}")
                model = chunk.get("model") or model
                if chunk.get("usage"):
                    raw_usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        parts.append(text)
                        yield TextDelta(text)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise interrupted(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if done:
                resp.release()
            else:
                resp.close()  # unread body: drop the connection rather than reuse it
        if not done and finish is None:
            raise interrupted("the stream ended before [DONE]")
        text = "".join(parts)
        yield Completed(self._reply(text, self._usage(raw_usage, body, text), model, finish, t0))
