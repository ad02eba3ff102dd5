"""Loopback ports for tests: one that nothing listens on, one that takes no new connection."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released: connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose queue is full: a new connection is
    neither accepted nor refused (Linux drops its SYN), so connecting times out, as to a host
    behind a firewall that drops packets."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)  # the handshakes that fit in the queue complete
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# The most requests a run (or a batch's requests) sends to a host it cannot connect to, with the
# defaults: the 5 in flight at once (max_parallel_requests) and the retries of the first 2 failures,
# which may go out before the 3rd failure in a row (ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER)
# stops everything.
DEAD_HOST_REQUESTS = 5 + 3 - 1
