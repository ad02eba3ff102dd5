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
        f"completion {run.completion_tokens}, embedding {run.embedding_tokens}, cost ${run.cost_usd:.4f}",
    ]
    if run.error:
        lines.append("  " + run.error.replace("\n", "\n  "))
    return "\n".join(lines)
