"""USD cost of a model call from its usage, by a pricing table the config can override.

Prices are USD per million tokens. Sources: platform.claude.com/docs/en/about-claude/pricing
and the per-model overview pages (retrieved for this release); Anthropic changes prices, so
every entry can be replaced from `ccn.toml` ([model.pricing."<model>"]) without a release.
An unknown model costs 0.0 with `priced=False`, so "free" and "unknown" never look alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from ccn_node.llm.base import Usage

__all__ = ["DEFAULT_PRICES", "Cost", "Price", "PriceTable", "cost_usd"]


class Price(msgspec.Struct, frozen=True):
    """USD per million tokens; `cache_write` is the 5-minute (default TTL) write price."""

    input: float
    output: float
    cache_write: float
    cache_read: float


class Cost(msgspec.Struct, frozen=True):
    """A computed cost and whether the model was in the table at all."""

    usd: float
    priced: bool


def _standard(input_: float, output: float) -> Price:
    """Anthropic's standard multipliers: 5-min cache write 1.25x input, cache read 0.1x input."""
    return Price(input_, output, round(input_ * 1.25, 6), round(input_ * 0.1, 6))


# Keys are model ids; a dated id ("claude-sonnet-4-5-20250929") or one with a "[1m]" or
# "@date" suffix resolves to its key. Another version ("claude-fable-5-2") does not resolve
# to "claude-fable-5": it stays unpriced until the table or the config names it.
DEFAULT_PRICES: dict[str, Price] = {
    # Claude 5 family (official pricing page and model overviews). Fable/Mythos 5.1 cache
    # hits are 0.025x input; Opus/Sonnet 5.5 cache hits 0.05x input.
    "claude-fable-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-mythos-5-1": Price(10.0, 50.0, 12.50, 0.25),
    "claude-fable-5": _standard(10.0, 50.0),
    "claude-mythos-5": _standard(10.0, 50.0),
    "claude-opus-5-5": Price(4.0, 20.0, 5.0, 0.20),
    "claude-opus-5": _standard(5.0, 25.0),
    "claude-sonnet-5-5": Price(2.0, 10.0, 2.50, 0.20),
    "claude-sonnet-5": Price(2.0, 10.0, 2.50, 0.20),
    # Haiku 5.5 is billed in two bands by prompt length; this is the <=100k-token band.
    "claude-haiku-5-5": Price(0.10, 0.50, 0.125, 0.01),
    # Claude 4 family.
    "claude-opus-4-8": _standard(5.0, 25.0),
    "claude-opus-4-7": _standard(5.0, 25.0),
    "claude-opus-4-6": _standard(5.0, 25.0),
    "claude-opus-4-5": _standard(5.0, 25.0),
    "claude-opus-4-1": _standard(15.0, 75.0),
    "claude-opus-4": _standard(15.0, 75.0),
    "claude-opus-4-0": _standard(15.0, 75.0),
    "claude-sonnet-4-6": _standard(3.0, 15.0),
    "claude-sonnet-4-5": _standard(3.0, 15.0),
    "claude-sonnet-4": _standard(3.0, 15.0),
    "claude-sonnet-4-0": _standard(3.0, 15.0),
    "claude-haiku-4-5": _standard(1.0, 5.0),
    # Claude 3.x (deprecated or retired, kept so old ledgers can be re-costed).
    "claude-3-7-sonnet": _standard(3.0, 15.0),
    "claude-3-5-haiku": Price(0.80, 4.0, 1.0, 0.08),
    "claude-3-opus": _standard(15.0, 75.0),
    "claude-3-haiku": Price(0.25, 1.25, 0.30, 0.03),
}

_SUFFIX = re.compile(r"^(.+?)(?:-\d{8})?(?:\[[^\]]*\]|@.*|-v\d+(?::\d+)?)?$")
_FIELDS = ("input", "output", "cache_write", "cache_read")


def _price_from_override(model: str, base: Price | None, values: Mapping[str, float]) -> Price:
    """Merge a config entry onto the default; a new model needs at least input and output."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"pricing for {model!r}: unknown key {unknown[0]!r} (expected one of {', '.join(_FIELDS)})"
        )
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"pricing for {model!r}: {key} must be a number >= 0, got {value!r}")
    if base is None:
        missing = [k for k in ("input", "output") if k not in values]
        if missing:
            raise ValueError(f"pricing for {model!r}: new model needs {' and '.join(missing)}")
        base = _standard(float(values["input"]), float(values["output"]))
    merged = {f: float(values.get(f, getattr(base, f))) for f in _FIELDS}
    return Price(**merged)


class PriceTable:
    """The defaults plus the config's overrides, with prefix lookup for dated model ids."""

    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._prices: dict[str, Price] = dict(DEFAULT_PRICES)
        for model, values in (overrides or {}).items():
            self._prices[model] = _price_from_override(model, self._prices.get(model), values)

    def lookup(self, model: str) -> Price | None:
        """Exact id, else the id with a date / "[1m]" / "@…" suffix removed."""
        if model in self._prices:
            return self._prices[model]
        match = _SUFFIX.match(model)
        if match is not None:
            return self._prices.get(match.group(1))
        return None

    def cost(self, model: str, usage: Usage) -> Cost:
        """(input*in + cache_creation*write + cache_read*read + output*out) / 1e6 USD."""
        price = self.lookup(model)
        if price is None:
            return Cost(0.0, False)
        usd = (
            usage.input_tokens * price.input
            + usage.cache_creation_input_tokens * price.cache_write
            + usage.cache_read_input_tokens * price.cache_read
            + usage.output_tokens * price.output
        ) / 1_000_000
        return Cost(round(usd, 9), True)


def cost_usd(
    model: str, usage: Usage, overrides: Mapping[str, Mapping[str, float]] | None = None
) -> float:
    """Cost of one call in USD; 0.0 for a model not in the table (see `PriceTable.cost`)."""
    return PriceTable(overrides).cost(model, usage).usd
