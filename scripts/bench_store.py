"""The store jobs of the benchmark: flush rate, insert memory, search latency and recall.

Rows are built directly (random unit float32 vectors), skipping the pipeline: these jobs measure
the store alone. Run by `bench_jobs.py`, in a job process of its own.
"""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_infra as infra
import numpy as np
from bench_infra import emit, percentile, progress
from bench_pipeline import setup_django

Params = dict[str, Any]
VOCABULARY = (
    "signup", "checkout", "invoice", "upload", "share", "folder", "pricing", "trial", "cancel", "invite",
    "export", "report", "billing", "onboarding", "dashboard", "funnel", "retention", "mobile", "referral",
    "search", "settings", "profile", "payment", "cart",
)  # fmt: skip


def unit_vectors(rng: np.random.Generator, count: int, dims: int) -> np.ndarray[Any, Any]:
    """`count` random unit vectors, float32."""
    vectors = rng.standard_normal((count, dims), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def build_rows(
    team_id: int, first: int, vectors: np.ndarray[Any, Any], rng: np.random.Generator
) -> list[Any]:
    """EmbeddingRow objects with ids first.., a few words of text and a name each."""
    from entity_vectors.store import EmbeddingRow

    now = datetime.now(UTC)
    words = rng.integers(0, len(VOCABULARY), size=(len(vectors), 4))
    rows = []
    for offset, vector in enumerate(vectors):
        picked = [VOCABULARY[index] for index in words[offset]]
        name = f"{picked[0]} {picked[1]} {first + offset}"
        text = f"Tracks {picked[2]} and {picked[3]} events; named {name}. " * 3
        properties = json.dumps({"name": name, "description": f"{picked[2]} {picked[3]}"})
        rows.append(
            EmbeddingRow(
                domain="action", team_id=team_id, id=str(first + offset), vector=vector, text=text,
                properties=properties, embedding_version=1, timestamp=now, version=first + offset + 1,
            )
        )  # fmt: skip
    return rows


def _setup(params: Params, clickhouse_url: str, dims: int) -> None:
    work = Path(params["tmp"]) / params["label"]
    work.mkdir(parents=True, exist_ok=True)
    env = infra.service_env(
        f"sqlite:///{work / 'db.sqlite3'}",
        clickhouse_url,
        params["redis"],
        dimensions=dims,
        execution="inline",
    )
    setup_django(env)


def job_flush(params: Params) -> None:
    """rows/s of `store.insert(rows)` of insert_batch_size rows into the embedded store."""
    from entity_vectors.store import close_store, get_store

    dims, size = params["dims"], params["insert_batch"]
    _setup(params, f"chdb://{Path(params['tmp']) / params['label'] / 'clickhouse'}", dims)
    store = get_store()
    store.ensure_schema()
    rng = np.random.default_rng(1)
    seconds: list[float] = []
    for number in range(params["inserts"]):
        rows = build_rows(1, number * size, unit_vectors(rng, size, dims), rng)
        began = time.perf_counter()
        store.insert(rows)
        seconds.append(time.perf_counter() - began)
        progress(f"insert {number + 1}: {size:,} rows in {seconds[-1]:.2f}s")
    close_store()
    rate = size * len(seconds) / sum(seconds)
    shape = f"{len(seconds)} inserts of {size:,} rows, {dims} dims, embedded store (chdb)"
    emit(
        "flush",
        "flush into embedded store",
        f"{rate:,.0f} rows/s",
        f"{shape}; best {size / min(seconds):,.0f}",
    )


def job_memory(params: Params) -> None:
    """tracemalloc peak of one insert through clickhouse-connect (rows prebuilt, not counted)."""
    from entity_vectors.store import close_store, get_store

    dims, size = params["dims"], params["rows"]
    tmp = Path(params["tmp"])
    with infra.clickhouse_server(tmp, "clickhouse-memory") as url:
        _setup(params, url, dims)
        store = get_store()
        rng = np.random.default_rng(2)
        store.insert(build_rows(1, 10**9, unit_vectors(rng, 100, dims), rng))  # schema, connection
        rows = build_rows(1, 0, unit_vectors(rng, size, dims), rng)
        gc.collect()
        tracemalloc.start()
        began = time.perf_counter()
        store.insert(rows)
        seconds = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        close_store()
    payload = size * dims * 4 / 1e6
    shape = f"{size:,} rows, {dims} dims ({payload:.0f} MB of float32), server store over HTTP"
    emit("memory", "insert peak traced memory", f"{peak:,.0f} MB", f"{shape}; insert {seconds:.2f}s")


def job_search(params: Params) -> None:
    """search_entities p50/p95 by mode at each size; recall@10 of store.search against numpy."""
    dims = params["dims"]
    tmp = Path(params["tmp"])
    if params["store"] == "server":
        server = infra.clickhouse_server(tmp, "clickhouse-search")
        url = server.__enter__()
    else:
        server, url = None, f"chdb://{tmp / params['label'] / 'clickhouse'}"
    try:
        _setup(params, url, dims)
        from app.models import Organization, Team
        from entity_vectors.core.embedding_versions import ensure_version
        from entity_vectors.store import close_store

        organization = Organization.objects.create(name="Bench", is_ai_data_processing_approved=True)
        ensure_version("action", 1)
        for size in sorted({min(params["small"], params["vectors"]), params["vectors"]}):
            team = Team.objects.create(organization=organization, name=f"{size} vectors")
            search_size(params, team.pk, size)
        close_store()
    finally:
        if server is not None:
            server.__exit__(None, None, None)


def build_index(store: Any, team_id: int, query: np.ndarray[Any, Any], where: str) -> None:
    """Copy a large team into the approximate-search table (its first vector search does) and wait
    for its HNSW index to be built in the background, so that the searches timed use it."""
    began = time.perf_counter()
    store.search("action", team_id, query.tolist(), 10, 1)
    copied = time.perf_counter() - began
    progress(f"  copied into the index table in {copied:.1f}s; building the HNSW index")
    report = began + 60
    while True:
        (missing,) = store._query(  # the store's own connection: chdb allows one per process
            "SELECT countIf(secondary_indices_uncompressed_bytes = 0) FROM system.parts "
            "WHERE database = currentDatabase() AND table = {table:String} AND active",
            {"table": f"{store.table}_ann_{len(query)}"},
        )[0]
        if not int(missing):
            break
        time.sleep(2)
        if time.perf_counter() > report:
            progress(f"  building the HNSW index: {time.perf_counter() - began:.0f}s")
            report += 60
    built = time.perf_counter() - began - copied
    size = where.split(" vectors")[0]
    emit("search", f"index build @ {size}", f"{copied + built:,.0f} s", f"{where}; copy {copied:.0f} s")


def search_size(params: Params, team_id: int, size: int) -> None:
    """Fill one team with `size` vectors, then time searches and measure recall."""
    from entity_vectors import conf
    from entity_vectors.search.query import search_entities
    from entity_vectors.store import get_store

    dims, chunk = params["dims"], 10_000
    rng = np.random.default_rng(size)
    queries = unit_vectors(rng, params["recall_queries"], dims)
    best_scores = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 10), dtype=np.int64)
    store = get_store()
    began = time.perf_counter()
    for first in range(0, size, chunk):
        vectors = unit_vectors(rng, min(chunk, size - first), dims)
        store.insert(build_rows(team_id, first, vectors, rng))
        scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)
        ids = np.concatenate(
            [best_ids, np.broadcast_to(np.arange(first, first + len(vectors)), scores[:, 10:].shape)], axis=1
        )
        top = np.argsort(-scores, axis=1)[:, :10]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
        if (first // chunk) % 10 == 9:
            progress(f"  inserted {first + len(vectors):,} of {size:,} vectors")
    progress(f"{size:,} vectors of {dims} dims inserted in {time.perf_counter() - began:.1f}s")
    where = f"{size:,} vectors in one team, {dims} dims, {params['store']} store, limit 10"
    if size >= conf.approximate_search_min_rows() > 0:
        build_index(store, team_id, queries[0], where)
    for mode in ("vector", "hybrid"):
        latencies = []
        empty = 0
        for number in range(params["searches"]):
            picked = rng.integers(0, len(VOCABULARY), size=2)
            query = f"{VOCABULARY[picked[0]]} {VOCABULARY[picked[1]]} events"
            started = time.perf_counter()
            empty += not search_entities("action", team_id, query, limit=10, mode=mode)
            latencies.append((time.perf_counter() - started) * 1000)
            if number % 50 == 49:
                progress(f"  {mode}: {number + 1} searches, median {np.median(latencies):.0f} ms")
        value = f"p50 {percentile(latencies, 50):,.0f} ms, p95 {percentile(latencies, 95):,.0f} ms"
        emit(
            "search", f"search {mode} @ {size:,}", value, f"{where}, {len(latencies)} searches, {empty} empty"
        )
    found = [
        len(
            {int(hit.id) for hit in store.search("action", team_id, query.tolist(), 10, 1)}
            & set(best_ids[i].tolist())
        )
        for i, query in enumerate(queries)
    ]
    recall = sum(found) / (10 * len(queries))
    emit(
        "search",
        f"recall@10 @ {size:,}",
        f"{recall:.3f}",
        f"{where}; store.search vs numpy exact, {len(queries)} queries",
    )
