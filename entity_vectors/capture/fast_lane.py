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
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from django.core.signals import request_started
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
    the fast lane is off. Where runs are inline (the embedded default: no workers), a process that
    serves web requests runs the pass itself, in a thread of its own (`local_lane`); other inline
    processes (a command, a test run with `task_always_eager`) leave the change to the next run.
    A pass that cannot be sent is logged: the change is in the log, for the poll or the next run."""
    if not conf.fast_lane():
        return
    if conf.inline_by_default():
        if local_lane.wanted():
            local_lane.kick_after_commit(domain)
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


# A pass of a domain run here: (domain) -> whether more changes wait than the pass took.
LocalRunner = Callable[[str], bool]


class LocalLane:
    """The fast lane of a web process with no workers (runs inline: the embedded default).

    A committed change starts a pass of its domain at once, in a thread of its own, off the
    request; the changes that come while it runs (or within ENTITY_VECTORS_FAST_LANE_DELAY after
    it) cost one more pass. So 100 edits in a second cost two passes here too, without Redis.
    """

    def __init__(self) -> None:
        self._runner: LocalRunner | None = None
        self._serving = False
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._again: set[str] = set()

    def use_runner(self, runner: LocalRunner | None) -> None:
        """Install how a pass runs in this process (the tasks install theirs when loaded)."""
        self._runner = runner

    def serving_requests(self, **_: Any) -> None:
        """This process serves web requests (a `request_started` receiver)."""
        self._serving = True

    def wanted(self) -> bool:
        """Whether this process runs passes itself: it serves requests, and tasks are not eager
        (a host's test settings: the test decides when its runs happen)."""
        from celery import current_app

        return self._serving and self._runner is not None and not current_app.conf.task_always_eager

    def kick_after_commit(self, domain: str) -> None:
        """Start (or extend) the domain's passes once the current transaction commits."""
        transaction.on_commit(lambda: self.kick(domain))

    def kick(self, domain: str) -> bool:
        """Start a pass of `domain` now, or have the running one followed by one more; True if one
        started."""
        with self._lock:
            if domain in self._busy:
                self._again.add(domain)
                return False
            self._busy.add(domain)
        threading.Thread(target=self._passes, args=(domain,), name=f"fast-lane {domain}", daemon=True).start()
        return True

    def idle(self) -> bool:
        """Whether no pass runs or waits in this process."""
        with self._lock:
            return not self._busy

    def _passes(self, domain: str) -> None:
        from django.db import connections

        try:
            while True:
                more = False
                try:
                    if self._runner is not None:
                        more = self._runner(domain)
                except Exception as exc:
                    log.warning("sync.fast_lane_failed", domain=domain, error=conf.redact(str(exc)))
                finally:
                    connections.close_all()  # this thread's connections only
                if not more:
                    time.sleep(conf.fast_lane_delay())  # the window: a burst's later edits wait for it
                with self._lock:
                    if domain not in self._again and not more:
                        self._busy.discard(domain)
                        return
                    self._again.discard(domain)
        except BaseException:
            with self._lock:
                self._busy.discard(domain)
                self._again.discard(domain)
            raise


local_lane = LocalLane()
request_started.connect(local_lane.serving_requests, dispatch_uid="entity_vectors.fast_lane.serving")
