"""Checks of command options that argparse's types let through: each refusal is a CommandError naming
the option and its value (shortened), before the command reads or writes anything.

`type=int` takes 10**30, which the database then refuses; `type=float` takes nan and inf; text
takes NUL bytes, which PostgreSQL refuses. A database error is not an answer to a typo.
"""

from __future__ import annotations

import math

from django.core.management.base import CommandError

from entity_vectors.exceptions import echo

# The largest key a PostgreSQL bigint (a team id, an auto primary key) holds.
MAX_DATABASE_ID = 2**63 - 1
# An embedding version is UInt32 in ClickHouse.
MAX_EMBEDDING_VERSION = 2**32 - 1


def whole_number(option: str, value: int | None, low: int, high: int) -> int | None:
    """`value` if it is from `low` to `high` (None stays None)."""
    if value is not None and not low <= value <= high:
        raise CommandError(f"{option}={echo(value)}: must be from {low} to {high}")
    return value


def seconds(option: str, value: float | None, high: float = 7 * 24 * 3600) -> float | None:
    """A finite number of seconds above 0 and at most `high` (None stays None)."""
    if value is not None and not (math.isfinite(value) and 0 < value <= high):
        raise CommandError(f"{option}={value}: must be a number of seconds above 0 and at most {high:g}")
    return value


def fraction(option: str, value: float | None) -> float | None:
    """A finite number from 0 to 1 (None stays None)."""
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise CommandError(f"{option}={value}: must be a number from 0 to 1")
    return value


def text(option: str, value: str | None, max_length: int = 255) -> str | None:
    """Printable text (no NUL or other control characters), at most `max_length` long."""
    if value is not None and (not value.isprintable() or not 0 < len(value) <= max_length):
        raise CommandError(
            f"{option}={echo(value)}: must be 1 to {max_length} printable characters (no NUL or control characters)"
        )
    return value
