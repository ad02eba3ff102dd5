"""The fast lane's sending half: once a change commits, a pass of its domain goes out at once.

Leading edge, then one trailing pass: the first change of a quiet domain sends a pass at once and
opens a window of ENTITY_VECTORS_FAST_LANE_DELAY seconds; the changes that come within the window
send one more pass, due when the window ends. 100 edits of one entity in a second cost two
passes, so at most two summaries, and the first edit is not held back by a wait.

The pass itself is the workflow's (`workflow.fast_lane`), run by a task: this layer knows neither,
and sends through the sender the tasks install (`use_sender`). Without a sender (a process that
never loaded the tasks), a change waits in the change log for the next run or the poll.

The window and the trailing pass live in Redis (the limiter's), so every process of a domain
shares them. Without Redis every change sends a pass at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import structlog
from django.db import transaction

from entity_vectors import conf

log = structlog.get_logger("entity_vectors")

# How long past its due time a trailing pass keeps later changes from sending another (a lost task).
TRAILING_MARGIN_SECONDS = 30


def _key(domain: str, what: str) -> str:
    return f"entity-vectors:fast-lane:{domain}:{what}"


def _redis() -> Any:
    url = conf.limiter_url()
    if url is None:
        return None
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


# Sends a pass of a domain: (domain, seconds from now, whether it is the trailing pass).
Sender = Callable[[str, float, bool], None]
_sender: Sender | None = None


def use_sender(sender: Sender | None) -> None:
    """Install how a pass is sent (the tasks install theirs when they are loaded)."""
    global _sender
    _sender = sender


def kick_fast_lane(domain: str) -> bool:
    """A change of `domain` committed: send a pass now if its window is closed, else the window's
    trailing pass unless it is scheduled already. True if a pass was sent."""
    if _sender is None:
        return False
    client = _redis()
    if client is None:
        _sender(domain, 0.0, False)
        return True
    window = conf.fast_lane_delay()
    try:
        if window <= 0 or client.set(_key(domain, "window"), "1", nx=True, px=max(int(window * 1000), 1)):
            _sender(domain, 0.0, False)  # the leading edge: at once
            return True
        due = max(int(client.pttl(_key(domain, "window"))), 0) / 1000
        if not client.set(_key(domain, "trailing"), "1", nx=True, ex=math.ceil(due) + TRAILING_MARGIN_SECONDS):
            return False  # a trailing pass is due already: it takes this change too
        _sender(domain, due, True)
        return True
    finally:
        client.close()


def kick_after_commit(domain: str) -> None:
    """Send a pass of `domain` once the current transaction commits (once per transaction), unless
    the fast lane is off or runs are inline (the embedded default: the next run takes the change).
    A pass that cannot be sent is logged: the change is in the log, for the poll or the next run."""
    if not conf.fast_lane() or conf.inline_by_default():
        return
    current = transaction.get_connection()
    if any(getattr(entry[1], "fast_lane_domain", None) == domain for entry in current.run_on_commit):
        return

    def kick() -> None:
        try:
            kick_fast_lane(domain)
        except Exception as exc:
            log.warning("sync.fast_lane_unavailable", domain=domain, error=conf.redact(str(exc)))

    kick.fast_lane_domain = domain  # type: ignore[attr-defined]
    transaction.on_commit(kick)


def trailing_pass_started(domain: str) -> None:
    """The trailing pass starts (before it reads the change log): a change after the read sends
    another."""
    client = _redis()
    if client is not None:
        try:
            client.delete(_key(domain, "trailing"))
        finally:
            client.close()
