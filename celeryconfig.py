"""Every Celery setting of the project, each with the reason it is set.

Values come from the Django setting of the same name if there is one, else the environment, parsed
by entity_vectors.conf. A value that cannot work gives its default here, so that this module always
loads; the system checks name it, and a worker or beat refuses to start on it.
"""

from __future__ import annotations

import os

from entity_vectors import conf
from entity_vectors.conf import host
from entity_vectors.conf.readers import _raw, or_default
from entity_vectors.tasks.names import FAST_LANE_POLL_TASK, FAST_LANE_TASK
from entity_vectors.tasks.schedule import RegistrySchedule

_queue = or_default(conf.queue, conf.DEFAULT_QUEUE)

# Redis is both broker and result backend: chord counting is native (no polling unlock task).
# (A URL that cannot work is kept as given: Celery names it if anything tries to use it.)
broker_url = or_default(conf.broker_url, str(_raw("CELERY_BROKER_URL")))
result_backend = or_default(conf.result_backend, str(_raw("CELERY_RESULT_BACKEND")))
# A Redis broker redelivers a message unacknowledged for this long: it must exceed the longest
# task (hard time limit, ~31 min) plus the longest countdown we set (ENTITY_VECTORS_MAX_COUNTDOWN).
broker_transport_options = {
    "visibility_timeout": or_default(host.visibility_timeout, host.DEFAULT_VISIBILITY_TIMEOUT)
}
# A worker started without Redis says so in one line and exits (it checks before it connects),
# instead of retrying 100 times: compose starts workers once Redis is healthy and restarts them.
broker_connection_retry_on_startup = False
# Once connected, a lost broker is retried (2 s apart, up to 30 s, 100 times: about 45 minutes)
# before the worker exits and its supervisor restarts it; tasks are acked late, so none is lost.
broker_connection_retry = True
broker_connection_max_retries = 100

# Batch work goes to the queue the workers consume (`celery -A app worker -Q max-ai-task-queue`);
# the fast lane (its passes and poll) to a queue of its own, so a pass never waits behind the
# batch tasks of a large run. A worker of the batch queue consumes it too; a small dedicated one
# (`-Q max-ai-task-queue-fast`) keeps passes off the processes a backfill occupies.
task_default_queue = _queue
_fast_queue = or_default(conf.fast_queue, f"{_queue}-fast")
task_routes = {
    FAST_LANE_TASK: {"queue": _fast_queue},
    FAST_LANE_POLL_TASK: {"queue": _fast_queue},
    "ai-sync-*": {"queue": _queue},
}
# JSON only: task arguments are ids and primitives, never pickled objects.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
# Chord parts' results are small counts read once by the callback; a day is plenty.
result_expires = 24 * 60 * 60
# Tasks are idempotent: acknowledge after the work, and requeue if the worker process dies.
task_acks_late = True
task_reject_on_worker_lost = True
# With acks_late, a lost broker connection redelivers running tasks; stop them rather than run twice.
worker_cancel_long_running_tasks_on_connection_loss = True
# Long tasks: a worker takes one message at a time instead of hoarding a backlog.
worker_prefetch_multiplier = 1
# Flower (and `celery events`) show every task, from received to started to done.
worker_send_task_events = True
# No "task-sent" event: it carries the task's registered name, not the name the project gives it
# (`sync action · run 5a23ab01 · batch 3/12`), and one that reaches Flower after the worker's
# events (the sender and the worker publish on different connections) overwrites that name with
# the bare one. Tasks still queued show in Flower's Broker tab (queue lengths) instead.
task_send_sent_event = False
task_track_started = True
timezone = "UTC"
enable_utc = True
# Database connections outlive a task. Without this, Celery's Django fixup closes them before and
# after every task: each batch opened a new PostgreSQL connection and the server started a cold
# backend for it (through 2 worker processes, 60k entities: ~1,600 entities/s, ~2,000 kept).
# With it, the fixup closes them every this-many tasks only, and entity_vectors closes them
# around each task the way Django does around a request: older than CONN_MAX_AGE, or broken.
CELERY_DB_REUSE_MAX = or_default(host.db_reuse_max, host.DEFAULT_DB_REUSE_MAX)

# The beat schedule hook: one entry per registered domain, each with an expiry, and the sweeper,
# read from the registry whenever beat_schedule is read, so Celery's default scheduler and
# django-celery-beat's DatabaseScheduler (`celery -A app beat -S django`) both see them. Importing
# it also makes a starting beat check the settings before it reads them (one line, not a traceback).
beat_schedule = RegistrySchedule()
# Celery's default scheduler keeps its state under var/, beside the other local data.
_default_schedule_file = os.path.join("var", "celerybeat-schedule")
beat_schedule_filename = or_default(
    lambda: host.beat_schedule_filename(_default_schedule_file), _default_schedule_file
)
