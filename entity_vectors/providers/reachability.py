"""Whether the provider can be reached at all: a run stops sending to a host it cannot connect to.

A connection failure (refused, no such host, no connection within the connect timeout) says
nothing about the request and everything about the setup: a wrong OPENAI_BASE_URL, a server that
is down, a network that is gone. After ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER of them in a row,
the breaker opens: no more requests go to that host for as long as the breaker lives (one run, or
one batch task of a distributed run), and every request still waiting gets ProviderUnreachable,
which names the host and says what to check. Any answer from the server (a 200, a 429, a 5xx)
closes the count: those keep their retries with backoff.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from entity_vectors import conf
from entity_vectors.exceptions import ProviderUnreachable

# The default ports of the URL schemes a base URL may have.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_of(base_url: str) -> str:
    """`host:port` of a base URL (the scheme's default port if none is given)."""
    parts = urlsplit(base_url)
    host = parts.hostname or base_url
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port that is not a number: the URL's own text says enough
        port = None
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port else shown


def connection_failure(error: BaseException) -> str | None:
    """What kept a request from reaching the server at all ("connection refused", "no such host",
    "no connection within 5 s"), or None if the server was reached (a read timeout, a dropped
    answer, an HTTP status: those are retried as before)."""
    chain: list[BaseException] = []
    item: BaseException | None = error
    while item is not None and len(chain) < 20:
        chain.append(item)
        item = item.__cause__ or item.__context__
    names = {type(item).__name__ for item in chain}
    if any(isinstance(item, ConnectionRefusedError) for item in chain):
        return "connection refused"
    if any(isinstance(item, socket.gaierror) for item in chain):
        return "DNS lookup failed"
    if "ConnectTimeout" in names:
        return f"no connection within {conf.provider_connect_timeout():g} s"
    if "ConnectError" in names:
        detail = next((str(item) for item in reversed(chain) if str(item)), "")
        return f"cannot connect: {' '.join(detail.split())[:120]}" if detail else "cannot connect"
    return None


@dataclass
class _HostState:
    failures: int = 0
    reason: str = ""
    open: bool = False


class ConnectionBreaker:
    """Counts connection failures in a row per host; after `threshold`, nothing more is sent there.

    Lives as long as what it protects (a run, a batch task); its requests may run concurrently
    on one event loop, or in turn on several (one per batch): plain state, no locks needed.
    """

    def __init__(self, threshold: int | None = None) -> None:
        self._threshold = threshold if threshold is not None else conf.provider_unreachable_after()
        self._hosts: dict[str, _HostState] = {}

    def check(self, base_url: str) -> None:
        """Raise ProviderUnreachable if the breaker is open for `base_url`'s host."""
        state = self._hosts.get(host_of(base_url))
        if state is not None and state.open:
            raise self.error(base_url)

    def failed(self, base_url: str, reason: str) -> None:
        """Count a connection failure; raise ProviderUnreachable once there were `threshold` in a row."""
        state = self._hosts.setdefault(host_of(base_url), _HostState())
        state.failures += 1
        state.reason = reason
        if state.failures >= self._threshold:
            state.open = True
        if state.open:
            raise self.error(base_url)

    def answered(self, base_url: str) -> None:
        """The server answered (whatever it said): the failures in a row start again from 0."""
        state = self._hosts.get(host_of(base_url))
        if state is not None and not state.open:
            state.failures = 0

    def error(self, base_url: str) -> ProviderUnreachable:
        """The one line that says which host cannot be reached, why, and what to check."""
        host = host_of(base_url)
        state = self._hosts.get(host, _HostState())
        configured = conf.openai_base_url()
        check = f"check OPENAI_BASE_URL ({configured})" if configured else "check the network, or OPENAI_BASE_URL"
        return ProviderUnreachable(
            f"the provider at {host} is unreachable ({state.reason}) after {state.failures} attempts "
            f"in a row; {check}",
            host=host,
            reason=state.reason,
        )
