"""Every setting the project reads, given what cannot work, is one system-check error line naming it.

The table: every setting by {blank, NaN, inf, negative, huge, wrong type, NUL, ...} where the case
applies, each checked in-process through Django's check framework (the setting given as a Django
setting, which wins over the environment). Then the processes: every management command of the
project, `runserver`, the WSGI app, a Celery worker and beat, each started for real with a bad
value in its environment, print one line naming it (and a hint) and exit non-zero, without a
traceback; `manage.py check` names it once in Django's frame; a worker without its Redis says so.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core import checks

from entity_vectors.checks import TAG
from tests.support.processes import ROOT

SECRET = "sekrit-Pw-4711"
LONG = "x" * 100_000


@dataclass(frozen=True)
class Bad:
    """A setting, a value that cannot work, and what its one error line must say."""

    setting: str
    value: Any
    says: str


def _ints(name: str, low: int, high: int) -> list[Any]:
    return [
        pytest.param(Bad(name, " ", "is not an integer"), id=f"{name}-blank"),
        pytest.param(Bad(name, "nan", "is not an integer"), id=f"{name}-nan"),
        pytest.param(Bad(name, "inf", "is not an integer"), id=f"{name}-inf"),
        pytest.param(Bad(name, str(low - 1), f"must be at least {low}"), id=f"{name}-negative"),
        pytest.param(Bad(name, str(high + 1), f"must be at most {high}"), id=f"{name}-huge"),
        pytest.param(Bad(name, "9" * 5000, f"must be at most {high}"), id=f"{name}-5000-digits"),
        pytest.param(Bad(name, "abc", "is not an integer"), id=f"{name}-text"),
        pytest.param(Bad(name, [1], "is not an integer"), id=f"{name}-list"),
        pytest.param(Bad(name, 1.5, "is not an integer"), id=f"{name}-fraction"),
        pytest.param(Bad(name, "1\x00", "is not an integer"), id=f"{name}-nul"),
    ]


def _floats(name: str, low: float, high: float) -> list[Any]:
    return [
        pytest.param(Bad(name, " ", "is not a number"), id=f"{name}-blank"),
        pytest.param(Bad(name, "nan", "must be a finite number"), id=f"{name}-nan"),
        pytest.param(Bad(name, "inf", "must be a finite number"), id=f"{name}-inf"),
        pytest.param(Bad(name, float("-inf"), "must be a finite number"), id=f"{name}-minus-inf"),
        pytest.param(Bad(name, "1e400", "must be a finite number"), id=f"{name}-overflow"),
        pytest.param(Bad(name, str(low - 1), f"must be at least {low:g}"), id=f"{name}-negative"),
        pytest.param(Bad(name, str(high * 10), f"must be at most {high:g}"), id=f"{name}-huge"),
        pytest.param(Bad(name, 10**400, f"must be at most {high:g}"), id=f"{name}-huge-int"),
        pytest.param(Bad(name, "soon", "is not a number"), id=f"{name}-text"),
        pytest.param(Bad(name, [1], "is not a number"), id=f"{name}-list"),
        pytest.param(Bad(name, "1\x00", "is not a number"), id=f"{name}-nul"),
    ]


def _bools(name: str) -> list[Any]:
    return [
        pytest.param(Bad(name, " ", "is not a boolean"), id=f"{name}-blank"),
        pytest.param(Bad(name, "nan", "is not a boolean"), id=f"{name}-nan"),
        pytest.param(Bad(name, "maybe", "is not a boolean"), id=f"{name}-word"),
        pytest.param(Bad(name, [1], "is not a boolean"), id=f"{name}-list"),
        pytest.param(Bad(name, "true\x00", "is not a boolean"), id=f"{name}-nul"),
    ]


def _texts(name: str, off_pattern: str | None = None, says: str = "must be", blank: bool = True) -> list[Any]:
    cases = [
        *([pytest.param(Bad(name, " ", "must not be blank"), id=f"{name}-blank")] if blank else []),
        pytest.param(Bad(name, "a\x00b", "must not contain control characters"), id=f"{name}-nul"),
        pytest.param(Bad(name, "a\nb", "must not contain control characters"), id=f"{name}-newline"),
        pytest.param(Bad(name, [1], "must be text"), id=f"{name}-list"),
        pytest.param(Bad(name, LONG, "is too long"), id=f"{name}-long"),
    ]
    if off_pattern is not None:
        cases.append(pytest.param(Bad(name, off_pattern, says), id=f"{name}-pattern"))
    return cases


def _choices(name: str, unknown: str, says: str) -> list[Any]:
    return [*_texts(name), pytest.param(Bad(name, unknown, says), id=f"{name}-unknown")]


def _urls(name: str, wrong: str, says: str) -> list[Any]:
    return [
        *_texts(name),
        pytest.param(Bad(name, wrong, says), id=f"{name}-wrong"),
        pytest.param(Bad(name, f"redis://user:{SECRET}@host:99999/0", name), id=f"{name}-port-secret"),
    ]


def _secrets(name: str, says: str, spaces: bool = False) -> list[Any]:
    return [
        pytest.param(Bad(name, " ", name), id=f"{name}-blank"),
        pytest.param(Bad(name, f"{SECRET}\x00", name), id=f"{name}-nul"),
        *([] if spaces else [pytest.param(Bad(name, f"{SECRET} {SECRET}", name), id=f"{name}-space")]),
        pytest.param(Bad(name, [SECRET], name), id=f"{name}-list"),
        pytest.param(Bad(name, SECRET * 1000, says), id=f"{name}-long"),
    ]


def _objects(name: str, good_key: str, value_of: Any) -> list[Any]:
    """A JSON object setting: its shape, its keys, and each of its numbers."""

    def entry(number: Any) -> str:
        return f'{{"{good_key}": {value_of(number)}}}'

    return [
        pytest.param(Bad(name, " ", "is not JSON"), id=f"{name}-blank"),
        pytest.param(Bad(name, "{not json", "is not JSON"), id=f"{name}-not-json"),
        pytest.param(Bad(name, "[" * 100_000, "is not JSON"), id=f"{name}-deep"),
        pytest.param(Bad(name, "[1]", "must be a JSON object"), id=f"{name}-list"),
        pytest.param(Bad(name, ["a"], "must be a JSON object"), id=f"{name}-python-list"),
        pytest.param(
            Bad(name, f'{{"a\\u0000b": {value_of(1)}}}', "control characters"), id=f"{name}-nul-key"
        ),
        pytest.param(Bad(name, entry("NaN"), name), id=f"{name}-nan"),
        pytest.param(Bad(name, entry("Infinity"), name), id=f"{name}-inf"),
        pytest.param(Bad(name, entry("-1"), name), id=f"{name}-negative"),
        pytest.param(Bad(name, entry("1e40"), name), id=f"{name}-huge"),
        pytest.param(Bad(name, entry('"abc"'), name), id=f"{name}-text"),
    ]


def _dollars(name: str) -> list[Any]:
    return [
        pytest.param(Bad(name, " ", "is not an amount of dollars"), id=f"{name}-blank"),
        pytest.param(Bad(name, "nan", "must be a finite amount"), id=f"{name}-nan"),
        pytest.param(Bad(name, "inf", "must be a finite amount"), id=f"{name}-inf"),
        pytest.param(Bad(name, "-1", "must be 0 or more"), id=f"{name}-negative"),
        pytest.param(Bad(name, "1e12", "must be at most"), id=f"{name}-huge"),
        pytest.param(Bad(name, "lots", "is not an amount of dollars"), id=f"{name}-text"),
        pytest.param(Bad(name, [1], "is not an amount of dollars"), id=f"{name}-list"),
        pytest.param(Bad(name, "1\x00", "is not an amount of dollars"), id=f"{name}-nul"),
    ]


HOURS = 3600
TABLE = [
    # providers and models
    *_choices("ENTITY_VECTORS_SUMMARIZER", "claude", "is not a known summarizer"),
    *_choices("ENTITY_VECTORS_EMBEDDER", "word2vec", "is not a known embedder"),
    *_texts("ENTITY_VECTORS_CHAT_MODEL", "gpt 4", "must not contain spaces"),
    *_texts("ENTITY_VECTORS_EMBEDDING_MODEL", "text embedding", "must not contain spaces"),
    *_ints("ENTITY_VECTORS_EMBEDDING_DIMENSIONS", 1, 16_384),
    *_ints("ENTITY_VECTORS_EMBEDDING_VERSION", 1, 2**32 - 1),
    pytest.param(
        Bad("ENTITY_VECTORS_EMBEDDING_VERSION", str(2**40), "must be at most 4294967295"),
        id="ENTITY_VECTORS_EMBEDDING_VERSION-2**40",
    ),
    *_secrets("OPENAI_API_KEY", "printable ASCII"),
    *_urls("OPENAI_BASE_URL", "ftp://host/v1", "must be a URL of http:// or https://"),
    *_floats("ENTITY_VECTORS_PROVIDER_TIMEOUT", 0.01, HOURS),
    *_floats("ENTITY_VECTORS_PROVIDER_CONNECT_TIMEOUT", 0.01, HOURS),
    *_ints("ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER", 1, 100),
    *_ints("ENTITY_VECTORS_PROVIDER_MAX_RETRIES", 0, 100),
    *_floats("ENTITY_VECTORS_PROVIDER_MAX_BACKOFF", 0, HOURS),
    *_ints("ENTITY_VECTORS_MAX_SUMMARY_INPUT_TOKENS", 16, 2_000_000),
    *_ints("ENTITY_VECTORS_MAX_EMBEDDING_INPUT_TOKENS", 16, 2_000_000),
    *_objects("ENTITY_VECTORS_RATE_LIMITS", "gpt-4.1-mini", lambda number: f'{{"rpm": {number}}}'),
    *_objects("ENTITY_VECTORS_PRICES", "gpt-4.1-mini", lambda number: f'{{"input": {number}}}'),
    *_dollars("ENTITY_VECTORS_MONTHLY_BUDGET_USD"),
    *_objects("ENTITY_VECTORS_BUDGETS", "42", lambda number: number),
    *_ints("ENTITY_VECTORS_BATCH_API_THRESHOLD", 0, 10**9),
    *_ints("ENTITY_VECTORS_BATCH_API_MAX_REQUESTS", 1, 50_000),
    *_ints("ENTITY_VECTORS_BATCH_API_POLL_SECONDS", 1, 24 * HOURS),
    *_choices("ENTITY_VECTORS_SEARCH_MODE", "fuzzy", "is not understood"),
    *_texts("ENTITY_VECTORS_EVAL_QUERIES"),
    # services
    *_urls("CLICKHOUSE_URL", "ftp://host", "is not understood"),
    *_texts("ENTITY_VECTORS_CLICKHOUSE_TABLE", "x; DROP TABLE y", "must be a plain identifier"),
    # Blank is no cluster (one server), as unset.
    *_texts("ENTITY_VECTORS_CLICKHOUSE_CLUSTER", "a/b", "must be a cluster name", blank=False),
    *_floats("ENTITY_VECTORS_CLICKHOUSE_CONNECT_TIMEOUT", 0.1, 600),
    *_ints("ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS", 0, 10**12),
    *_ints("ENTITY_VECTORS_APPROXIMATE_SEARCH_EF", 16, 100_000),
    *_texts("ENTITY_VECTORS_QUEUE", "my queue", "must be a queue name"),
    *_texts("ENTITY_VECTORS_FAST_QUEUE", "my queue", "must be a queue name"),
    *_urls("CELERY_BROKER_URL", "localhost:6379", "must be a broker URL"),
    *_urls("CELERY_RESULT_BACKEND", "redis:/x", "must be a result backend URL"),
    *_urls("ENTITY_VECTORS_LIMITER_URL", "http://host/0", "must be a URL of redis://"),
    *_secrets("ENTITY_VECTORS_METRICS_TOKEN", "16 to 200 printable ASCII"),
    *_texts("ENTITY_VECTORS_METRICS_PREFIX", "a b", "printable ASCII characters without spaces"),
    *_choices("ENTITY_VECTORS_EXECUTION", "sometimes", "is not understood"),
    # runs
    *_objects("ENTITY_VECTORS_SCHEDULES", "action", lambda number: number),
    pytest.param(
        Bad("ENTITY_VECTORS_SCHEDULES", '{"Not A Domain": 60}', "keyed by domain names"),
        id="ENTITY_VECTORS_SCHEDULES-bad-domain",
    ),
    *_ints("ENTITY_VECTORS_SCHEDULE_SECONDS", 1, 366 * 24 * HOURS),
    *_ints("ENTITY_VECTORS_TASK_MAX_RETRIES", 0, 100),
    *_floats("ENTITY_VECTORS_TASK_RETRY_BACKOFF", 0, HOURS),
    *_ints("ENTITY_VECTORS_DELAY_BETWEEN_BATCHES", 0, 24 * HOURS),
    *_ints("ENTITY_VECTORS_RUN_LEASE_SECONDS", 5, 7 * 24 * HOURS),
    *_ints("ENTITY_VECTORS_MAX_COUNTDOWN", 1, 24 * HOURS),
    *_bools("ENTITY_VECTORS_CHANGE_TRIGGERS"),
    *_bools("ENTITY_VECTORS_FAST_LANE"),
    *_bools("ENTITY_VECTORS_FAST_LANE_ON_BATCH_WORKERS"),
    *_bools("ENTITY_VECTORS_EMBEDDED_SHARE"),
    *_floats("ENTITY_VECTORS_FAST_LANE_DELAY", 0, HOURS),
    *_ints("ENTITY_VECTORS_FAST_LANE_MAX_ENTITIES", 1, 100_000),
    *_floats("ENTITY_VECTORS_FAST_LANE_POLL_SECONDS", 0, HOURS),
    *_ints("ENTITY_VECTORS_CLAIM_LEASE_SECONDS", 1, 7 * 24 * HOURS),
    *_ints("ENTITY_VECTORS_TEAM_QUANTUM", 0, 100_000_000),
    *_floats("ENTITY_VECTORS_INTERACTIVE_SHARE", 0, 0.9),
    *_floats("ENTITY_VECTORS_FLUSH_INTERVAL", 0, HOURS),
    *_ints("ENTITY_VECTORS_KEEP_RUNS", 1, 1_000_000),
    *_ints("ENTITY_VECTORS_KEEP_FAILED_DAYS", 1, 36_500),
    *_ints("ENTITY_VECTORS_RECONCILE_PAGE", 1, 1_000_000),
    *_ints("ENTITY_VECTORS_PARK_AFTER", 1, 1000),
    # the project's own modules: Django's settings, Celery's and Flower's configuration
    *_urls("DATABASE_URL", "foo://host/db", "is not understood"),
    *_ints("DATABASE_CONN_MAX_AGE", 0, 24 * HOURS),
    *_choices("ENTITY_VECTORS_LOG_LEVEL", "LOUD", "is not a log level"),
    *_bools("DJANGO_DEBUG"),
    *_secrets("DJANGO_SECRET_KEY", "is too long", spaces=True),
    *_texts("DJANGO_ALLOWED_HOSTS", "a,b/c", "which is not a host name"),
    *_ints("CELERY_VISIBILITY_TIMEOUT", 1, 7 * 24 * HOURS),
    *_ints("CELERY_DB_REUSE_MAX", 0, 1_000_000),
    *_texts("CELERY_BEAT_SCHEDULE_FILENAME"),
    *_texts("FLOWER_ADDRESS", "a/b", "must be a host name"),
    *_ints("FLOWER_PORT", 1, 65535),
    *_secrets("FLOWER_BASIC_AUTH", "is too long"),
    pytest.param(
        Bad("FLOWER_BASIC_AUTH", SECRET, "must be user:password pairs"), id="FLOWER_BASIC_AUTH-no-colon"
    ),
    *_bools("FLOWER_UNAUTHENTICATED_API"),
]


def _settings_in(path: Path) -> set[str]:
    return set(
        re.findall(
            r'"((?:ENTITY_VECTORS|CELERY|DATABASE|DJANGO|FLOWER|OPENAI|CLICKHOUSE)_[A-Z_]+)"',
            path.read_text(),
        )
    )


class TestEverySettingIsParsed:
    """A value that cannot work is one error line that names the setting and shows the value
    (shortened, secrets redacted), and nothing else is reported."""

    def test_the_table_covers_every_setting_the_project_reads(self) -> None:
        read = set()
        for path in [
            *(ROOT / "entity_vectors" / "conf").glob("*.py"),
            ROOT / "entity_vectors" / "providers" / "pricing.py",
        ]:
            read |= _settings_in(path)
        tabled = {case.values[0].setting for case in TABLE}

        assert read - tabled == set()

    @pytest.mark.parametrize("bad", TABLE)
    def test_one_error_line_naming_the_setting(self, bad: Bad, settings: Any) -> None:
        setattr(settings, bad.setting, bad.value)

        errors = [message for message in checks.run_checks(tags=[TAG]) if message.is_serious()]

        assert len(errors) == 1, errors
        (error,) = errors
        assert error.msg.startswith(bad.setting), error.msg
        assert bad.says in error.msg
        assert "\n" not in error.msg and len(error.msg) < 300
        assert SECRET not in error.msg


@dataclass(frozen=True)
class Process:
    """A process started for real, with one setting that cannot work in its environment."""

    command: tuple[str, ...]
    setting: str
    value: str
    settings_module: str = "tests.settings"


def _manage(*arguments: str) -> tuple[str, ...]:
    return (sys.executable, "manage.py", *arguments)


def _celery(*arguments: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "celery", "-A", "app", *arguments)


def _run(process: Process, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str], list[str]]:
    """Run it from the repository root; its result, its non-blank stdout and stderr lines."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": process.settings_module,
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
        "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp_path / "celerybeat-schedule"),
        "DJANGO_DEBUG": "true",
        process.setting: process.value,
    }
    finished = subprocess.run(process.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return (
        finished,
        [line for line in finished.stdout.splitlines() if line.strip()],
        [line for line in finished.stderr.splitlines() if line.strip()],
    )


# Django's own `manage.py check` keeps Django's frame around the error lines.
DJANGO_CHECK = [
    pytest.param(Process(_manage("check"), "ENTITY_VECTORS_TASK_RETRY_BACKOFF", "nan"), id="check-nan"),
    pytest.param(
        Process(_manage("check"), "ENTITY_VECTORS_EMBEDDING_VERSION", str(2**40)), id="check-version"
    ),
    # Read by the host's settings module at import: it loads, and the check names the value.
    pytest.param(
        Process(_manage("check"), "DATABASE_CONN_MAX_AGE", "abc", "app.settings"), id="check-conn-max-age"
    ),
    pytest.param(
        Process(_manage("check"), "ENTITY_VECTORS_LOG_LEVEL", "LOUD", "app.settings"), id="check-log-level"
    ),
]

BAD_URL = "ftp://host"
# Every command of the project (COMMANDS below), the web app, a worker and beat. A command is given
# the arguments it needs, so that nothing but the setting stops it.
PROJECT = [
    pytest.param(
        Process(_manage("entity_vectors_status"), "ENTITY_VECTORS_FLUSH_INTERVAL", "nan"),
        id="entity_vectors_status",
    ),
    pytest.param(
        Process(_manage("entity_vectors_unpark", "--domain", "action", "--all"), "CLICKHOUSE_URL", BAD_URL),
        id="entity_vectors_unpark",
    ),
    pytest.param(
        Process(_manage("evaluate_search"), "ENTITY_VECTORS_FAST_LANE_DELAY", "abc"), id="evaluate_search"
    ),
    pytest.param(
        Process(
            _manage("migrate_embeddings", "--domain", "action", "--to-version", "2"),
            "ENTITY_VECTORS_FAST_LANE_DELAY",
            "abc",
        ),
        id="migrate_embeddings",
    ),
    pytest.param(
        Process(
            _manage("search_entities", "--domain", "action", "--team", "1", "q"), "CLICKHOUSE_URL", BAD_URL
        ),
        id="search_entities",
    ),
    # It skips the system checks (settings of the pipeline must not stop it), not its own setting.
    pytest.param(
        Process(_manage("serve_clickhouse", "--port", "0"), "CLICKHOUSE_URL", BAD_URL), id="serve_clickhouse"
    ),
    pytest.param(
        Process(
            _manage("sync_entity_vectors", "--domain", "action", "--wait"),
            "ENTITY_VECTORS_FAST_LANE_DELAY",
            "abc",
        ),
        id="sync_entity_vectors",
    ),
    pytest.param(Process(_manage("demo"), "CLICKHOUSE_URL", BAD_URL), id="demo"),
    pytest.param(
        Process(_manage("team_api_token", "--team", "1"), "ENTITY_VECTORS_FAST_LANE_DELAY", "abc"),
        id="team_api_token",
    ),
    pytest.param(
        Process(_manage("runserver", "127.0.0.1:8"), "ENTITY_VECTORS_FAST_LANE_DELAY", "inf"), id="runserver"
    ),
    pytest.param(
        Process((sys.executable, "-c", "import app.wsgi"), "ENTITY_VECTORS_PROVIDER_TIMEOUT", "nan"),
        id="wsgi",
    ),
    pytest.param(
        Process(
            _celery("worker", "--pool", "solo", "-Q", "max-ai-task-queue"),
            "ENTITY_VECTORS_TASK_RETRY_BACKOFF",
            "nan",
        ),
        id="worker-retry-backoff",
    ),
    pytest.param(
        Process(_celery("worker", "--pool", "solo"), "DATABASE_CONN_MAX_AGE", "abc", "app.settings"),
        id="worker-conn-max-age",
    ),
    pytest.param(
        Process(_celery("worker", "--pool", "solo"), "CLICKHOUSE_URL", BAD_URL), id="worker-clickhouse"
    ),
    pytest.param(Process(_celery("beat"), "ENTITY_VECTORS_SCHEDULE_SECONDS", "abc"), id="beat-schedule"),
    pytest.param(Process(_celery("beat"), "ENTITY_VECTORS_BUDGETS", '{"42": NaN}'), id="beat-budgets"),
    pytest.param(
        Process(_celery("beat"), "ENTITY_VECTORS_FAST_LANE_DELAY", "abc"), id="beat-fast-lane-delay"
    ),
]
COMMANDS = sorted(
    path.stem
    for folder in (
        ROOT / "entity_vectors" / "management" / "commands",
        ROOT / "app" / "management" / "commands",
    )
    for path in folder.glob("*.py")
    if path.stem != "__init__"
)


class TestProcessesRefuseWithOneLine:
    """The project's processes started from the repository root with a setting that cannot work:
    one line naming it (and at most one hint line), a non-zero exit, no traceback."""

    def test_every_command_of_the_project_is_tried(self) -> None:
        tried = {case.values[0].command[2] for case in PROJECT if case.values[0].command[1] == "manage.py"}

        assert set(COMMANDS) - tried == set()

    @pytest.mark.parametrize("process", PROJECT)
    def test_one_line_and_a_non_zero_exit(self, process: Process, tmp_path: Path) -> None:
        finished, out, err = _run(process, tmp_path)

        output = finished.stdout + finished.stderr
        assert finished.returncode != 0, output
        assert "Traceback" not in output
        (error, *hints) = err
        assert process.setting in error, output
        assert hints == [] or (len(hints) == 1 and hints[0].startswith("  hint: ")), output
        # Celery's beat says that it is starting before any code of the project can run.
        assert out == [] or (out == [out[0]] and out[0].startswith("celery beat v")), output

    @pytest.mark.parametrize("process", DJANGO_CHECK)
    def test_django_check_names_it_once(self, process: Process, tmp_path: Path) -> None:
        finished, out, err = _run(process, tmp_path)

        output = finished.stdout + finished.stderr
        assert finished.returncode != 0, output
        assert "Traceback" not in output
        naming = [line for line in out + err if process.setting in line]
        assert len(naming) == 1, output
        assert len(out + err) <= 8, output  # Django's frame of a check error, and a hint


class TestWorkerWithoutRedis:
    """A worker started while its Redis is down says so in one line and exits, instead of retrying."""

    @pytest.mark.parametrize(
        ("setting", "why"),
        [
            pytest.param("CELERY_BROKER_URL", "the worker takes its tasks from it", id="broker"),
            pytest.param(
                "CELERY_RESULT_BACKEND", "a run's batches report to their flush through it", id="results"
            ),
        ],
    )
    def test_one_line_and_a_non_zero_exit(self, setting: str, why: str, tmp_path: Path) -> None:
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "CLICKHOUSE_URL": f"chdb://{tmp_path / 'clickhouse'}",
            setting: f"redis://127.0.0.1:{port}/0",
            # CI runs as root, where Celery first warns about that (on six lines).
            "PYTHONWARNINGS": "ignore:You're running the worker with superuser privileges",
        }

        finished = subprocess.run(
            _celery("worker", "--pool", "solo", "-Q", "max-ai-task-queue"),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,  # Celery's own retries would take about 45 minutes
        )

        output = finished.stdout + finished.stderr
        assert finished.returncode == 2, output
        assert [line for line in output.splitlines() if line.strip()] == [
            f"celery worker: Redis at 127.0.0.1:{port} is unreachable (redis://127.0.0.1:{port}/0): "
            f"connection refused; start Redis, or set {setting} ({why})"
        ]
