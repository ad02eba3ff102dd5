"""The loopback OpenAI server of the benchmark, in its own process, answering stats on stdin.

    python scripts/bench_openai.py --chat-latency 0.2 --embedding-latency 0.1

Like `python -m tests.support.openai_server` (the same `OpenAIServer`, the same latencies), but
the benchmark also needs the server's counters: every line read on stdin is answered on stdout
with one JSON line of them (peak requests in flight, requests by kind, 429s), or, for the line
`timeline`, with `{"requests": [[kind, start, end, what], ...]}` (wall-clock seconds; where the run's
time went).
EOF or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.openai_server import OpenAIServer


def stats(server: OpenAIServer) -> dict[str, int]:
    """The counters the benchmark reports."""
    return {
        "peak_in_flight": server.peak_in_flight,
        "in_flight": server.in_flight,
        "requests": len(server.requests),
        "chat": len(server.chat_requests()),
        "embeddings": len(server.embedding_requests()),
        "rate_limited": server.rate_limited,
    }


def timeline(server: OpenAIServer) -> list[tuple[str, float, float | None, str]]:
    """Every request as (kind, started, finished, what), wall-clock seconds as the server saw them.

    `what` is the start of a chat request's last message (which entity it was for), or the
    number of inputs of an embeddings request.
    """
    rows = []
    for record in server.requests:
        if record.path.rstrip("/").endswith("/embeddings"):
            inputs = record.body.get("input")
            rows.append(("embeddings", record.started_at, record.finished_at, str(len(inputs or []))))
            continue
        messages = record.body.get("messages") or [{}]
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else ""
        what = content[:60] if isinstance(content, str) else ""
        rows.append(("chat", record.started_at, record.finished_at, what))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Serve until stdin closes; answer each stdin line with the counters."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chat-latency", type=float, default=0.0)
    parser.add_argument("--embedding-latency", type=float, default=0.0)
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    server = OpenAIServer().start()
    server.chat_latency = args.chat_latency
    server.embedding_latency = args.embedding_latency
    print(f"READY {server.base_url}", flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "timeline":
                print(json.dumps({"requests": timeline(server)}), flush=True)
                continue
            if command == "reset":
                server.reset_peak()
            print(json.dumps(stats(server)), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
