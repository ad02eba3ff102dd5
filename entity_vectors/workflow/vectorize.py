"""The provider-bound stage of a batch: summaries streamed into embedding requests, in one loop.

Every summary request is started at once (the limiter bounds how many are in flight run-wide);
as each summary arrives, the entity is decided at every version, and an embedding request goes
out as soon as `embed_batch_size` texts of one version are ready, not after the whole batch.
One limiter per batch; the event loop and the HTTP client are the process's (`runtime.aio`).

A config that overrides `batch_summarize` gets it called as the contract says (all entities in
one call, one result per entity in the same order); its results then feed the same embedding
queue. Summary i belongs to entity i: results are matched by position in the list the config
was given, never by completion order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import Error as DatabaseError
from redis.exceptions import RedisError

from entity_vectors import conf
from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.exceptions import (
    InfrastructureUnavailable,
    PermanentError,
    ProviderAccessDenied,
    ProviderProtocolError,
    ProviderUnreachable,
    TransientError,
)
from entity_vectors.providers import (
    EmbedderSpec,
    ProviderUsage,
    SummarizationContext,
    Summarizer,
    open_providers,
    summarization_context,
)
from entity_vectors.providers.access import ProviderAccess
from entity_vectors.providers.text import clean_text, cut_reply
from entity_vectors.workflow.plan import EMBED, REUSE, EntityWork

# The provider's or the setup's fault, for every entity alike: the batch fails as a whole.
BATCH_FAULTS = (ProviderProtocolError, ProviderAccessDenied)


def error_text(error: BaseException) -> str:
    """An error as one short line: its type and message."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 500 else text[:497] + "..."


def as_infrastructure_fault(error: BaseException) -> TransientError | None:
    """The error as a retryable fault of the services a batch relies on, or None if it is the
    entity's own (its summary or vector refused or malformed).

    Only an entity's own failures count toward parking it: a provider that is down or answers 5xx
    (ProviderUnavailable, ProviderRateLimited), the limiter's Redis, the database or a connection
    failing say nothing about the entity.
    """
    if isinstance(error, TransientError):
        return error
    if isinstance(error, RedisError | DatabaseError | OSError):
        wrapped = InfrastructureUnavailable(f"a service failed under the batch: {error_text(error)}")
        wrapped.__cause__ = error
        return wrapped
    return None


class _EmbedQueue:
    """Texts waiting for an embedding request, per version; a full chunk is sent at once.

    A request the provider refused fails its entities (they stay eligible); one that failed for
    a reason a retry may fix (5xx, timeouts, 429 after the provider-level retries, the limiter's
    Redis) is remembered in `transient`, so that the batch is retried once its summaries are safe.
    """

    def __init__(self, embedders: dict[int, Any], size: int) -> None:
        self._embedders = embedders
        self._size = size
        self._waiting: dict[int, list[EntityWork]] = {version: [] for version in embedders}
        self._tasks: list[asyncio.Task[None]] = []
        self.transient: TransientError | None = None
        self.protocol_error: ProviderProtocolError | ProviderAccessDenied | None = None
        # Whether any embedding request was answered (a fault then hit part of them only).
        self.succeeded = False

    def add(self, work: EntityWork) -> None:
        for version, version_work in work.versions.items():
            if version_work.action == REUSE and version_work.vector is None:
                # Decided as its summary arrived (the same text as the row's, other properties):
                # the row's vector was not read for it, so it is embedded again.
                version_work.action = EMBED
            if version_work.action == EMBED and version_work.vector is None:
                self._waiting[version].append(work)
                if len(self._waiting[version]) >= self._size:
                    self._send(version)

    def _send(self, version: int) -> None:
        chunk, self._waiting[version] = self._waiting[version], []
        if chunk:
            self._tasks.append(asyncio.get_running_loop().create_task(self._embed(version, chunk)))

    async def _embed(self, version: int, chunk: list[EntityWork]) -> None:
        try:
            result = await self._embedders[version].embed([work.summary or "" for work in chunk])
        except Exception as exc:
            if isinstance(exc, BATCH_FAULTS):
                self.protocol_error = exc
            fault = as_infrastructure_fault(exc)
            if self.transient is None or isinstance(fault, ProviderUnreachable):
                self.transient = fault  # an unreachable provider is what the batch reports
            for work in chunk:
                work.versions[version].error = error_text(exc)
                work.faulted = work.faulted or fault is not None
            return
        self.succeeded = True
        for position, work in enumerate(chunk):
            failure = result.failures.get(position)
            if failure:
                work.versions[version].error = f"embedding failed: {failure}"
            else:
                work.versions[version].vector = result.vectors[position]

    async def finish(self) -> None:
        for version in list(self._waiting):
            self._send(version)
        await asyncio.gather(*self._tasks)


def _accept(work: EntityWork, result: str | BaseException, identity: str) -> None:
    if isinstance(result, BaseException):
        work.error = error_text(result)
        work.failure = result
        work.faulted = as_infrastructure_fault(result) is not None
        return
    # A summary is at most what the embedder reads: whatever a summarizer returns, no more is kept.
    text = (
        clean_text(cut_reply(result, conf.max_embedding_input_tokens())).strip()
        if isinstance(result, str)
        else ""
    )
    if not text:
        work.error = "the summarizer returned an empty summary"
        return
    work.summary = text
    work.summarized_by = identity
    work.summarized_now = True


@dataclass(frozen=True)
class ProviderRequests:
    """What one batch asks of the providers, and how it hears back.

    `embedders`: the embedder of each embedding version the batch writes. `decide` decides an
    entity at every version as soon as its summary arrives; `usage` counts what was sent and paid.
    `properties` and `start_dt` are what a config's own `batch_summarize` is given.
    """

    config: EntityConfig[Any]
    embedders: dict[int, EmbedderSpec]
    embed_batch_size: int
    decide: Callable[[EntityWork], None]
    usage: ProviderUsage
    properties: dict[str, Any]
    start_dt: str


async def _stream(
    requests: ProviderRequests, to_summarize: Sequence[EntityWork], summarizer: Summarizer, queue: _EmbedQueue
) -> None:
    config = requests.config
    prompt = config.get_summary_prompt()

    def arrived(work: EntityWork, result: str | BaseException) -> None:
        _accept(work, result, summarizer.identity)
        if work.summary is not None:
            requests.decide(work)
            queue.add(work)

    if type(config).batch_summarize is EntityConfig.batch_summarize:

        async def one(work: EntityWork) -> None:
            try:
                [result] = await summarizer.summarize([work.description], prompt)
            except Exception as exc:  # a summarizer should return failures, but never trust it
                result = exc
            arrived(work, result)

        await asyncio.gather(*(one(work) for work in to_summarize))
        return
    context = SummarizationContext(
        summarizer=summarizer, descriptions={work.pk: work.description for work in to_summarize}
    )
    with summarization_context(context):
        results = await config.batch_summarize(
            [work.instance for work in to_summarize], requests.start_dt, requests.properties
        )
    if not isinstance(results, list) or len(results) != len(to_summarize):
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise PermanentError(
            f"{type(config).__name__}.batch_summarize returned {got} results for {len(to_summarize)} "
            "entities; it must return exactly one result per entity, in order"
        )
    for work, result in zip(to_summarize, results, strict=True):
        arrived(work, result)


async def vectorize(
    requests: ProviderRequests,
    access: ProviderAccess,
    to_summarize: Sequence[EntityWork],
    to_embed: Sequence[EntityWork],
) -> TransientError | ProviderProtocolError | ProviderAccessDenied | None:
    """Summarize `to_summarize`, deciding each as it arrives; embed whatever is due at each version.

    Returns the fault of a provider or a service (never an entity's own failure) when it kept every
    request of the batch from being answered: the caller saves what was done, then lets the batch
    be retried, and counts nothing toward parking. A fault that hit only part of the batch marks
    the entities it hit `faulted` (they stay eligible, uncounted) and the rest goes on. An answer
    that breaks the API's rules, or a refused key or model, is returned too: the batch then fails
    as a whole. A provider found unreachable (ProviderUnreachable) is returned before anything
    else: nothing more goes to it, and the caller stops the run.
    """
    embedders = requests.embedders
    async with (
        access.open() as opened,
        open_providers(
            opened.limiter,
            requests.usage,
            list(embedders.values()),
            opened.budget,
            opened.retries,
            opened.breaker,
        ) as providers,
    ):
        built = {version: providers.embedders[spec] for version, spec in embedders.items()}
        queue = _EmbedQueue(built, requests.embed_batch_size)
        for work in to_embed:
            queue.add(work)
        try:
            if to_summarize:
                await _stream(requests, to_summarize, providers.summarizer, queue)
        finally:
            await queue.finish()
    unreachable = next(
        (
            fault
            for fault in [queue.transient, *(work.failure for work in to_summarize)]
            if isinstance(fault, ProviderUnreachable)
        ),
        None,
    )
    if unreachable is not None:
        return unreachable  # nothing more goes to that host: the run stops, its work stays pending
    protocol = queue.protocol_error or next(
        (work.failure for work in to_summarize if isinstance(work.failure, BATCH_FAULTS)), None
    )
    if protocol is not None:
        return protocol  # the provider's fault: the batch fails as a whole, nothing counts for parking
    # Every request of one kind failed for a fault: the provider (or a service) is down, not these
    # entities: retry the batch. A fault that hit part of the batch: what was answered is kept, and
    # the entities it hit stay eligible (`faulted`: not counted toward parking) for the next run.
    if queue.transient is not None and not queue.succeeded:
        return queue.transient
    summary_faults = [
        fault
        for work in to_summarize
        if work.failure is not None and (fault := as_infrastructure_fault(work.failure)) is not None
    ]
    if summary_faults and not any(work.summarized_now for work in to_summarize):
        return summary_faults[0]
    return None
