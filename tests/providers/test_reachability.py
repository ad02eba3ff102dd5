"""A provider that takes no connection is given up on after a few tries; 429 and 5xx keep their retries.

Through the real SDK: a closed loopback port for "connection refused", the loopback server for
answers (200, 429, 5xx, a hung answer).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx2
import openai
import pytest
from asgiref.sync import async_to_sync

from entity_vectors.exceptions import (
    ProviderRateLimited,
    ProviderUnavailable,
    ProviderUnreachable,
)
from entity_vectors.providers import ConnectionBreaker, ProviderUsage, open_providers
from entity_vectors.providers.reachability import connection_failure, host_of
from entity_vectors.runtime.limiter import LocalLimiter
from tests.support.openai_server import OpenAIServer
from tests.support.ports import DEAD_HOST_REQUESTS, closed_port, unanswered_port


def summarize(
    texts: list[str], parallel: int = 1, breaker: ConnectionBreaker | None = None
) -> tuple[list[Any], ProviderUsage, float]:
    """The configured summarizer over `texts`, `parallel` requests at a time; results, usage, seconds."""
    usage = ProviderUsage()

    async def run() -> list[Any]:
        async with open_providers(LocalLimiter(parallel), usage, breaker=breaker) as providers:
            return await providers.summarizer.summarize(texts, "Summarize.")

    started = time.monotonic()
    results = async_to_sync(run)()
    return results, usage, time.monotonic() - started


def sdk_error(cause: BaseException) -> openai.APIConnectionError:
    """The SDK's connection error raised from `cause`, chained as the SDK chains it."""
    request = httpx2.Request("POST", "http://provider.example:8000/v1/chat/completions")
    try:
        try:
            raise cause
        except BaseException as inner:
            if isinstance(cause, httpx2.TimeoutException):
                raise openai.APITimeoutError(request=request) from inner
            raise openai.APIConnectionError(request=request) from inner
    except openai.APIConnectionError as error:
        return error


class TestWhatCountsAsUnreachable:
    """Only a request that never reached the server counts: an answer of any kind, or a slow one, does not."""

    @pytest.mark.parametrize(
        ("cause", "reason"),
        [
            pytest.param(
                httpx2.ConnectError("All connection attempts failed"),
                "cannot connect: All connection attempts failed",
                id="connect-error",
            ),
            pytest.param(httpx2.ConnectTimeout("timed out"), "no connection within 5 s", id="connect-timeout"),
            pytest.param(httpx2.ReadTimeout("timed out"), None, id="read-timeout"),
            pytest.param(httpx2.RemoteProtocolError("server disconnected"), None, id="dropped-answer"),
        ],
    )
    def test_connection_failures_are_told_from_slow_or_broken_answers(
        self, cause: BaseException, reason: str | None
    ) -> None:
        assert connection_failure(sdk_error(cause)) == reason

    def test_refused_and_no_such_host_say_so(self) -> None:
        refused = httpx2.ConnectError("All connection attempts failed")
        refused.__cause__ = ConnectionRefusedError(111, "Connect call failed")
        unknown = httpx2.ConnectError("Name or service not known")
        unknown.__cause__ = socket.gaierror(-2, "Name or service not known")

        assert connection_failure(sdk_error(refused)) == "connection refused"
        assert connection_failure(sdk_error(unknown)) == "DNS lookup failed"

    @pytest.mark.parametrize(
        ("url", "host"),
        [
            ("http://127.0.0.1:9/v1", "127.0.0.1:9"),
            ("https://api.openai.com/v1", "api.openai.com:443"),
            ("http://llm.internal/v1/", "llm.internal:80"),
            ("http://[::1]:8000/v1", "[::1]:8000"),
        ],
    )
    def test_the_host_is_named_with_its_port(self, url: str, host: str) -> None:
        assert host_of(url) == host


class TestBreaker:
    """Failures in a row per host; any answer starts the count again."""

    def test_an_answer_between_failures_starts_the_count_again(self, settings: Any) -> None:
        settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
        breaker = ConnectionBreaker(threshold=3)
        url = "http://127.0.0.1:9/v1/"

        breaker.failed(url, "connection refused")
        breaker.failed(url, "connection refused")
        breaker.answered(url)
        breaker.failed(url, "connection refused")
        breaker.failed(url, "connection refused")
        breaker.check(url)  # still closed: never three in a row
        with pytest.raises(ProviderUnreachable) as raised:
            breaker.failed(url, "connection refused")

        assert str(raised.value) == (
            "the provider at 127.0.0.1:9 is unreachable (connection refused) after 3 attempts in a row; "
            "check OPENAI_BASE_URL (http://127.0.0.1:9/v1)"
        )
        assert raised.value.host == "127.0.0.1:9"
        with pytest.raises(ProviderUnreachable):
            breaker.check(url)  # open: nothing more goes there
        breaker.check("http://127.0.0.1:10/v1")  # another host is another count

    def test_without_a_base_url_the_network_is_the_suspect(self, settings: Any) -> None:
        settings.OPENAI_BASE_URL = ""
        breaker = ConnectionBreaker(threshold=1)

        with pytest.raises(ProviderUnreachable, match=r"api\.openai\.com:443 .* check the network, or OPENAI_BASE_URL"):
            breaker.failed("https://api.openai.com/v1", "DNS lookup failed")


class TestUnreachableHosts:
    """A closed port, or one that takes no connection, through the SDK: a few requests, seconds, one
    error naming the host."""

    def test_requests_stop_after_three_refusals_in_a_row(self, llm: OpenAIServer, settings: Any) -> None:
        port = closed_port()
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 4  # 5 attempts each, 50 in all, without the breaker

        results, usage, seconds = summarize([f"entity {index}" for index in range(10)])

        assert all(isinstance(result, ProviderUnreachable) for result in results)
        assert usage.requests == 3  # one request at a time: the third refusal in a row ends it
        assert seconds < 10
        assert str(results[0]).startswith(
            f"the provider at 127.0.0.1:{port} is unreachable (connection refused) after 3 attempts"
        )
        assert f"check OPENAI_BASE_URL (http://127.0.0.1:{port}/v1)" in str(results[0])
        assert llm.requests == []

    def test_requests_in_flight_at_once_end_there_too(self, llm: OpenAIServer, settings: Any) -> None:
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{closed_port()}/v1"

        results, usage, _ = summarize([f"entity {index}" for index in range(40)], parallel=5)

        assert all(isinstance(result, ProviderUnreachable) for result in results)
        assert usage.requests <= DEAD_HOST_REQUESTS  # not 40 x 3 attempts

    def test_a_host_that_takes_no_connection_is_given_up_on_within_the_connect_timeout(
        self, llm: OpenAIServer, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PROVIDER_TIMEOUT = 60  # a whole request may take long; connecting may not
        settings.ENTITY_VECTORS_PROVIDER_CONNECT_TIMEOUT = 0.5
        with unanswered_port() as port:
            settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"

            results, usage, seconds = summarize([f"entity {index}" for index in range(20)], parallel=5)

        assert all(isinstance(result, ProviderUnreachable) for result in results)
        assert "is unreachable (no connection within 0.5 s)" in str(results[0])
        assert usage.requests <= DEAD_HOST_REQUESTS  # the first five time out together
        assert seconds < 10

    def test_a_breaker_shared_by_later_calls_sends_them_nothing(self, llm: OpenAIServer, settings: Any) -> None:
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{closed_port()}/v1"
        breaker = ConnectionBreaker()
        summarize(["first batch"], breaker=breaker)

        results, usage, _ = summarize(["second batch"], breaker=breaker)

        assert isinstance(results[0], ProviderUnreachable)
        assert usage.requests == 0

    def test_the_connect_timeout_is_its_own_setting(self, settings: Any) -> None:
        from entity_vectors import conf

        settings.ENTITY_VECTORS_PROVIDER_TIMEOUT = 60
        assert conf.provider_connect_timeout() == 5.0
        settings.ENTITY_VECTORS_PROVIDER_CONNECT_TIMEOUT = 2
        assert conf.provider_connect_timeout() == 2.0
        settings.ENTITY_VECTORS_PROVIDER_TIMEOUT = 1  # never longer than a whole request may take
        assert conf.provider_connect_timeout() == 1.0


class TestAnswersKeepTheirRetries:
    """429, 5xx and slow answers come from a server that is there: retried as before, never given up on early."""

    def test_5xx_is_retried_every_time_the_settings_allow(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 5
        settings.ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER = 1
        llm.fail_when("BROKEN", status=503, path="/chat/completions")

        (result,), usage, _ = summarize(["BROKEN entity"])

        assert isinstance(result, ProviderUnavailable) and not isinstance(result, ProviderUnreachable)
        assert "after 6 attempts" in str(result)
        assert usage.requests == 6
        assert [request.status for request in llm.chat_requests()] == [503] * 6

    def test_429_is_retried_every_time_the_settings_allow(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 5
        settings.ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER = 1
        llm.fail_next(100, status=429, retry_after=0.01, path="/chat/completions")

        (result,), usage, _ = summarize(["any entity"])

        assert isinstance(result, ProviderRateLimited)
        assert usage.requests == 6

    def test_answers_then_success_land(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 4
        settings.ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER = 1
        llm.fail_next(2, status=500, path="/chat/completions")
        llm.fail_next(2, status=429, retry_after=0.01, path="/chat/completions")

        (result,), usage, _ = summarize(["fine in the end"])

        assert result == "fine in the end"
        assert usage.requests == 5

    def test_a_hung_answer_is_a_timeout_not_an_unreachable_host(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_PROVIDER_TIMEOUT = 0.5
        settings.ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER = 1
        llm.hang_next(1, seconds=2, path="/chat/completions")

        (result,), usage, _ = summarize(["slow then fine"])

        assert result == "slow then fine"
        assert usage.requests == 2
