"""Pricing (cost formula, dated model ids, overrides, unknown models) and the backend factory."""

from __future__ import annotations

import pytest

from ccn_node.llm.anthropic_backend import AnthropicBackend
from ccn_node.llm.base import Usage
from ccn_node.llm.factory import ModelSettings, make_backend, resolve_backend_name
from ccn_node.llm.offline import OfflineBackend
from ccn_node.llm.openai_compat import OpenAICompatBackend
from ccn_node.llm.pricing import DEFAULT_PRICES, PriceTable, cost_usd

pytestmark = pytest.mark.timeout(30)

USAGE = Usage(
    input_tokens=1_000,
    output_tokens=500,
    cache_creation_input_tokens=2_000,
    cache_read_input_tokens=10_000,
)


def test_cost_formula() -> None:
    # Sonnet 4.6: $3 in, $15 out, $3.75 5-min cache write, $0.30 cache read per MTok
    expected = (1_000 * 3 + 2_000 * 3.75 + 10_000 * 0.30 + 500 * 15) / 1e6
    assert cost_usd("claude-sonnet-4-6", USAGE) == pytest.approx(expected)
    cost = PriceTable().cost("claude-sonnet-4-6", USAGE)
    assert cost.priced and cost.usd == pytest.approx(expected)


def test_standard_cache_multipliers() -> None:
    for model in ("claude-opus-4-6", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"):
        p = DEFAULT_PRICES[model]
        assert p.cache_write == pytest.approx(1.25 * p.input)
        assert p.cache_read == pytest.approx(0.1 * p.input)


def test_dated_and_suffixed_ids_resolve_other_versions_do_not() -> None:
    table = PriceTable()
    assert table.lookup("claude-sonnet-4-5-20250929") == DEFAULT_PRICES["claude-sonnet-4-5"]
    assert table.lookup("claude-opus-4-20250514") == DEFAULT_PRICES["claude-opus-4"]
    assert table.lookup("claude-opus-4-1@20250805") == DEFAULT_PRICES["claude-opus-4-1"]
    assert table.lookup("claude-sonnet-5-5[1m]") == DEFAULT_PRICES["claude-sonnet-5-5"]
    assert table.lookup("claude-opus-4-5") == DEFAULT_PRICES["claude-opus-4-5"]
    assert table.lookup("claude-fable-5-2") is None  # not silently priced as claude-fable-5
    assert table.lookup("claude-opus-4-10") is None


def test_unknown_model_costs_zero_visibly() -> None:
    cost = PriceTable().cost("some-local-model", USAGE)
    assert cost.usd == 0.0 and cost.priced is False
    assert cost_usd("some-local-model", USAGE) == 0.0


def test_overrides() -> None:
    table = PriceTable(
        {
            "claude-sonnet-4-6": {"input": 2.0},  # partial: other prices kept
            "my-llama": {"input": 0.0, "output": 0.0},  # a free local model is priced
        }
    )
    p = table.lookup("claude-sonnet-4-6")
    assert p is not None and p.input == 2.0 and p.output == 15.0 and p.cache_read == 0.30
    llama = table.cost("my-llama", USAGE)
    assert llama.priced and llama.usd == 0.0
    new = PriceTable({"x-model": {"input": 4.0, "output": 8.0}}).lookup("x-model")
    assert new is not None and new.cache_write == 5.0 and new.cache_read == pytest.approx(0.4)


@pytest.mark.parametrize(
    "bad",
    [
        {"m": {"inputs": 1.0}},
        {"m": {"input": -1.0, "output": 1.0}},
        {"m": {"input": 1.0}},
        {"claude-sonnet-4-6": {"output": "cheap"}},
    ],
)
def test_bad_overrides_name_the_model_and_key(bad: dict) -> None:
    with pytest.raises(ValueError, match="pricing for"):
        PriceTable(bad)


def test_factory_auto_and_explicit() -> None:
    assert resolve_backend_name(ModelSettings()) == "offline"
    assert isinstance(make_backend(ModelSettings()), OfflineBackend)
    with_key = make_backend(ModelSettings(api_key="sk-test", base_url="http://127.0.0.1:9"))
    assert isinstance(with_key, AnthropicBackend) and with_key.configured()
    no_key = make_backend(ModelSettings(backend="anthropic"))
    assert isinstance(no_key, AnthropicBackend) and not no_key.configured()
    local = make_backend(ModelSettings(backend="openai", model="qwen2.5", base_url="http://127.0.0.1:11434"))
    assert isinstance(local, OpenAICompatBackend) and local.base_url.endswith("/v1")
    slow = make_backend(ModelSettings(backend="offline", offline_latency_ms=5.0))
    assert isinstance(slow, OfflineBackend) and slow.latency_ms == 5.0


def test_factory_passes_pricing_and_rejects_bad_settings() -> None:
    backend = make_backend(
        ModelSettings(backend="openai", model="qwen2.5", pricing={"qwen2.5": {"input": 0, "output": 0}})
    )
    assert backend.describe()["priced"] is True
    with pytest.raises(ValueError, match="max_tokens"):
        make_backend(ModelSettings(max_tokens=0))
    with pytest.raises(ValueError, match="pricing for"):
        make_backend(ModelSettings(pricing={"m": {"bogus": 1.0}}))


def test_settings_decode_from_toml_shaped_dict() -> None:
    import msgspec

    raw = {"backend": "anthropic", "model": "claude-opus-4-6", "pricing": {"claude-opus-4-6": {"input": 5}}}
    settings = msgspec.convert(raw, ModelSettings)
    assert settings.pricing == {"claude-opus-4-6": {"input": 5.0}}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"backend": "gpt"}, ModelSettings)


def test_offline_path_does_not_import_the_sdk() -> None:
    """The anthropic SDK costs ~1 s and ~50 MB to import; an offline node must not pay it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ccn_node.llm.factory import ModelSettings, make_backend\n"
        "make_backend(ModelSettings())\n"
        "print('anthropic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True)
    assert out.stdout.strip() == "False"
