"""`manage.py sync_entity_vectors`: start a run of a domain (or every domain), optionally follow it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from entity_vectors import conf
from entity_vectors.exceptions import EntityVectorsError
from entity_vectors.inputs import SyncEntityVectorsInputs
from entity_vectors.management.reporting import ProgressBar, describe_run
from entity_vectors.models import SyncRun
from entity_vectors.registry import registered_domains

POLL_SECONDS = 0.5
NO_WORKER_WARNING_SECONDS = 30.0


class Command(BaseCommand):
    help = (
        "Start a vectorization run of a domain (or --all). On the embedded store the run executes "
        "in this process; with a ClickHouse server it is queued for the Celery workers. --wait "
        "follows the run with a progress bar and prints its counts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--domain", action="append", dest="domains", default=[], help="a domain (repeatable)"
        )
        parser.add_argument("--all", action="store_true", help="every registered domain")
        parser.add_argument("--embedding-version", type=int, default=None, help="default: the current one")
        parser.add_argument("--start-dt", default=None, help="ISO 8601; default: now")
        parser.add_argument("--summarize-batch-size", type=int, default=None)
        parser.add_argument("--embed-batch-size", type=int, default=None)
        parser.add_argument("--max-parallel-requests", type=int, default=None)
        parser.add_argument("--insert-batch-size", type=int, default=None)
        parser.add_argument("--delay-between-batches", type=float, default=None, help="seconds")
        parser.add_argument("--wait", action="store_true", help="follow the run(s) and print their counts")
        parser.add_argument(
            "--eager", action="store_true", help="run in this process even when workers could take it"
        )
        parser.add_argument(
            "--timeout", type=float, default=None, help="give up waiting after this many seconds"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        domains = registered_domains() if options["all"] else list(dict.fromkeys(options["domains"]))
        if not domains:
            raise CommandError(
                f"give --domain NAME or --all; registered domains: {', '.join(registered_domains())}"
            )
        # Every run's inputs are checked before the first one starts.
        try:
            runs = [
                SyncEntityVectorsInputs.from_kwargs(**self._fields(domain, options)) for domain in domains
            ]
        except (EntityVectorsError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        eager = options["eager"] or conf.eager_runs()
        failed = []
        for inputs in runs:
            task_id = str(uuid.uuid4())
            if eager:
                self._run_here(inputs, task_id, show_progress=options["wait"])
            else:
                from entity_vectors.tasks import sync_entities

                sync_entities.apply_async(kwargs=inputs.as_dict(), task_id=task_id)
                self.stdout.write(f"{inputs.domain}: queued as task {task_id} on queue {conf.queue()}")
                if not options["wait"]:
                    continue
            run = self._follow(
                inputs.domain, task_id, options["timeout"], show_progress=options["wait"] and not eager
            )
            self.stdout.write(describe_run(run))
            if run.status == SyncRun.Status.FAILED:
                failed.append(inputs.domain)
        if failed:
            raise CommandError(f"run failed: {', '.join(failed)}")

    @staticmethod
    def _fields(domain: str, options: dict[str, Any]) -> dict[str, Any]:
        version = options["embedding_version"]
        fields: dict[str, Any] = {
            "domain": domain,
            "embedding_version": conf.embedding_version() if version is None else version,
        }
        for name in (
            "start_dt",
            "summarize_batch_size",
            "embed_batch_size",
            "max_parallel_requests",
            "insert_batch_size",
            "delay_between_batches",
        ):
            if options[name] is not None:
                fields[name] = options[name]
        return fields

    def _progress_bar(self, label: str) -> ProgressBar:
        def write(text: str) -> None:
            self.stderr.write(text, ending="")
            self.stderr.flush()

        return ProgressBar(write, self.stderr.isatty(), label)

    def _run_here(self, inputs: SyncEntityVectorsInputs, task_id: str, show_progress: bool) -> None:
        from entity_vectors.tasks import sync_entities

        errors: list[BaseException] = []

        def work() -> None:
            try:
                result = sync_entities.apply(kwargs=inputs.as_dict(), task_id=task_id)
                if result.failed():
                    errors.append(result.result)
            finally:
                connections.close_all()

        worker = threading.Thread(target=work, name=f"sync-{inputs.domain}")
        worker.start()
        bar = self._progress_bar(inputs.domain) if show_progress else None
        while worker.is_alive():
            worker.join(POLL_SECONDS)
            if bar is not None:
                run = SyncRun.objects.filter(task_id=task_id).first()
                if run is not None:
                    bar.update(run.batches_done, run.batches_failed, run.batches_total)
        if bar is not None:
            run = SyncRun.objects.filter(task_id=task_id).first()
            if run is not None:
                bar.update(run.batches_done, run.batches_failed, run.batches_total)
            bar.close()
        if errors:
            raise CommandError(f"{inputs.domain}: {errors[0]}")

    def _follow(self, domain: str, task_id: str, timeout: float | None, show_progress: bool) -> SyncRun:
        started = time.monotonic()
        warned = False
        bar = self._progress_bar(domain) if show_progress else None
        try:
            while True:
                run = SyncRun.objects.filter(task_id=task_id).first()
                if run is not None and bar is not None:
                    bar.update(run.batches_done, run.batches_failed, run.batches_total)
                if run is not None and run.status != SyncRun.Status.RUNNING:
                    return run
                waited = time.monotonic() - started
                if run is None and not warned and waited > NO_WORKER_WARNING_SECONDS:
                    warned = True
                    self.stderr.write(
                        f"{domain}: no run after {waited:.0f}s; is a worker consuming queue {conf.queue()}? "
                        "(celery -A app worker -Q " + conf.queue() + ")"
                    )
                if timeout is not None and waited > timeout:
                    raise CommandError(f"{domain}: gave up waiting after {timeout:.0f}s (task {task_id})")
                time.sleep(POLL_SECONDS)
        finally:
            if bar is not None:
                bar.close()
