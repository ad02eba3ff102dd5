"""Parsers of one setting each: a Django setting of the same name wins over the environment.

A parser refuses what cannot work (text with control characters, a number that is not finite or
out of its range, a name off its pattern, a URL without a host, JSON of the wrong shape) with a
ConfigurationError of one line that names the setting and shows its value, shortened, with
passwords and known secrets redacted (a secret setting's value is never shown). Settings the
host's own modules read at import (app/settings.py, celeryconfig.py) are parsed by the same
functions: `or_default` gives such a module its default instead of a traceback, and the system
checks, which read the setting again, name the problem.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Collection
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

from django.conf import settings

from entity_vectors.exceptions import ConfigurationError, shorten

T = TypeVar("T")

# What a message shows of a value: enough to recognise it, never a wall of text.
SHOWN_CHARS = 60
# Integers longer than this many digits are out of every range below (and int() refuses 4,300+).
_MAX_DIGITS = 30
_INTEGER = re.compile(r"[+-]?[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A URL's `user:password@`. The scheme's length is bounded: unbounded, every start inside a long
# word would scan to its end, and a 100 KB value took minutes to redact.
_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]{0,31}://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]+)@", re.I
)
_SECRET_SETTINGS = (
    "OPENAI_API_KEY",
    "DJANGO_SECRET_KEY",
    "FLOWER_BASIC_AUTH",
    "ENTITY_VECTORS_METRICS_TOKEN",
)
_URL_SETTINGS = ("CLICKHOUSE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL")


def _raw(name: str) -> Any:
    """The Django setting `name` if defined, else the environment variable, else None."""
    if settings.configured and hasattr(settings, name):
        value = getattr(settings, name)
        if value is not None and value != "":
            return value
    env = os.environ.get(name)
    return env if env not in (None, "") else None


def redact(text: str) -> str:
    """`text` with every URL password and known secret replaced by `***`.

    Used wherever text may be printed or stored: errors, logs, SyncRun.error, check messages.
    """
    text = _CREDENTIALS.sub(lambda match: f"{match['scheme']}{match['user']}:***@", text)
    for name in _SECRET_SETTINGS:
        value = _raw(name)
        if isinstance(value, str) and len(value) >= 6:
            text = text.replace(value, "***")
            if ":" in value:  # user:password pairs: the password alone too
                secret = value.split(":", 1)[1]
                if len(secret) >= 6:
                    text = text.replace(secret, "***")
    for name in _URL_SETTINGS:
        value = _raw(name)
        if isinstance(value, str) and "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password and len(password) >= 4:
                text = text.replace(unquote(password), "***").replace(password, "***")
    return text


def shown(value: object) -> str:
    """How a message shows a setting's value: its repr, secrets redacted, cut to SHOWN_CHARS."""
    return shorten(redact(repr(value)), SHOWN_CHARS)  # redacted first: a cut password would not match


def problem(name: str, value: object, what: str, secret: bool = False) -> ConfigurationError:
    """The error of one setting: `NAME=<value> <what>` (a secret's value is left out)."""
    return ConfigurationError(f"{name} {what}" if secret else f"{name}={shown(value)} {what}")


def or_default(read: Callable[[], T], default: T, problems: list[str] | None = None) -> T:
    """`read()`, or `default` if the setting cannot work (its message added to `problems`).

    For modules that read settings at import (the host's settings, the Celery config): they load,
    and the system checks, which every process runs before it starts work, name the setting.
    """
    try:
        return read()
    except ConfigurationError as error:
        if problems is not None:
            problems.append(str(error))
        return default


# -- parsers of one value ---------------------------------------------------------------------


def parse_int(name: str, value: object, minimum: int, maximum: int) -> int:
    """A whole number from `minimum` to `maximum` (text of digits, or an int setting)."""
    number: int
    if isinstance(value, bool):
        raise problem(name, value, "is not an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        digits = value.strip()
        if len(digits.lstrip("+-")) > _MAX_DIGITS:
            bound = f"at least {minimum}" if digits.startswith("-") else f"at most {maximum}"
            raise problem(name, value, f"must be {bound}")
        number = int(digits)
    else:
        raise problem(name, value, "is not an integer")
    if number < minimum:
        raise problem(name, number, f"must be at least {minimum}")
    if number > maximum:
        raise problem(name, number, f"must be at most {maximum}")
    return number


def parse_float(name: str, value: object, minimum: float, maximum: float) -> float:
    """A finite number from `minimum` to `maximum` (NaN and infinities are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise problem(name, value, "is not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except OverflowError:  # an int or Decimal beyond any float
        bound = f"at least {minimum}" if value < 0 else f"at most {maximum}"  # type: ignore[operator]
        raise problem(name, value, f"must be {bound}") from None
    except ValueError:
        raise problem(name, value, "is not a number") from None
    if not math.isfinite(number):
        raise problem(name, value, "must be a finite number")
    if number < minimum:
        raise problem(name, number, f"must be at least {minimum:g}")
    if number > maximum:
        raise problem(name, number, f"must be at most {maximum:g}")
    return number


def parse_bool(name: str, value: object) -> bool:
    """true/false, yes/no, on/off, 1/0 (or a bool setting)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise problem(name, value, "is not a boolean (use true or false)")


def parse_text(name: str, value: object, max_length: int, spaces: bool = True, secret: bool = False) -> str:
    """Text without control characters (NUL, newlines, ...), not blank, at most `max_length` long,
    without surrounding whitespace; without any whitespace unless `spaces`."""
    if not isinstance(value, str):
        raise problem(name, value, "must be text", secret)
    if _CONTROL.search(value):
        raise problem(name, value, "must not contain control characters (NUL, newlines, ...)", secret)
    text = value.strip()
    if not text:
        raise problem(name, value, "must not be blank", secret)
    if len(text) > max_length:
        raise problem(name, value, f"is too long ({len(text)} characters; at most {max_length})", secret)
    if not spaces and any(character.isspace() for character in text):
        raise problem(name, value, "must not contain spaces", secret)
    return text


def parse_choice(name: str, value: object, choices: Collection[str], what: str) -> str:
    """One of `choices` (case-insensitive); `what` completes "is not ..." in the error."""
    text = parse_text(name, value, 100).lower()
    if text not in choices:
        raise problem(name, value, f"{what}; choose one of {', '.join(choices)}")
    return text


def parse_name(
    name: str, value: object, pattern: re.Pattern[str], description: str, max_length: int = 200
) -> str:
    """Text matching `pattern` (an identifier, a queue, a cluster): `description` says what fits."""
    text = parse_text(name, value, max_length)
    if not pattern.fullmatch(text):
        raise problem(name, value, f"must be {description}")
    return text


def parse_url(name: str, value: object, schemes: Collection[str], need_host: bool = True) -> SplitResult:
    """A URL of one of `schemes`, with a host (unless not `need_host`) and a valid port."""
    text = parse_text(name, value, 2000, spaces=False)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number from 0 to 65535
    except ValueError as error:
        raise problem(name, text, f"is not a valid URL ({error})") from None
    if parts.scheme.lower() not in schemes:
        raise problem(name, text, f"must be a URL of {' or '.join(f'{scheme}://' for scheme in schemes)}")
    if need_host and not parts.hostname:
        raise problem(name, text, "has no host")
    return parts


def parse_json_object(name: str, value: object, shape: str) -> dict[Any, Any]:
    """A JSON object (text in the environment, a dict as a Django setting); `shape` describes it."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as error:
            raise problem(name, value, f"is not JSON ({str(error)[:80]}); {shape}") from None
    if not isinstance(value, dict):
        raise problem(name, value, f"must be a JSON object: {shape}")
    return value


def parse_key(name: str, key: object, max_length: int = 200) -> str:
    """A key of a JSON object setting (a model name, an owner id): text without control characters."""
    if not isinstance(key, str | int) or isinstance(key, bool):
        raise problem(name, key, "has a key that is not text")
    return parse_text(f"{name}[{shown(key)}]", str(key), max_length, spaces=False)


def parse_dollars(name: str, value: object, maximum: Decimal) -> Decimal:
    """An amount of dollars from 0 to `maximum`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise problem(name, value, "is not an amount of dollars")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else str(value))
    except (InvalidOperation, ValueError):
        raise problem(name, value, "is not an amount of dollars") from None
    if not amount.is_finite():
        raise problem(name, value, "must be a finite amount of dollars")
    if amount < 0:
        raise problem(name, value, "must be 0 or more dollars")
    if amount > maximum:
        raise problem(name, value, f"must be at most {maximum} dollars")
    return amount


# Dollars as the package shows them everywhere (commands, the admin): four decimals, the cent's
# hundredth, enough for one small run; what a provider bills is kept to the millionth.
SHOWN_DOLLAR_PLACES = 4
_LEAST_SHOWN = Decimal(1).scaleb(-SHOWN_DOLLAR_PLACES)


def format_usd(amount: Decimal | float | int | str) -> str:
    """An amount of dollars as shown to people: `$0.0123`; an amount above 0 but below the last
    decimal `<$0.0001` (not `$0.0000`, which reads as free)."""
    value = Decimal(str(amount))
    shown = f"{value:.{SHOWN_DOLLAR_PLACES}f}"
    if value > 0 and Decimal(shown) == 0:
        return f"<${_LEAST_SHOWN}"
    return f"${shown}"


# -- readers of one setting (the value of `_raw`, else the default) ----------------------------


def _str(name: str, default: str, max_length: int = 200, spaces: bool = True) -> str:
    value = _raw(name)
    return default if value is None else parse_text(name, value, max_length, spaces)


def _int(name: str, default: int, minimum: int, maximum: int) -> int:
    value = _raw(name)
    return default if value is None else parse_int(name, value, minimum, maximum)


def _float(name: str, default: float, minimum: float, maximum: float) -> float:
    value = _raw(name)
    return default if value is None else parse_float(name, value, minimum, maximum)


def _bool(name: str, default: bool) -> bool:
    value = _raw(name)
    return default if value is None else parse_bool(name, value)


def _choice(name: str, default: str, choices: Collection[str], what: str) -> str:
    value = _raw(name)
    return default if value is None else parse_choice(name, value, choices, what)
