"""What provider calls cost: a price table per model, in US dollars per million tokens.

Defaults are OpenAI's list prices for the models this project uses (the Batch API halves them);
ENTITY_VECTORS_PRICES overrides or adds models, e.g.
`{"gpt-4.1-mini": {"input": 0.40, "output": 1.60}, "my-local-model": {"input": 0, "output": 0}}`.
A model not in the table costs nothing in the figures (and a warning says so once).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import structlog

from entity_vectors import conf

log = structlog.get_logger("entity_vectors")

MILLION = Decimal(1_000_000)
BATCH_DISCOUNT = Decimal("0.5")


@dataclass(frozen=True)
class Price:
    """Dollars per million input (prompt) and output (completion) tokens."""

    input: Decimal
    output: Decimal = Decimal(0)


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4.1": Price(Decimal("2.00"), Decimal("8.00")),
    "gpt-4.1-mini": Price(Decimal("0.40"), Decimal("1.60")),
    "gpt-4.1-nano": Price(Decimal("0.10"), Decimal("0.40")),
    "gpt-4o": Price(Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": Price(Decimal("0.15"), Decimal("0.60")),
    "text-embedding-3-small": Price(Decimal("0.02")),
    "text-embedding-3-large": Price(Decimal("0.13")),
    "text-embedding-ada-002": Price(Decimal("0.10")),
}


def prices() -> dict[str, Price]:
    """The price table: the defaults, overridden by ENTITY_VECTORS_PRICES."""
    table = dict(DEFAULT_PRICES)
    for model, (input_price, output_price) in conf.prices().items():
        table[model] = Price(input_price, output_price)
    return table


@lru_cache(maxsize=64)
def _warn_unpriced(model: str) -> None:
    log.warning("pricing.unknown_model", model=model, hint="add it to ENTITY_VECTORS_PRICES")


def cost(model: str, input_tokens: int, output_tokens: int = 0, batch: bool = False) -> Decimal:
    """Dollars for one request's tokens (half price through the Batch API)."""
    price = prices().get(model)
    if price is None:
        _warn_unpriced(model)
        return Decimal(0)
    amount = (price.input * input_tokens + price.output * output_tokens) / MILLION
    return amount * BATCH_DISCOUNT if batch else amount
