"""Build the configured model backend from `ModelSettings` (filled in by the config layer).

The anthropic and OpenAI-compatible modules are imported only when chosen: importing the
`anthropic` SDK costs about a second and ~50 MB of RSS, which a node on the offline
backend (or the config module, which imports `ModelSettings`) should not pay.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ccn_node.llm.base import ModelBackend
from ccn_node.llm.offline import OfflineBackend
from ccn_node.llm.pricing import PriceTable

__all__ = ["ModelSettings", "make_backend", "resolve_backend_name"]


class ModelSettings(msgspec.Struct, kw_only=True, frozen=True):
    """The `[model]` section. `api_key` is resolved by the config layer (file or
    `ANTHROPIC_API_KEY`), never read from the TOML; "auto" means anthropic when a key is
    present, else offline. `pricing` maps a model id to any of input / output /
    cache_write / cache_read in USD per million tokens."""

    backend: Literal["auto", "offline", "anthropic", "openai"] = "auto"
    model: str = "claude-sonnet-4-6"
    max_tokens: int = 1024
    base_url: str = ""
    api_key: str = ""
    timeout_s: float = 60.0
    max_retries: int = 2
    temperature: float | None = None
    pricing: dict[str, dict[str, float]] = {}
    offline_latency_ms: float = 0.0


def resolve_backend_name(settings: ModelSettings) -> Literal["offline", "anthropic", "openai"]:
    """The backend "auto" stands for, given the settings."""
    if settings.backend == "auto":
        return "anthropic" if settings.api_key else "offline"
    return settings.backend


def make_backend(settings: ModelSettings) -> ModelBackend:
    """One backend instance for the node's lifetime (close it with `aclose()`).

    Raises ValueError for settings no backend can use (bad pricing entry, negative limits);
    an anthropic backend without a key is built but reports `configured() == False`.
    """
    if settings.max_tokens < 1:
        raise ValueError(f"model.max_tokens must be >= 1, got {settings.max_tokens}")
    if settings.timeout_s <= 0:
        raise ValueError(f"model.timeout_s must be > 0, got {settings.timeout_s}")
    if settings.max_retries < 0:
        raise ValueError(f"model.max_retries must be >= 0, got {settings.max_retries}")
    prices = PriceTable(settings.pricing)
    name = resolve_backend_name(settings)
    if name == "anthropic":
        from ccn_node.llm.anthropic_backend import AnthropicBackend

        return AnthropicBackend(
            model=settings.model,
            api_key=settings.api_key,
            base_url=settings.base_url,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            temperature=settings.temperature,
            prices=prices,
        )
    if name == "openai":
        from ccn_node.llm.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(
            model=settings.model,
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            temperature=settings.temperature,
            prices=prices,
        )
    return OfflineBackend(latency_ms=settings.offline_latency_ms)
