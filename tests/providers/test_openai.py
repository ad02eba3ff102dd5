"""The providers through the real OpenAI SDK against the loopback server, and the offline ones."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from celery.signals import worker_init

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError, ProviderRejected, ProviderUnavailable
from entity_vectors.providers import (
    EmbedderSpec,
    Embeddings,
    OpenAIEmbedder,
    ProviderUsage,
    open_providers,
)
from entity_vectors.providers import openai as openai_provider
from entity_vectors.providers.base import Limiter
from entity_vectors.providers.openai import OpenAIRequester, RetryPolicy, load_tokenizers
from entity_vectors.providers.text import MAX_SUMMARY_TOKENS, count_tokens, get_encoding
from entity_vectors.runtime import rate_budget as ratelimit
from entity_vectors.runtime.limiter import LocalLimiter
from entity_vectors.runtime.rate_budget import Limits, LocalRateBudget, RateBudget, RedisRateBudget
from entity_vectors.tasks.policy import load_before_fork
from tests.support.openai_content import embed_text
from tests.support.openai_server import OpenAIServer
from tests.support.vectors import cosine

EMBEDDING_MODEL = "text-embedding-3-small"


def summarize(
    texts: list[str], prompt: str = "Summarize.", limiter: Limiter | None = None
) -> tuple[list[Any], ProviderUsage]:
    """Run the configured summarizer over `texts`."""
    usage = ProviderUsage()

    async def run() -> list[Any]:
        async with open_providers(limiter, usage) as providers:
            return await providers.summarizer.summarize(texts, prompt)

    return async_to_sync(run)(), usage


def embed(texts: list[str]) -> tuple[Embeddings, ProviderUsage]:
    """Run the configured embedder over `texts` in one request."""
    usage = ProviderUsage()

    async def run() -> Embeddings:
        async with open_providers(None, usage) as providers:
            return await providers.embedder.embed(texts)

    return async_to_sync(run)(), usage


def expected_vectors(texts: Sequence[str], dimensions: int = 256) -> np.ndarray:
    """What the loopback server computes for each text, as float32 rows."""
    return np.asarray([embed_text(text, dimensions) for text in texts], dtype=np.float32)




class TestOpenAISummarizer:
    """Chat completions: prompt and input as given, retries only where a retry can help."""

    def test_sends_the_prompt_and_description_and_counts_usage(
        self, llm: OpenAIServer, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_CHAT_MODEL = "gpt-4o-mini"

        results, usage = summarize(
            ['Action "Signed up". It matches when event is `signup`.'], "SYSTEM PROMPT"
        )

        assert results == ['Action "Signed up". It matches when event is `signup`.']
        (request,) = llm.chat_requests()
        assert request.body["model"] == "gpt-4o-mini"
        assert request.body["messages"][0] == {"role": "system", "content": "SYSTEM PROMPT"}
        assert request.body["messages"][1]["content"].startswith('Action "Signed up"')
        assert len(request.body["messages"]) == 2
        assert (request.body["temperature"], request.body["max_tokens"]) == (0, MAX_SUMMARY_TOKENS)
        assert request.headers["authorization"] == "Bearer test-key"
        assert usage.requests == 1 and usage.prompt_tokens > 0 and usage.completion_tokens > 0

    def test_rate_limit_is_retried_after_the_servers_retry_after(
        self, llm: OpenAIServer, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PROVIDER_MAX_BACKOFF = 5
        llm.fail_next(1, status=429, retry_after=0.4, path="/chat/completions")

        started = time.monotonic()
        results, usage = summarize(["Cohort of paying users."])

        assert results == ["Cohort of paying users."]
        assert time.monotonic() - started >= 0.4
        assert [request.status for request in llm.chat_requests()] == [429, 200]
        assert usage.requests == 2

    def test_authentication_error_is_not_retried_and_names_the_server(
        self, llm: OpenAIServer, settings: Any
    ) -> None:
        settings.OPENAI_API_KEY = "wrong-key"

        (result,), _ = summarize(["anything"])

        assert isinstance(result, ProviderRejected)
        assert "401" in str(result)
        assert llm.base_url in str(result)
        assert "wrong-key" not in str(result)
        assert [request.status for request in llm.chat_requests()] == [401]

    def test_server_errors_are_retried_then_reported_in_the_slot(self, llm: OpenAIServer) -> None:
        llm.fail_when("BROKEN", status=500, path="/chat/completions")

        results, usage = summarize(["fine one", "BROKEN one", "fine two"])

        assert results[0] == "fine one" and results[2] == "fine two"
        assert isinstance(results[1], ProviderUnavailable)
        assert "after 3 attempts" in str(results[1])
        assert llm.base_url in str(results[1])
        assert usage.requests == 5  # 1 + 3 + 1

    def test_a_timeout_is_retried(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_PROVIDER_TIMEOUT = 0.5
        llm.hang_next(1, seconds=2, path="/chat/completions")

        results, usage = summarize(["slow then fine"])

        assert results == ["slow then fine"]
        assert usage.requests == 2

    def test_a_huge_description_is_truncated_before_sending(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_MAX_SUMMARY_INPUT_TOKENS = 1000
        huge = "Description of a very large action. " + "word " * 200_000  # ~1 MB

        (result,), _ = summarize([huge])

        assert isinstance(result, str) and result.startswith("Description of a very large action.")
        sent = llm.chat_requests()[0].body["messages"][1]["content"]
        assert 900 <= count_tokens(sent, conf.chat_model()) <= 1000
        assert sent.endswith(" …")

    def test_concurrency_is_bounded_by_the_limiter(self, llm: OpenAIServer) -> None:
        llm.latency = 0.2

        results, _ = summarize([f"entity {index}" for index in range(9)], limiter=LocalLimiter(3))

        assert len(results) == 9 and all(isinstance(result, str) for result in results)
        assert llm.peak_in_flight == 3

    def test_nul_and_control_characters_are_cleaned_out_of_a_reply(self, llm: OpenAIServer) -> None:
        llm.reply_when("DIRTY", content="Signed\x00 up\x07 users.\nSecond\tline.\x1b")

        results, _ = summarize(["DIRTY entity", "clean entity"])

        assert results == ["Signed up users.\nSecond\tline.", "clean entity"]

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param("", id="empty-string"),
            pytest.param(None, id="null-content"),
            pytest.param("\x00\x00 \x07\n", id="only-control-characters"),
        ],
    )
    def test_an_empty_reply_fails_only_its_own_slot(self, llm: OpenAIServer, content: str | None) -> None:
        llm.reply_when("EMPTY", content=content)

        results, usage = summarize(["first entity", "EMPTY entity", "last entity"])

        assert results[0] == "first entity" and results[2] == "last entity"
        assert isinstance(results[1], ProviderRejected)
        assert "empty" in str(results[1])
        assert usage.requests == 3  # a rejected answer is not retried

    def test_an_empty_reply_error_names_the_server(self, llm: OpenAIServer) -> None:
        llm.reply_when("EMPTY", content="")

        (result,), _ = summarize(["EMPTY entity"])

        assert isinstance(result, ProviderRejected)
        assert llm.base_url in str(result)


class TestOpenAIEmbedder:
    """Embeddings: one base64 request per call, items placed by index, each vector checked."""

    def test_one_request_per_call_in_input_order(self, llm: OpenAIServer) -> None:
        texts = [f"text number {index}" for index in range(20)]

        embeddings, usage = embed(texts)

        (request,) = llm.embedding_requests()
        assert request.body["input"] == texts
        assert request.body["dimensions"] == 256
        assert request.body["encoding_format"] == "base64"
        assert embeddings.vectors.dtype == np.float32 and embeddings.vectors.shape == (20, 256)
        assert embeddings.failures == {}
        np.testing.assert_allclose(embeddings.vectors, expected_vectors(texts), rtol=0, atol=1e-7)
        again, _ = embed([texts[7]])
        assert cosine(again.vectors[0], embeddings.vectors[7]) == pytest.approx(1.0, abs=1e-6)
        assert usage.embedding_tokens > 0 and usage.requests == 1

    def test_providers_hold_one_embedder_per_spec(self, llm: OpenAIServer) -> None:
        specs = [EmbedderSpec("openai", EMBEDDING_MODEL, 256), EmbedderSpec("hashing", "", 64)]

        async def run() -> list[tuple[str, int, tuple[int, ...]]]:
            async with open_providers(embedders=[*specs, specs[0]]) as providers:
                assert list(providers.embedders) == specs
                assert providers.embedder is providers.embedders[specs[0]]
                found = []
                for embedder in providers.embedders.values():
                    result = await embedder.embed(["user signed up"])
                    found.append((embedder.identity, embedder.dimensions, result.vectors.shape))
                return found

        assert async_to_sync(run)() == [
            (f"openai:{EMBEDDING_MODEL}", 256, (1, 256)),
            ("hashing", 64, (1, 64)),
        ]

    def test_a_model_of_another_size_fails_each_vector_naming_the_setting(
        self, llm: OpenAIServer, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_EMBEDDING_MODEL = "nomic-embed-text"  # no `dimensions`: the server's default

        embeddings, _ = embed(["hello", "world"])

        assert "dimensions" not in llm.embedding_requests()[0].body
        assert sorted(embeddings.failures) == [0, 1]
        for message in embeddings.failures.values():
            assert "1536-dimensional" in message
            assert "ENTITY_VECTORS_EMBEDDING_DIMENSIONS is 256" in message
            assert llm.base_url in message
        assert not embeddings.vectors.any()  # nothing of a failed vector is kept

    @pytest.mark.parametrize(
        "kind",
        [
            pytest.param("missing", id="an-item-missing"),
            pytest.param("extra", id="an-item-too-many"),
            pytest.param("bad_index", id="repeated-indexes"),
        ],
    )
    def test_an_answer_that_does_not_match_the_inputs_is_rejected_whole(
        self, llm: OpenAIServer, kind: str
    ) -> None:
        llm.corrupt_embeddings(kind)

        with pytest.raises(ProviderRejected, match="nothing of that answer is used") as rejected:
            embed(["first text", "second text", "third text"])

        assert llm.base_url in str(rejected.value)
        assert len(llm.embedding_requests()) == 1  # a wrong answer is not retried

    def test_shuffled_items_land_at_their_indexes(self, llm: OpenAIServer) -> None:
        texts = ["user signed up", "invoice paid", "page viewed", "cohort of churned users"]
        llm.corrupt_embeddings("shuffled")

        embeddings, _ = embed(texts)

        assert embeddings.failures == {}
        np.testing.assert_allclose(embeddings.vectors, expected_vectors(texts), rtol=0, atol=1e-7)

    @pytest.mark.parametrize(
        ("kind", "failed", "reason"),
        [
            pytest.param("nan", [0], "not numbers", id="nan-in-the-first-vector"),
            pytest.param(
                "wrong_dimension", [0, 1, 2], "ENTITY_VECTORS_EMBEDDING_DIMENSIONS", id="wrong-dimension"
            ),
        ],
    )
    def test_an_unusable_vector_fails_only_its_own_input(
        self, llm: OpenAIServer, kind: str, failed: list[int], reason: str
    ) -> None:
        texts = ["first text", "second text", "third text"]
        llm.corrupt_embeddings(kind)

        embeddings, _ = embed(texts)

        assert sorted(embeddings.failures) == failed
        assert all(reason in message and llm.base_url in message for message in embeddings.failures.values())
        expected = expected_vectors(texts)
        for position in range(len(texts)):
            if position in failed:
                assert not embeddings.vectors[position].any()
            else:
                np.testing.assert_allclose(
                    embeddings.vectors[position], expected[position], rtol=0, atol=1e-7
                )

    def test_an_all_zero_vector_fails_only_its_own_input(self) -> None:
        good = np.full(4, 0.5, dtype=np.float32)
        answer = SimpleNamespace(
            data=[
                SimpleNamespace(index=1, embedding=base64.b64encode(np.zeros(4, "<f4").tobytes()).decode()),
                SimpleNamespace(index=0, embedding=base64.b64encode(good.astype("<f4").tobytes()).decode()),
            ],
            usage=None,
        )
        client = StubEmbeddingsClient(answer)
        policy = RetryPolicy(max_retries=0)
        requester = OpenAIRequester(LocalLimiter(1), ProviderUsage(), policy, where="http://stub/v1/")
        embedder = OpenAIEmbedder(client, EMBEDDING_MODEL, 4, requester, ProviderUsage(), 100)  # type: ignore[arg-type]

        embeddings = asyncio.run(embedder.embed(["fine", "zero"]))

        assert list(embeddings.failures) == [1]
        assert "all-zero" in embeddings.failures[1]
        np.testing.assert_array_equal(embeddings.vectors, np.stack([good, np.zeros(4, np.float32)]))

    def test_missing_key_is_a_clear_configuration_error(self, settings: Any) -> None:
        settings.ENTITY_VECTORS_SUMMARIZER = "openai"
        settings.OPENAI_API_KEY = ""

        with pytest.raises(ConfigurationError, match="OPENAI_API_KEY is not set"):
            summarize(["x"])


class StubEmbeddingsClient:
    """Stands in for AsyncOpenAI where the loopback server cannot produce an answer (all zeros)."""

    base_url = "http://stub/v1/"

    def __init__(self, answer: Any) -> None:
        async def create(**options: Any) -> Any:
            return SimpleNamespace(headers={}, parse=lambda: answer)

        self.embeddings = SimpleNamespace(with_raw_response=SimpleNamespace(create=create))


RPM = 240  # the server refills one request every 0.25 s after a burst of 240


LOAD = RPM + 3  # requests sent at once: a few more than the server's burst


def redis_budget(redis_client: redis.Redis, limits: dict[str, Limits]) -> Callable[[], RateBudget]:
    """A factory of Redis budgets on a fresh prefix (built inside the event loop that uses it)."""
    kwargs = redis_client.connection_pool.connection_kwargs
    prefix = f"test-rate:{uuid.uuid4().hex}"

    def build() -> RateBudget:
        # Every request waiting for the budget runs its own script call: room for all of them.
        client = aioredis.Redis(
            host=kwargs.get("host", "127.0.0.1"),
            port=kwargs.get("port", 6379),
            db=kwargs.get("db", 0),
            max_connections=2 * LOAD,
        )
        return RedisRateBudget(client, limits, prefix=prefix)

    return build


def budget_factory(
    kind: str, limits: dict[str, Limits], redis_client: redis.Redis
) -> Callable[[], RateBudget]:
    """A local or a Redis budget with `limits`."""
    if kind == "redis":
        return redis_budget(redis_client, limits)
    return lambda: LocalRateBudget(limits)


def embed_many(
    count: int, budget: Callable[[], RateBudget | None], server: OpenAIServer
) -> tuple[list[Any] | None, float]:
    """`count` one-text embedding requests at once (8 in flight) under `budget`; results and seconds.

    Stops at the first 429 (results None): the budget then holds the model until the provider's
    reset, which is up to a minute.
    """

    async def run() -> tuple[list[Any] | None, float]:
        async with open_providers(limiter=LocalLimiter(8), budget=budget()) as providers:
            started = time.monotonic()
            work = asyncio.gather(
                *(providers.embedder.embed([f"text {index}"]) for index in range(count)),
                return_exceptions=True,
            )
            while not work.done() and not server.rate_limited and time.monotonic() - started < 20:
                await asyncio.wait({work}, timeout=0.02)
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return None, time.monotonic() - started
            return list(work.result()), time.monotonic() - started

    return async_to_sync(run)()


class TestRateBudget:
    """With a rate budget, requests wait for it instead of running into the provider's 429s."""

    @pytest.mark.parametrize("kind", [pytest.param("local", id="local"), pytest.param("redis", id="redis")])
    def test_a_budget_just_under_the_providers_limit_gets_no_429(
        self, llm: OpenAIServer, redis_client: redis.Redis, kind: str
    ) -> None:
        llm.set_rate_limit(EMBEDDING_MODEL, rpm=RPM)
        budget = budget_factory(kind, {EMBEDDING_MODEL: Limits(rpm=RPM - 1)}, redis_client)

        results, seconds = embed_many(LOAD, budget, llm)

        assert llm.rate_limited == 0
        assert results is not None and all(isinstance(result, Embeddings) for result in results)
        assert {request.status for request in llm.embedding_requests()} == {200}
        # The requests beyond the budget's burst waited for its refill, about 60 / RPM seconds each.
        assert seconds >= 3 * 60 / RPM

    def test_without_a_budget_the_same_load_is_rate_limited(self, llm: OpenAIServer) -> None:
        llm.set_rate_limit(EMBEDDING_MODEL, rpm=RPM)

        # 40 beyond the burst: the server's refill would need 10 s to absorb them, far longer
        # than the requests take even on a loaded machine (3 beyond it are absorbed in 0.75 s).
        embed_many(RPM + 40, lambda: None, llm)

        assert llm.rate_limited > 0

    def test_the_requester_takes_each_attempt_from_the_budget(self) -> None:
        budget = LocalRateBudget({"m": Limits(rpm=120)})
        requester = OpenAIRequester(
            LocalLimiter(1), ProviderUsage(), RetryPolicy(max_retries=0), budget=budget
        )

        async def answer() -> Any:
            return SimpleNamespace(headers={"x-ratelimit-remaining-requests": "0"}, parse=lambda: "ok")

        async def run() -> tuple[Any, float]:
            first = await requester.call("test", answer, model="m", tokens=1)
            started = time.monotonic()
            await requester.call("test", answer, model="m", tokens=1)
            return first, time.monotonic() - started

        first, waited = asyncio.run(run())

        assert first == "ok"
        # The first answer said nothing is left: the second attempt waits for one request's refill.
        assert 0.4 <= waited < 1.0


class CountingScript:
    """Wraps a RedisRateBudget's acquire script and counts the calls that reach Redis."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.calls = 0

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.script(**kwargs)


class TestUnlimitedModels:
    """A model Redis knows no limit or hold for is not asked about per request; news of a limit ends that."""

    def redis_url(self, redis_client: redis.Redis) -> str:
        kwargs = redis_client.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"

    @pytest.mark.parametrize(
        ("headers", "limited"),
        [
            pytest.param({"x-ratelimit-limit-requests": "600"}, False, id="rate-limit-headers"),
            pytest.param({}, True, id="a-429"),
        ],
    )
    def test_one_call_for_many_requests_until_the_provider_names_a_limit(
        self,
        redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch,
        headers: dict[str, str],
        limited: bool,
    ) -> None:
        monkeypatch.setattr(ratelimit, "UNLIMITED_RECHECK_SECONDS", 3600.0)
        prefix = f"test-rate:{uuid.uuid4().hex}"

        async def run() -> tuple[int, int]:
            client = aioredis.Redis.from_url(self.redis_url(redis_client))
            budget = RedisRateBudget(client, {}, prefix=prefix)
            counting = CountingScript(budget._acquire)
            budget._acquire = counting
            try:
                for _ in range(20):
                    await budget.acquire(EMBEDDING_MODEL, 10)
                before = counting.calls
                budget.observe(EMBEDDING_MODEL, headers, limited=limited)
                await budget.drain()
                await asyncio.wait_for(budget.acquire(EMBEDDING_MODEL, 10), timeout=30)
                return before, counting.calls
            finally:
                await client.aclose()

        before, after = async_to_sync(run)()

        assert before == 1
        assert after > before  # the next request asks Redis again (and waits out a 429's hold)

    def test_configured_limits_are_asked_about_per_request(
        self, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(ratelimit, "UNLIMITED_RECHECK_SECONDS", 3600.0)
        prefix = f"test-rate:{uuid.uuid4().hex}"

        async def run() -> int:
            client = aioredis.Redis.from_url(self.redis_url(redis_client))
            budget = RedisRateBudget(client, {EMBEDDING_MODEL: Limits(rpm=100_000)}, prefix=prefix)
            counting = CountingScript(budget._acquire)
            budget._acquire = counting
            try:
                for _ in range(5):
                    await budget.acquire(EMBEDDING_MODEL, 10)
                return counting.calls
            finally:
                await client.aclose()

        assert async_to_sync(run)() == 5


class TestRequesterSlot:
    """A slot is held for the HTTP exchange only: the answer is parsed after it is given back."""

    def test_the_answer_is_parsed_outside_the_slot(self) -> None:
        limiter = LocalLimiter(1)
        seen: list[bool] = []

        def parse() -> str:
            seen.append(limiter._semaphore.locked())
            return "parsed"

        async def answer() -> Any:
            seen.append(limiter._semaphore.locked())
            return SimpleNamespace(headers={}, parse=parse)

        requester = OpenAIRequester(limiter, ProviderUsage(), RetryPolicy(max_retries=0))
        result = asyncio.run(requester.call("test", answer, model="m", tokens=1))

        assert result == "parsed"
        assert seen == [True, False]  # held while the request ran, free while it was parsed


class TestTokenizersLoadedBeforeFork:
    """A worker loads the configured models' tokenizers once in its main process, before its pool forks."""

    @pytest.mark.parametrize(
        ("summarizer", "embedder", "expected"),
        [
            pytest.param("openai", "openai", ["cl100k_base", "o200k_base"], id="openai-both"),
            pytest.param("template", "hashing", ["cl100k_base"], id="offline"),
        ],
    )
    def test_the_configured_models_encodings_are_loaded(
        self, settings: Any, summarizer: str, embedder: str, expected: list[str]
    ) -> None:
        settings.ENTITY_VECTORS_SUMMARIZER = summarizer
        settings.ENTITY_VECTORS_EMBEDDER = embedder
        settings.ENTITY_VECTORS_CHAT_MODEL = "gpt-4.1-mini"
        settings.ENTITY_VECTORS_EMBEDDING_MODEL = EMBEDDING_MODEL
        settings.OPENAI_API_KEY = "test-key"

        names = load_tokenizers()

        assert names == expected
        assert all(get_encoding(name) is not None for name in names)

    def test_the_worker_start_signal_loads_them(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loaded: list[bool] = []
        monkeypatch.setattr(openai_provider, "load_tokenizers", lambda: loaded.append(True) or [])
        receivers = worker_init._live_receivers(None)

        assert load_before_fork in receivers  # sent in the worker's main process, before the pool forks
        load_before_fork(sender=None)
        assert loaded == [True]
