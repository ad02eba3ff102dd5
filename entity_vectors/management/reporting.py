"""Text output shared by the management commands: progress bars and run summaries."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from entity_vectors import conf
from entity_vectors.management.base import OneLineChecks
from entity_vectors.models import SyncRun
from entity_vectors.workflow.progress import RunWait, run_wait

POLL_SECONDS = 0.5
NO_WORKER_WARNING_SECONDS = 30.0


class ProgressBar:
    """A one-line progress bar on a TTY; one line per change elsewhere (logs, CI).

    While the run waits (a batch's start time, a retry's backoff), the bar says so: on a TTY after
    the bar, counting down; elsewhere once per wait, on a line of its own.
    """

    def __init__(self, write: Callable[[str], None], tty: bool, label: str, width: int = 30) -> None:
        self._write = write
        self._label = label
        self._width = width
        self._last: tuple[int, int, int] | None = None
        self._tty = tty
        self._shown = 0  # characters of the TTY line, to blank what a shorter line leaves
        self._wait: tuple[object, ...] | None = None

    def update(self, done: int, failed: int, total: int) -> None:
        """Show `done` (and `failed`) of `total` batches."""
        state = (done, failed, total)
        if state == self._last:
            return
        self._last = state
        self._show(self._bar(state))

    def waiting(self, wait: RunWait) -> None:
        """Say what the run waits for: "batch 3/14 starts in 48 s: delay_between_batches"."""
        text = wait.describe()
        if self._tty:
            self._show(f"{self._bar(self._last or (0, 0, wait.total))}  {text}")
            return
        key = (*wait.key, wait.attempt)
        if key != self._wait:
            self._wait = key
            self._write(f"{self._label:<18} {text}\n")

    def _bar(self, state: tuple[int, int, int]) -> str:
        done, failed, total = state
        if total == 0:  # a run with nothing to do: an empty bar, not a full one at "0/0"
            return f"{self._label:<18} [{'.' * self._width}] nothing to do"
        finished = done + failed
        filled = int(self._width * finished / total)
        bar = "#" * filled + "." * (self._width - filled)
        failures = f", {failed} failed" if failed else ""
        return f"{self._label:<18} [{bar}] {finished}/{total} batches{failures}"

    def _show(self, line: str) -> None:
        if not self._tty:
            self._write(line + "\n")
            return
        padding = " " * max(self._shown - len(line), 0)
        self._shown = len(line)
        self._write("\r" + line + padding)

    def close(self) -> None:
        """End the bar's line."""
        if self._tty and self._shown:
            self._write("\n")


def landed_nothing(run: SyncRun) -> bool:
    """A run that had work, did not fully succeed, and wrote nothing to ClickHouse."""
    troubled = run.status in (SyncRun.Status.PARTIAL, SyncRun.Status.FAILED)
    return troubled and run.selected > 0 and run.inserted + run.tombstoned == 0


def describe_run(run: SyncRun) -> str:
    """One run's outcome and counts on a few lines."""
    duration = ""
    if run.finished_at and run.started_at:
        duration = f" in {(run.finished_at - run.started_at).total_seconds():.1f}s"
    versions = ", ".join(str(item["version"]) for item in (run.versions or {}).get("write", [])) or "?"
    where = "in this process" if run.mode == SyncRun.Mode.INLINE else "on the workers"
    lines = [
        f"{run.domain}: {run.status}{duration} {where} (run {run.id}, embedding version {versions})",
        f"  selected {run.selected}, summarized {run.summarized} (reused {run.summaries_reused}, "
        f"failed {run.summary_failures}), embedded {run.embedded} (vectors reused {run.vectors_reused}, "
        f"failed {run.embedding_failures}), inserted {run.inserted}, tombstoned {run.tombstoned}, "
        f"skipped {run.skipped}, parked {run.parked}",
        f"  provider requests {run.provider_requests}, tokens: prompt {run.prompt_tokens}, "
        f"completion {run.completion_tokens}, embedding {run.embedding_tokens}, "
        f"cost {conf.format_usd(run.cost_usd)}",
    ]
    if run.error:
        lines.append("  " + run.error.replace("\n", "\n  "))
    return "\n".join(lines)


class FollowingCommand(OneLineChecks, BaseCommand):
    """A command that shows a run's progress, and follows a run queued for the workers to its end."""

    def progress_bar(self, label: str) -> ProgressBar:
        """A progress bar on stdout (progress is not an error: unstyled, not on stderr)."""

        def write(text: str) -> None:
            self.stdout.write(text, ending="")
            self.stdout.flush()

        return ProgressBar(write, self.stdout.isatty(), label)

    def follow(self, domain: str, task_id: str, timeout: float | None) -> SyncRun:
        """Wait for the run that task `task_id` records, showing its progress (and what it waits
        for), until it ends.

        An entry task that failed before recording its run is reported at once; no run after a
        while is a hint that no worker consumes the queue; `timeout` ends the wait with an error.
        """
        started = time.monotonic()
        warned = False
        bar = self.progress_bar(domain)
        try:
            while True:
                run = SyncRun.objects.filter(task_id=task_id).first()
                if run is not None:
                    bar.update(run.batches_done, run.batches_failed, run.batches_total)
                    if run.status != SyncRun.Status.RUNNING:
                        return run
                    wait = run_wait(run)
                    if wait is not None:
                        bar.waiting(wait)
                else:
                    _raise_if_task_failed(domain, task_id)
                waited = time.monotonic() - started
                if run is None and not warned and waited > NO_WORKER_WARNING_SECONDS:
                    warned = True
                    self.stderr.write(
                        f"{domain}: no run after {waited:.0f}s; is a worker consuming queue {conf.queue()}? "
                        f"(celery -A app worker -Q {conf.queue()})"
                    )
                if timeout is not None and waited > timeout:
                    raise CommandError(f"{domain}: gave up waiting after {timeout:.0f}s (task {task_id})")
                time.sleep(POLL_SECONDS)
        finally:
            bar.close()


def _raise_if_task_failed(domain: str, task_id: str) -> None:
    """An entry task that failed before recording its run (a worker saw an error) is reported."""
    from celery.result import AsyncResult

    try:
        result: AsyncResult[Any] = AsyncResult(task_id)
        if result.state != "FAILURE":
            return
        error = result.result
    except Exception:  # the result backend is unreachable: keep waiting for the run row
        return
    raise CommandError(f"{domain}: the run could not start: {conf.redact(f'{type(error).__name__}: {error}')}")
