"""The explicit registry of entity configs, keyed by domain name."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import FieldDoesNotExist

from entity_vectors.core.entity_config import TRACKING_FIELDS, EntityConfig
from entity_vectors.exceptions import DuplicateDomainError, UnknownDomainError, echo

_DOMAIN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class EntityConfigRegistry:
    """Domain name -> config. Unknown: an error listing what exists. Duplicate: an error."""

    def __init__(self) -> None:
        self._configs: dict[str, EntityConfig[Any]] = {}
        self._lock = threading.Lock()

    def register(self, config: EntityConfig[Any]) -> EntityConfig[Any]:
        """Register `config`; registering the same config (or its class) again is a no-op."""
        domain = config.domain_name
        if not isinstance(domain, str) or not _DOMAIN.match(domain):
            raise ValueError(
                f"domain_name={domain!r} of {type(config).__name__} must be 1-64 lowercase letters, "
                "digits, '_' or '-', starting with a letter"
            )
        _check_model(config)
        with self._lock:
            existing = self._configs.get(domain)
            if existing is not None:
                if existing is config or type(existing) is type(config):
                    return existing
                raise DuplicateDomainError(
                    f"domain {domain!r} is already registered to {type(existing).__name__}; "
                    f"refusing to register {type(config).__name__} under the same name"
                )
            self._configs[domain] = config
        return config

    def unregister(self, domain: str) -> None:
        """Remove a domain (tests and plug-ins that are unloaded)."""
        with self._lock:
            self.get(domain)
            del self._configs[domain]

    def get(self, domain: str) -> EntityConfig[Any]:
        """The config of `domain`, or UnknownDomainError naming the registered ones."""
        try:
            return self._configs[domain]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._configs)) or "none"
            raise UnknownDomainError(f"unknown domain {echo(domain)}; registered domains: {known}") from None

    def domains(self) -> list[str]:
        """The registered domain names, sorted."""
        return sorted(self._configs)

    def configs(self) -> list[EntityConfig[Any]]:
        """The registered configs, by domain name."""
        return [self._configs[name] for name in self.domains()]

    @contextmanager
    def restored(self) -> Iterator[EntityConfigRegistry]:
        """Undo every registration made inside the block (for tests)."""
        with self._lock:
            saved = dict(self._configs)
        try:
            yield self
        finally:
            with self._lock:
                self._configs = saved


def _check_model(config: EntityConfig[Any]) -> None:
    model = config.model_class
    meta = getattr(model, "_meta", None)
    if meta is None:
        raise ValueError(f"{type(config).__name__}.model_class={model!r} is not a Django model")
    missing = []
    for name in (*TRACKING_FIELDS, "team"):
        try:
            meta.get_field(name)
        except FieldDoesNotExist:
            missing.append(name)
    if missing:
        raise ValueError(
            f"{type(config).__name__}.model_class {model.__name__} lacks {', '.join(missing)}: entity "
            "models need a team and the tracking fields of entity_vectors.models.VectorizedModel"
        )


default_registry = EntityConfigRegistry()


def register_entity_config(config: EntityConfig[Any]) -> EntityConfig[Any]:
    """Register a config in the default registry; its model's changes are recorded from now on."""
    from entity_vectors.capture.signals import watch_model

    registered = default_registry.register(config)
    watch_model(registered.domain_name, registered.model_class)
    return registered


def get_entity_config(domain: str) -> EntityConfig[Any]:
    """The registered config of `domain`; UnknownDomainError lists the registered ones."""
    return default_registry.get(domain)


def registered_domains() -> list[str]:
    """Every registered domain, sorted."""
    return default_registry.domains()
