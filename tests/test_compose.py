"""docker-compose.yml is valid and complete (checked with the docker-compose client; no engine here)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.processes import ROOT

COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="the docker-compose client is not installed")

SERVICES = {"postgres", "redis", "clickhouse", "migrate", "web", "worker", "worker-fast", "beat", "flower"}


def compose(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "FLOWER_"))}
    environment.update(env)
    assert COMPOSE is not None
    return subprocess.run(
        [COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_the_file_is_valid_with_every_service() -> None:
    secrets = {"DJANGO_SECRET_KEY": "a-long-random-value", "FLOWER_BASIC_AUTH": "admin:secret"}

    checked = compose("config", "-q", **secrets)
    services = compose("config", "--services", **secrets)

    assert checked.returncode == 0, checked.stderr
    assert set(services.stdout.split()) == SERVICES


def test_secrets_are_required_and_ports_stay_on_loopback() -> None:
    missing = compose("config", "-q")
    rendered = compose("config", DJANGO_SECRET_KEY="k", FLOWER_BASIC_AUTH="a:b")

    assert missing.returncode != 0 and "DJANGO_SECRET_KEY" in missing.stderr
    lines = rendered.stdout.splitlines()
    published = [lines[i + 1].strip() for i, line in enumerate(lines) if line.strip() == "ports:"]
    assert len(published) == 2  # the web app and Flower; the databases publish nothing
    assert all(port.startswith("- 127.0.0.1:") for port in published), published


def test_a_worker_of_its_own_takes_the_fast_lane() -> None:
    rendered = compose("config", DJANGO_SECRET_KEY="k", FLOWER_BASIC_AUTH="a:b").stdout

    assert "max-ai-task-queue-fast" in rendered  # worker-fast's queue (the settings' default name)


def test_the_image_embeds_by_meaning_without_a_key() -> None:
    """The stack's image has the offline semantic embedder: without OPENAI_API_KEY it is the default,
    not the hashing embedder."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (install,) = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    extras = install.split('".[', 1)[1].split("]", 1)[0].split(",")
    assert "semantic" in extras and "embedded" not in extras
