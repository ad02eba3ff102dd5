"""Tests of the fake OpenAI server (tests/support/openai_server.py), driven through the real SDK.

No Django needed: run with `python -m pytest -p no:django tests/test_support_openai_server.py`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.support.openai_server import OpenAIServer, embed_text

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
    server.latency = 5.0
    server.fail_next(3)
    server.fail_when("x")
    server.hang_next(1, 5.0)
    server.reset()
    assert server.requests == [] and server.peak_in_flight == 0 and server.latency == 0.0
    with client(server, timeout=2) as c:
        c.embeddings.create(model=EMBED_MODEL, input="x")
    assert [r.status for r in server.requests] == [200]


def test_command_line_entry() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.openai_server", "--port", "0"],
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
            assert (
                c.chat.completions.create(
                    model=CHAT_MODEL, messages=[{"role": "user", "content": "Hello there. Bye."}]
                )
                .choices[0]
                .message.content
                == "Hello there. Bye."
            )
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
