"""Typed readers of one setting: a Django setting of the same name wins over the environment."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

from entity_vectors.exceptions import ConfigurationError


def _raw(name: str) -> Any:
    """The Django setting `name` if defined, else the environment variable, else None."""
    if settings.configured and hasattr(settings, name):
        value = getattr(settings, name)
        if value is not None and value != "":
            return value
    env = os.environ.get(name)
    return env if env not in (None, "") else None


def _str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None else str(value)


def _int(name: str, default: int, minimum: int = 0) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise ConfigurationError(f"{name}={number} must be at least {minimum}")
    return number


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} is not a number") from None
    if number < minimum:
        raise ConfigurationError(f"{name}={number} must be at least {minimum}")
    return number


def _bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={value!r} is not a boolean (use true or false)")
