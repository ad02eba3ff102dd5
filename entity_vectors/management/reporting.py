"""Text output shared by the management commands: progress bars and run summaries."""

from __future__ import annotations

from collections.abc import Callable

from entity_vectors.models import SyncRun


class ProgressBar:
    """A one-line progress bar on a TTY; one line per change elsewhere (logs, CI)."""

    def __init__(self, write: Callable[[str], None], tty: bool, label: str, width: int = 30) -> None:
        self._write = write
        self._label = label
        self._width = width
        self._last: tuple[int, int, int] | None = None
        self._tty = tty

    def update(self, done: int, failed: int, total: int) -> None:
        """Show `done` (and `failed`) of `total` batches."""
        state = (done, failed, total)
        if state == self._last:
            return
        self._last = state
        finished = done + failed
        filled = self._width if total == 0 else int(self._width * finished / total)
        bar = "#" * filled + "." * (self._width - filled)
        failures = f", {failed} failed" if failed else ""
        line = f"{self._label:<18} [{bar}] {finished}/{total} batches{failures}"
        self._write("\r" + line if self._tty else line + "\n")

    def close(self) -> None:
        """End the bar's line."""
        if self._tty and self._last is not None:
            self._write("\n")


def describe_run(run: SyncRun) -> str:
    """One run's outcome and counts on a few lines."""
    duration = ""
    if run.finished_at and run.started_at:
        duration = f" in {(run.finished_at - run.started_at).total_seconds():.1f}s"
    lines = [
        f"{run.domain}: {run.status}{duration} (run {run.id}, embedding version {run.inputs.get('embedding_version', '?')})",
        f"  selected {run.selected}, summarized {run.summarized} (reused {run.summaries_reused}, "
        f"failed {run.summary_failures}), embedded {run.embedded}, inserted {run.inserted}, "
        f"tombstoned {run.tombstoned}, skipped {run.skipped}",
        f"  provider requests {run.provider_requests}, tokens: prompt {run.prompt_tokens}, "
        f"completion {run.completion_tokens}, embedding {run.embedding_tokens}",
    ]
    if run.error:
        lines.append("  " + run.error.replace("\n", "\n  "))
    return "\n".join(lines)
