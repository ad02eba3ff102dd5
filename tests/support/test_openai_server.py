"""Tests of the fake OpenAI server (tests/support/openai_server.py), driven through the real SDK.

No database needed (conftest.py still sets Django up): `python -m pytest tests/support/test_openai_server.py`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.support.openai_content import embed_text
from tests.support.openai_rules import RecordedRequest, format_duration
from tests.support.openai_server import OpenAIServer

KEY = "test-key"
CHAT_MODEL = "gpt-4.1-mini"
EMBED_MODEL = "text-embedding-3-small"
ENTITY = (
    "Acme Rocket Skates are roller skates with a rocket engine. They reach 90 km/h on flat roads. "
    "Sold by Acme Corporation since 1949! Popular with coyotes? Not recommended for beginners."
)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key=KEY) as srv:
        yield srv


def client(server: OpenAIServer, **kwargs: object) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, **kwargs)  # type: ignore[arg-type]


def aclient(server: OpenAIServer, **kwargs: object) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, **kwargs)  # type: ignore[arg-type]


def cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def test_base_url_and_lifecycle() -> None:
    srv = OpenAIServer()
    with pytest.raises(RuntimeError):
        _ = srv.base_url
    srv.start()
    try:
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
    finally:
        srv.stop()
    srv.stop()  # idempotent


def test_sync_chat_completion(server: OpenAIServer) -> None:
    with client(server) as c:
        response = c.chat.completions.create(
            model=CHAT_MODEL,
            messages=[
                {"role": "system", "content": "Summarize the entity."},
                {"role": "user", "content": ENTITY},
            ],
            temperature=0,
            max_tokens=200,
        )
    expected = (
        "Acme Rocket Skates are roller skates with a rocket engine. They reach 90 km/h on flat roads. "
        "Sold by Acme Corporation since 1949!"
    )
    assert response.model == CHAT_MODEL
    assert response.object == "chat.completion"
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason == "stop"
    assert response.usage is not None
    # Tokens are \w+ word counts: km/h is two.
    assert response.usage.completion_tokens == 24
    assert response.usage.prompt_tokens == 3 + 31
    assert response.usage.total_tokens == 24 + 34
    (recorded,) = server.chat_requests()
    assert recorded.status == 200
    assert recorded.body["messages"][1]["content"] == ENTITY
    assert recorded.headers["authorization"] == f"Bearer {KEY}"
    assert recorded.finished_at is not None and recorded.finished_at >= recorded.started_at


def test_async_chat_completion_and_summary_cap(server: OpenAIServer) -> None:
    long_sentence = "word " * 200  # no sentence end: capped at 400 characters

    async def run() -> openai.types.chat.ChatCompletion:
        async with aclient(server) as c:
            return await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": long_sentence}]
            )

    response = asyncio.run(run())
    assert response.model == "gpt-4o-mini"
    content = response.choices[0].message.content
    assert content is not None and len(content) == 400 and content.startswith("word word")
    assert response.usage is not None and response.usage.prompt_tokens == 200


def test_summarize_hook(server: OpenAIServer) -> None:
    server.summarize = lambda messages: f"{len(messages)} messages, last: {messages[-1]['content']}"
    with client(server) as c:
        response = c.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert response.choices[0].message.content == "1 messages, last: hi"


def test_embeddings_default_base64_and_float(server: OpenAIServer) -> None:
    with client(server) as c:
        default = c.embeddings.create(model=EMBED_MODEL, input="red apples and green pears")
        floats = c.embeddings.create(
            model=EMBED_MODEL, input="red apples and green pears", encoding_format="float"
        )
        small = c.embeddings.create(model=EMBED_MODEL, input=["red apples", "pears"], dimensions=64)
    # The SDK silently asks for base64 and decodes it back to floats.
    assert [r.body["encoding_format"] for r in server.embedding_requests()] == ["base64", "float", "base64"]
    assert len(default.data[0].embedding) == 1536
    assert np.allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-7)
    assert np.isclose(np.linalg.norm(floats.data[0].embedding), 1.0)
    assert default.model == EMBED_MODEL and default.usage.prompt_tokens == 5
    assert [len(d.embedding) for d in small.data] == [64, 64]
    assert small.usage.prompt_tokens == small.usage.total_tokens == 3


def test_embeddings_are_deterministic_and_similarity_follows_words(server: OpenAIServer) -> None:
    texts = [
        "Acme Rocket Skates: roller skates with a rocket engine, sold by Acme Corporation.",
        "Rocket powered roller skates made by the Acme Corporation.",
        "A quiet lakeside cottage with two bedrooms and a wood stove.",
    ]
    with client(server) as c:
        first = [d.embedding for d in c.embeddings.create(model=EMBED_MODEL, input=texts).data]
        again = c.embeddings.create(model=EMBED_MODEL, input=texts[0]).data[0].embedding
    assert first[0] == again
    assert np.allclose(first[0], embed_text(texts[0]), atol=1e-7)
    related, unrelated = cosine(first[0], first[1]), cosine(first[0], first[2])
    assert related > 0.3 > unrelated
    assert related > unrelated + 0.3


def test_embedding_batch_order_and_token_inputs(server: OpenAIServer) -> None:
    texts = [f"entity number {i} is a {'cat' if i % 2 else 'dog'} named n{i}" for i in range(96)]
    with client(server) as c:
        response = c.embeddings.create(model=EMBED_MODEL, input=texts, dimensions=256)
        tokens = c.embeddings.create(model=EMBED_MODEL, input=[[1, 2, 3], [4, 5]], encoding_format="float")
        whitespace = c.embeddings.create(model=EMBED_MODEL, input=[" "], dimensions=16)
        with pytest.raises(openai.BadRequestError):
            c.embeddings.create(model=EMBED_MODEL, input=["ok", ""])
    assert [d.index for d in response.data] == list(range(96))
    for text, item in zip(texts, response.data, strict=True):
        assert np.allclose(item.embedding, embed_text(text, 256), atol=1e-7)
    assert tokens.data[0].embedding == pytest.approx(embed_text("1 2 3"))
    assert np.isclose(np.linalg.norm(whitespace.data[0].embedding), 1.0)


def test_models_and_unknown_path(server: OpenAIServer) -> None:
    with client(server) as c:
        assert EMBED_MODEL in [m.id for m in c.models.list()]
        with pytest.raises(openai.NotFoundError) as info:
            c.post("/no/such/thing", cast_to=object, body={})
    assert info.value.code == "unknown_url"


def test_wrong_api_key_is_rejected(server: OpenAIServer) -> None:
    server.fail_next(1, 500)  # a rejected request must not use up injected faults
    with (
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        c.embeddings.create(model=EMBED_MODEL, input="x")
    assert info.value.code == "invalid_api_key"
    assert info.value.type == "invalid_request_error"
    assert [r.status for r in server.requests] == [401]
    with client(server) as c, pytest.raises(openai.InternalServerError):
        c.embeddings.create(model=EMBED_MODEL, input="x")


def test_rate_limit_is_retried_after_retry_after(server: OpenAIServer) -> None:
    server.fail_next(1, 429, retry_after=0.2)
    with client(server, max_retries=2) as c:
        response = c.embeddings.create(model=EMBED_MODEL, input="retry me")
    assert len(response.data) == 1
    first, second = server.embedding_requests()
    assert [first.status, second.status] == [429, 200]
    assert first.finished_at is not None
    assert second.started_at - first.finished_at >= 0.15  # the SDK waited for retry-after(-ms)


def test_fail_next_respects_path_and_count(server: OpenAIServer) -> None:
    server.fail_next(2, 503, path="/v1/embeddings")
    with client(server) as c:
        c.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "fine"}])
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                c.embeddings.create(model=EMBED_MODEL, input="x")
        c.embeddings.create(model=EMBED_MODEL, input="x")
    assert [r.status for r in server.requests] == [200, 503, 503, 200]


def test_fail_when_substring(server: OpenAIServer) -> None:
    server.fail_when("POISON", 500)
    with client(server) as c:
        for _ in range(2):  # times=None: every time
            with pytest.raises(openai.InternalServerError):
                c.embeddings.create(model=EMBED_MODEL, input=["fine", "a POISON pill"])
        assert len(c.embeddings.create(model=EMBED_MODEL, input=["fine", "also fine"]).data) == 2
    server.fail_when("ONCE", 400, times=1)
    with client(server) as c:
        with pytest.raises(openai.BadRequestError):
            c.embeddings.create(model=EMBED_MODEL, input="ONCE")
        c.embeddings.create(model=EMBED_MODEL, input="ONCE")
    assert [r.status for r in server.requests] == [500, 500, 200, 400, 200]


def test_hang_triggers_client_timeout_quietly(
    server: OpenAIServer, capfd: pytest.CaptureFixture[str]
) -> None:
    server.hang_next(1, 0.8)
    with client(server, timeout=0.3) as c:
        with pytest.raises(openai.APITimeoutError):
            c.embeddings.create(model=EMBED_MODEL, input="slow")
        assert len(c.embeddings.create(model=EMBED_MODEL, input="fast").data) == 1
    deadline = time.monotonic() + 5
    while server.requests[0].status is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the hung handler answers a client that is gone
    assert [r.status for r in server.requests] == [200, 200]
    time.sleep(0.1)
    assert "Traceback" not in capfd.readouterr().err


def test_peak_in_flight(server: OpenAIServer) -> None:
    server.latency = 0.2

    async def run(limit: int | None) -> None:
        semaphore = asyncio.Semaphore(limit or 1000)

        async def one(c: openai.AsyncOpenAI, i: int) -> None:
            async with semaphore:
                await c.embeddings.create(model=EMBED_MODEL, input=f"text {i}")

        async with aclient(server) as c:
            await asyncio.gather(*(one(c, i) for i in range(5)))

    asyncio.run(run(None))
    assert server.peak_in_flight == 5
    server.reset_peak()
    assert server.peak_in_flight == 0
    asyncio.run(run(3))
    assert server.peak_in_flight == 3
    assert server.in_flight == 0


def test_reset_clears_everything(server: OpenAIServer) -> None:
    with client(server) as c:
        c.models.list()
        c.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    server.latency = 5.0
    server.fail_next(3)
    server.fail_when("x")
    server.hang_next(1, 5.0)
    server.chat_latency = server.embedding_latency = 5.0
    server.set_rate_limit(rpm=1, tpm=1)
    server.reply_when("x", content="")
    server.corrupt_embeddings("missing", count=None)
    server.fail_batch_lines("x")
    server.expire_next_batch()
    server.fail_next_batch()
    server.batch_processing_seconds = 60.0
    server.batch_output_shuffled = False
    server.reset()
    assert server.requests == [] and server.peak_in_flight == 0 and server.latency == 0.0
    assert server.chat_latency is None and server.embedding_latency is None
    assert server.files == {} and server.batches == [] and server.rate_limited == 0
    assert server.batch_processing_seconds == 0.0 and server.batch_output_shuffled
    with client(server, timeout=2) as c:
        c.embeddings.create(model=EMBED_MODEL, input="x")
        raw = c.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}]
        )
        assert raw.parse().choices[0].message.content == "x"
        assert "x-ratelimit-limit-requests" not in raw.headers
        assert len(c.embeddings.create(model=EMBED_MODEL, input=["x", "y"]).data) == 2
        batch = run_batch(c, [chat_line("a", "x"), chat_line("b", "y")])
    assert [r.status for r in server.requests][:3] == [200, 200, 200]
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == 2


def test_command_line_entry() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.openai_server", "--port", "0", "--rpm", "100"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:") and line.endswith("/v1")
        base_url = line.split()[1]
        with openai.OpenAI(base_url=base_url, api_key="any", max_retries=0) as c:
            raw = c.chat.completions.with_raw_response.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "Hello there. Bye."}]
            )
            assert raw.parse().choices[0].message.content == "Hello there. Bye."
            assert raw.headers["x-ratelimit-limit-requests"] == "100"
            assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# -- latencies ---------------------------------------------------------------------------------


def elapsed(request: RecordedRequest) -> float:
    assert request.finished_at is not None
    return request.finished_at - request.started_at


def test_chat_and_embedding_latencies_override_latency(server: OpenAIServer) -> None:
    assert server.chat_latency is None and server.embedding_latency is None
    server.chat_latency = 0.3
    with client(server) as c:
        c.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
        c.embeddings.create(model=EMBED_MODEL, input="hi")
        server.chat_latency, server.embedding_latency, server.latency = None, 0.0, 0.3
        c.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
        c.embeddings.create(model=EMBED_MODEL, input="hi")
        c.models.list()
    chat_slow, embed_fast, chat_default, embed_zero, models_default = server.requests
    assert elapsed(chat_slow) >= 0.28 and elapsed(embed_fast) < 0.2
    assert elapsed(chat_default) >= 0.28 and elapsed(embed_zero) < 0.2
    assert elapsed(models_default) >= 0.28  # `latency` still applies to everything else


# -- rate limits -------------------------------------------------------------------------------


def chat(c: openai.OpenAI, max_tokens: int | None = None) -> Any:
    """A chat completion's raw response, for its headers."""
    return c.chat.completions.with_raw_response.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=openai.omit if max_tokens is None else max_tokens,
    )


def test_duration_format() -> None:
    assert [format_duration(s) for s in (0, 0.0004, 0.02, 0.999, 1, 8.64, 59.9999, 360, 86.4, 3600)] == [
        "0s",
        "1ms",
        "20ms",
        "999ms",
        "1s",
        "8.64s",
        "1m0s",
        "6m0s",
        "1m26.4s",
        "1h0m0s",
    ]


def test_request_rate_limit_headers_and_429(server: OpenAIServer) -> None:
    server.set_rate_limit(CHAT_MODEL, rpm=2)
    with client(server) as c:
        first, second = chat(c), chat(c)
        server.fail_next(1, 503)  # requests refused by the limit do not use up injected faults
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.InternalServerError) as other:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    h1, h2 = first.headers, second.headers
    assert (h1["x-ratelimit-limit-requests"], h1["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert h1["x-ratelimit-reset-requests"] == "30s"  # one request back takes 60 s / rpm
    assert h2["x-ratelimit-remaining-requests"] == "0"
    assert h2["x-ratelimit-reset-requests"].startswith(("59.", "1m0s"))
    assert "x-ratelimit-limit-tokens" not in h1  # no tpm, no token headers
    error = info.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded" and error.type == "requests"
    assert "on requests per min (RPM): Limit 2, Used 2, Requested 1" in error.message
    headers = error.response.headers
    assert 29_000 < int(headers["retry-after-ms"]) <= 30_000 and headers["retry-after"] == "30"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-requests" not in other.value.response.headers  # another model, no limit
    assert [r.status for r in server.requests] == [200, 200, 429, 503]
    assert server.rate_limited == 1


def test_token_rate_limit_refills_and_the_sdk_waits(server: OpenAIServer) -> None:
    server.set_rate_limit(tpm=6000)  # every model, each its own bucket: 100 tokens a second
    with client(server) as c:
        # "hi" costs 2//4 + 1 = 1 token, plus max_tokens.
        first = chat(c, max_tokens=5899)
        h = first.headers
        assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("6000", "100")
        assert h["x-ratelimit-reset-tokens"] == "59s"
        embedded = c.embeddings.with_raw_response.create(model=EMBED_MODEL, input=["abcdefgh", "x"])
        assert embedded.headers["x-ratelimit-remaining-tokens"] == str(6000 - 3 - 1)
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=149
            )
    assert info.value.type == "tokens" and "Requested 150" in info.value.message
    wait_ms = int(info.value.response.headers["retry-after-ms"])
    assert 100 < wait_ms <= 500  # ~50 tokens short at 100 tokens a second
    server.reset()
    server.set_rate_limit(CHAT_MODEL, tpm=6000)
    with client(server, max_retries=2) as c:
        chat(c, max_tokens=5899)
        retried = chat(c, max_tokens=149)  # 429, then the SDK sleeps retry-after-ms and succeeds
    assert retried.http_response.status_code == 200
    _, refused, accepted = server.chat_requests()
    assert (refused.status, accepted.status) == (429, 200)
    assert refused.finished_at is not None and accepted.started_at - refused.finished_at >= 0.3
    assert server.rate_limited == 1


def test_a_request_larger_than_the_limit_is_not_retried(server: OpenAIServer) -> None:
    server.set_rate_limit(CHAT_MODEL, rpm=100, tpm=1000)
    with client(server, max_retries=2) as c, pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1000
        )
    assert "Request too large" in info.value.message and "Requested 1001" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "retry-after-ms" not in info.value.response.headers
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "100"  # not charged
    assert [r.status for r in server.requests] == [429] and server.rate_limited == 1
    server.set_rate_limit(CHAT_MODEL)  # no limits: removed
    with client(server) as c:
        assert "x-ratelimit-limit-tokens" not in chat(c, max_tokens=5000).headers
    with pytest.raises(ValueError):
        server.set_rate_limit(rpm=0)


# -- injected replies --------------------------------------------------------------------------


def test_reply_when_returns_content_verbatim(server: OpenAIServer) -> None:
    server.reply_when("NUL please", content="before\x00after")
    server.reply_when('say "nothing"\n', content="", times=1, finish_reason="length")
    with client(server) as c:
        nul = c.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "NUL please"}]
        )
        empty = c.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": 'Now say "nothing"\nthanks.'}]
        )
        again = c.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": 'Now say "nothing"\nthanks.'}]
        )
        nul_again = c.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "NUL please"}]
        )
        # Embeddings are not chat completions: the rule does not apply (nor get used up).
        c.embeddings.create(model=EMBED_MODEL, input="NUL please")
    assert nul.choices[0].message.content == "before\x00after" == nul_again.choices[0].message.content
    assert empty.choices[0].message.content == "" and empty.choices[0].finish_reason == "length"
    assert empty.usage is not None and empty.usage.completion_tokens == 0
    assert again.choices[0].message.content == 'Now say "nothing" thanks.'  # times=1: used up


def test_fail_when_targets_one_embeddings_input(server: OpenAIServer) -> None:
    bad = 'a "quoted"\ninput with ünïcode'  # escaped in the JSON body, matched all the same
    server.fail_when(bad, status=400, path="/embeddings", message="Invalid input: too long.")
    with client(server) as c:
        chat_reply = c.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": bad}])
        with pytest.raises(openai.BadRequestError) as info:
            c.embeddings.create(model=EMBED_MODEL, input=["fine", bad, "also fine"])
        assert len(c.embeddings.create(model=EMBED_MODEL, input=["fine", "also fine"]).data) == 2
        with pytest.raises(openai.BadRequestError):
            c.embeddings.create(model=EMBED_MODEL, input=bad)  # times=None: every time
    assert chat_reply.choices[0].message.content is not None
    assert info.value.code == "invalid_request" and info.value.type == "invalid_request_error"
    assert info.value.body == {
        "message": "Invalid input: too long.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request",
    }
    assert [r.status for r in server.requests] == [200, 400, 200, 400]


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_corrupt_embeddings(server: OpenAIServer, encoding: str) -> None:
    texts = ["red apples", "green pears", "yellow bananas"]
    fmt: dict[str, str] = {} if encoding == "base64" else {"encoding_format": "float"}

    def embed(c: openai.OpenAI, inputs: list[str] = texts) -> list[tuple[int, list[float]]]:
        data = c.embeddings.create(model=EMBED_MODEL, input=inputs, dimensions=64, **fmt).data  # type: ignore[arg-type]
        return [(d.index, d.embedding) for d in data]

    expected = [embed_text(t, 64) for t in texts]
    with client(server) as c:
        for kind in ("missing", "extra", "wrong_dimension", "shuffled", "bad_index", "nan"):
            server.corrupt_embeddings(kind)
        missing, extra, wrong, shuffled, bad_index, nan = (embed(c) for _ in range(6))
        healthy = embed(c)
        server.corrupt_embeddings("missing", count=2, substring="bananas")
        untouched = embed(c, texts[:2])
        hit, hit_again, spent = embed(c), embed(c), embed(c)
    assert [i for i, _ in missing] == [0, 1]
    assert [i for i, _ in extra] == [0, 1, 2, 3] and len(extra[3][1]) == 64
    assert [len(v) for _, v in wrong] == [67, 67, 67]
    assert [i for i, _ in shuffled] == [2, 1, 0]
    assert all(np.allclose(v, expected[i], atol=1e-7) for i, v in shuffled)
    assert [i for i, _ in bad_index] == [0, 0, 0]
    assert math.isnan(nan[0][1][0]) and not np.isnan(nan[1][1]).any()
    assert [i for i, _ in healthy] == [0, 1, 2]
    assert len(untouched) == 2 and len(hit) == len(hit_again) == 2 and len(spent) == 3
    with pytest.raises(ValueError):
        server.corrupt_embeddings("garbled")


def test_nan_travels_in_base64(server: OpenAIServer) -> None:
    server.corrupt_embeddings("nan")
    with client(server) as c:
        raw = c.embeddings.with_raw_response.create(
            model=EMBED_MODEL, input="x", dimensions=4, encoding_format="base64"
        )
    packed = json.loads(raw.http_response.content)["data"][0]["embedding"]
    assert np.isnan(np.frombuffer(base64.b64decode(packed), dtype="<f4")[0])


# -- files and batches -------------------------------------------------------------------------


def chat_line(custom_id: str, content: str, **body: object) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": content}], **body},
    }


def embed_line(custom_id: str, text: str) -> dict[str, object]:
    body = {"model": EMBED_MODEL, "input": [text], "dimensions": 32, "encoding_format": "float"}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def jsonl(lines: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def create_batch(
    c: openai.OpenAI, lines: list[dict[str, object]], endpoint: str = "/v1/chat/completions"
) -> openai.types.Batch:
    uploaded = c.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    return c.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )


def run_batch(
    c: openai.OpenAI, lines: list[dict[str, object]], endpoint: str = "/v1/chat/completions"
) -> openai.types.Batch:
    return c.batches.retrieve(create_batch(c, lines, endpoint).id)


def read_jsonl(c: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in c.files.content(file_id).text.splitlines()]


def test_files_upload_retrieve_content_list_delete(server: OpenAIServer) -> None:
    data = jsonl([chat_line("a", "héllo\x00"), chat_line("b", "bye")])
    with client(server) as c:
        uploaded = c.files.create(file=("requests.jsonl", data), purpose="batch")
        retrieved = c.files.retrieve(uploaded.id)
        content = c.files.content(uploaded.id).content
        listed = [f.id for f in c.files.list(purpose="batch")]
        with pytest.raises(openai.BadRequestError):
            c.files.create(file=("x.txt", b"x"), purpose="nonsense")  # type: ignore[arg-type]
        assert server.files == {uploaded.id: data}
        assert c.files.delete(uploaded.id).deleted
        with pytest.raises(openai.NotFoundError) as info:
            c.files.retrieve(uploaded.id)
    assert uploaded.id.startswith("file-") and uploaded.object == "file"
    assert (uploaded.filename, uploaded.purpose, uploaded.status) == ("requests.jsonl", "batch", "processed")
    assert uploaded.bytes == len(data) and uploaded.created_at > 1_700_000_000
    assert retrieved == uploaded and content == data and listed == [uploaded.id]
    assert info.value.code is None and server.files == {}
    upload = server.requests[0]
    assert upload.path == "/v1/files" and upload.body == {
        "purpose": "batch",
        "file": {"filename": "requests.jsonl", "bytes": len(data)},
    }


def test_chat_batch_completes_with_replies_and_failures(server: OpenAIServer) -> None:
    server.reply_when("NUL", content="x\x00y")
    server.fail_when("TOO LONG", status=400, message="This model's maximum context length is exceeded.")
    server.fail_batch_lines("FLAKY")
    lines = [
        chat_line("c-1", "First entity. It is fine."),
        chat_line("c-2", "Give me a NUL"),
        chat_line("c-3", "TOO LONG text"),
        chat_line("c-4", "FLAKY one"),
        chat_line("c-5", "Last entity here.", max_tokens=50),
    ]
    with client(server) as c:
        created = create_batch(c, lines)
        batch = c.batches.retrieve(created.id)
        output = read_jsonl(c, batch.output_file_id)
        errors = read_jsonl(c, batch.error_file_id)
        again = c.batches.retrieve(created.id)
    assert created.id.startswith("batch_") and created.object == "batch" and created.status == "validating"
    assert created.endpoint == "/v1/chat/completions" and created.completion_window == "24h"
    assert created.output_file_id is None and created.request_counts is not None
    assert created.request_counts.total == 5 and created.model == CHAT_MODEL
    assert batch.status == "completed" and batch.completed_at is not None and batch.in_progress_at is not None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        5,
        3,
        2,
    )
    assert again == batch  # terminal: nothing changes any more
    assert batch.usage is not None and batch.usage.output_tokens > 0
    by_id = {line["custom_id"]: line for line in output}
    assert [line["custom_id"] for line in output] != ["c-1", "c-2", "c-5"]  # shuffled by default
    assert sorted(by_id) == ["c-1", "c-2", "c-5"]
    for line in output:
        assert str(line["id"]).startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert isinstance(response, dict) and response["status_code"] == 200
        assert str(response["request_id"]).startswith("req_")
    completion = openai.types.chat.ChatCompletion.model_validate(by_id["c-2"]["response"]["body"])
    assert completion.choices[0].message.content == "x\x00y"
    assert by_id["c-1"]["response"]["body"]["choices"][0]["message"]["content"] == "First entity. It is fine."
    failed = {line["custom_id"]: line["response"] for line in errors}
    assert failed["c-3"]["status_code"] == 400
    assert failed["c-3"]["body"]["error"]["message"].startswith("This model's maximum")
    assert failed["c-4"]["status_code"] == 500
    assert server.files[str(batch.output_file_id)].count(b"\n") == 3
    assert [_path(r.path) for r in server.requests] == [
        "/files",
        "/batches",
        "/batches/{id}",
        "/files/{id}/content",
        "/files/{id}/content",
        "/batches/{id}",
    ]
    assert server.chat_requests() == []  # batch lines are not HTTP requests
    assert server.batches[0]["status"] == "completed"


def _path(path: str) -> str:
    parts = path.removeprefix("/v1").split("/")
    return "/".join("{id}" if p.startswith(("file-", "batch_")) else p for p in parts)


def test_embeddings_batch_in_order_and_corrupted(server: OpenAIServer) -> None:
    server.batch_output_shuffled = False
    server.corrupt_embeddings("wrong_dimension", substring="pears")
    texts = ["red apples", "green pears", "yellow bananas"]
    with client(server) as c:
        batch = run_batch(c, [embed_line(f"e-{i}", t) for i, t in enumerate(texts)], "/v1/embeddings")
        output = read_jsonl(c, batch.output_file_id)
    assert batch.status == "completed" and batch.error_file_id is None
    assert [line["custom_id"] for line in output] == ["e-0", "e-1", "e-2"]
    vectors = [line["response"]["body"]["data"][0]["embedding"] for line in output]
    assert [len(v) for v in vectors] == [32, 35, 32]
    assert np.allclose(vectors[2], embed_text("yellow bananas", 32), atol=1e-7)


def test_batch_progress_then_expiry(server: OpenAIServer) -> None:
    server.batch_processing_seconds = 0.5
    server.expire_next_batch()
    lines = [chat_line(f"x-{i}", f"entity {i}.") for i in range(4)]

    async def run() -> tuple[openai.types.Batch, openai.types.Batch, list[bytes]]:
        async with aclient(server) as c:
            uploaded = await c.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            created = await c.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            early = await c.batches.retrieve(created.id)
            await asyncio.sleep(0.6)
            late = await c.batches.retrieve(created.id)
            files = [
                (await c.files.content(file_id)).content
                for file_id in (late.output_file_id, late.error_file_id)
                if file_id is not None
            ]
            return early, late, files

    early, late, (output, errors) = asyncio.run(run())
    assert early.status == "in_progress" and early.request_counts is not None
    assert early.request_counts.completed < 2
    assert late.status == "expired" and late.expired_at is not None and late.request_counts is not None
    assert (late.request_counts.total, late.request_counts.completed, late.request_counts.failed) == (4, 2, 0)
    assert sorted(json.loads(line)["custom_id"] for line in output.splitlines()) == ["x-0", "x-1"]
    unrun = [json.loads(line) for line in errors.splitlines()]
    assert sorted(line["custom_id"] for line in unrun) == ["x-2", "x-3"]
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in unrun)


def test_failed_batches(server: OpenAIServer) -> None:
    server.fail_next_batch()
    bad_lines = jsonl([chat_line("a", "ok"), chat_line("a", "duplicate id")]) + (
        b"not json\n"
        + jsonl([{**chat_line("b", "x"), "url": "/v1/embeddings"}, {"custom_id": "c", "method": "POST"}])
    )
    with client(server) as c:
        injected = run_batch(c, [chat_line("a", "ok")])
        uploaded = c.files.create(file=("bad.jsonl", bad_lines), purpose="batch")
        invalid = c.batches.retrieve(
            c.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
        )
        with pytest.raises(openai.BadRequestError) as no_file:
            c.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError):
            c.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve("batch_nope")
    assert injected.status == "failed" and injected.failed_at is not None and injected.errors is not None
    assert injected.errors.data is not None and injected.errors.data[0].code == "token_limit_exceeded"
    assert injected.output_file_id is None and injected.error_file_id is None
    assert invalid.status == "failed" and invalid.errors is not None and invalid.errors.data is not None
    assert [(e.code, e.line) for e in invalid.errors.data] == [
        ("duplicate_custom_id", 2),
        ("invalid_json_line", 3),
        ("mismatched_endpoint", 4),
        ("missing_required_parameter", 5),
    ]
    assert invalid.errors.data[3].param == "url"
    assert no_file.value.param == "input_file_id"
    assert [b["status"] for b in server.batches] == ["failed", "failed"]


def test_batch_cancel_and_list(server: OpenAIServer) -> None:
    server.batch_processing_seconds = 30.0
    with client(server) as c:
        created = create_batch(c, [chat_line("a", "one"), chat_line("b", "two")])
        cancelling = c.batches.cancel(created.id)
        cancelled = c.batches.retrieve(created.id)
        with pytest.raises(openai.ConflictError):
            c.batches.cancel(created.id)
        errors = read_jsonl(c, cancelled.error_file_id)
        listed = [b.id for b in c.batches.list()]
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert cancelled.output_file_id is None and listed == [created.id]
    assert sorted(line["custom_id"] for line in errors) == ["a", "b"]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
