"""The provider-bound ceiling: the same requests as a run, sent by bare loops, no pipeline.

    python scripts/bench_ceiling.py --url URL --entities 2000 --parallel 16 --batch 96 --processes 4

`--processes` client processes start together; each sends its share of the N chat requests and
ceil(N/B) embedding requests (B inputs each) through the real `openai` SDK, at most its share of
P at once (a fixed split: no limiter, no database, no ClickHouse). Prints one JSON line: the wall
time from the common start to the last answer. The benchmark divides the same ideal time by it,
so the figure shows what the loopback server, the SDK and this machine's CPUs leave of the
ideal before the pipeline's own work is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from typing import Any


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal whole shares."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


async def send(url: str, chats: int, embeddings: int, batch: int, limit: int) -> None:
    """`chats` chat and `embeddings` embedding requests, at most `limit` in flight."""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)
    slots = asyncio.Semaphore(limit)

    async def chat(number: int) -> None:
        async with slots:
            await client.chat.completions.create(
                model="gpt-4.1-mini",
                messages=[{"role": "user", "content": f'Action "ceiling {number}". Summarize it.'}],
                max_tokens=200,
            )

    async def embed(number: int) -> None:
        async with slots:
            await client.embeddings.create(
                model="text-embedding-3-small", input=[f"ceiling {number} {i}" for i in range(batch)]
            )

    try:
        await asyncio.gather(*(chat(n) for n in range(chats)), *(embed(n) for n in range(embeddings)))
    finally:
        await client.close()


def client(url: str, chats: int, embeddings: int, batch: int, limit: int, start: float, done: Any) -> None:
    """One client process: wait for the common start, send its share, report when it finished."""
    import openai  # noqa: F401  (imported before the start, as a worker has it loaded)

    time.sleep(max(0.0, start - time.time()))
    asyncio.run(send(url, chats, embeddings, batch, limit))
    done.put(time.time())


def main(argv: list[str] | None = None) -> int:
    """Run the bare loops; print {"wall": seconds}."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--entities", type=int, required=True)
    parser.add_argument("--parallel", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    processes = max(1, min(args.processes, args.parallel))
    embeddings = -(-args.entities // args.batch)
    context = multiprocessing.get_context("spawn")
    done = context.Queue()
    start = time.time() + 2.0  # every process imported and waiting
    clients = [
        context.Process(target=client, args=(args.url, chats, embeds, args.batch, limit, start, done))
        for chats, embeds, limit in zip(
            shares(args.entities, processes),
            shares(embeddings, processes),
            shares(args.parallel, processes),
            strict=True,
        )
    ]
    for process in clients:
        process.start()
    finished = [done.get(timeout=3600) for _ in clients]
    for process in clients:
        process.join()
    print(json.dumps({"wall": max(finished) - start}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
