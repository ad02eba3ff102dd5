"""What a run takes from a Batch API job: vectors the job made, and entities it leaves to the job.

A job's requests are keyed by what they were made for (the summary's input hash, the vector's
text hash), so a run uses a ready vector only for the very same text and embedder, and leaves an
entity to the job only while a request for its current content is on the way: an entity edited
since the job started is handled now, at full price, and the job's result for the old content
is never used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from entity_vectors.models import BatchApiJob, BatchApiRequest
from entity_vectors.workflow.plan import EMBED, EntityWork


def take_batch_api_results(
    domain: str, to_summarize: Sequence[EntityWork], to_embed: Sequence[EntityWork]
) -> None:
    """Mark entities awaiting an active job's request, and give ready vectors to their versions."""
    keys = [work.key for work in (*to_summarize, *to_embed)]
    if not keys:
        return
    requests: dict[tuple[str, str, int], tuple[str, str, bytes | memoryview | None]] = {
        (entity_id, kind, version): (content_hash, state, vector)
        for entity_id, kind, version, content_hash, state, vector in BatchApiRequest.objects.filter(
            domain=domain, entity_id__in=keys, job__status__in=BatchApiJob.ACTIVE
        ).values_list("entity_id", "kind", "embedding_version", "content_hash", "state", "vector")
    }
    if not requests:
        return
    pending = BatchApiRequest.State.PENDING
    for work in to_summarize:
        found = requests.get((work.key, BatchApiRequest.Kind.SUMMARY, 0))
        if found is not None and found[0] == work.input_hash and found[1] == pending:
            work.awaiting_batch_api = True
    for work in to_embed:
        for version, version_work in work.versions.items():
            found = requests.get((work.key, BatchApiRequest.Kind.VECTOR, version))
            if version_work.action != EMBED or found is None or found[0] != version_work.text_hash:
                continue
            _, state, vector = found
            if state == pending:
                work.awaiting_batch_api = True
            elif vector is not None:
                array = np.frombuffer(bytes(vector), dtype="<f4").astype(np.float32)
                if array.shape == (version_work.spec.embedder.dimensions,):
                    version_work.vector = array


def still_to_embed(work: EntityWork) -> bool:
    """Whether some version of the entity still needs a vector made now."""
    return any(v.action == EMBED and v.vector is None for v in work.versions.values())
