"""The fast lane's sending half: once a change commits, one pass per domain is due at a time.

The pass itself is the workflow's (`workflow.fast_lane`), run by a task: this layer knows neither,
and sends through the sender the tasks install (`use_sender`). A Redis key debounces a burst: 100
edits of one entity in a second cost one pass and one summary. Without a sender (a process that
never loaded the tasks), a change waits in the change log for the next run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import structlog

from entity_vectors import conf

log = structlog.get_logger("entity_vectors")


# How long past its countdown a due pass keeps later changes from sending another.
DEBOUNCE_MARGIN_SECONDS = 30


def debounce_key(domain: str) -> str:
    return f"entity-vectors:fast-lane:{domain}"


def debounce(domain: str, hold: bool) -> bool:
    """Take (hold=True; False if already taken) or release the domain's "a pass is due" key.

    The key is released by the pass itself before it reads the change log, so a change committed
    after that read always sends a new pass; its expiry only matters if a pass never starts (a
    lost task), and only costs a duplicate pass when it ends too early.
    """
    import redis

    url = conf.limiter_url()
    if url is None:
        return True
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        if not hold:
            client.delete(debounce_key(domain))
            return True
        expiry = math.ceil(conf.fast_lane_delay()) + DEBOUNCE_MARGIN_SECONDS
        return bool(client.set(debounce_key(domain), "1", nx=True, ex=expiry))
    finally:
        client.close()


# Sends a fast-lane pass of a domain (installed by the tasks, which know how).
Sender = Callable[[str], None]
_sender: Sender | None = None


def use_sender(sender: Sender | None) -> None:
    """Install how a pass is sent (the tasks install theirs when they are loaded)."""
    global _sender
    _sender = sender


def kick_fast_lane(domain: str) -> bool:
    """Schedule a fast-lane pass for `domain` unless one is already due; True if one was sent."""
    if _sender is None or not debounce(domain, hold=True):
        return False
    _sender(domain)
    return True
