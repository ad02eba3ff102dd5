"""The README's first hour, on the embedded default, with real processes and nothing else set up.

`manage.py demo`, a superuser, `runserver`, a command while it runs, a token and a search over
HTTP, then an edit through the admin's HTTP form: searchable within 10 s with only `runserver`
running (the web process runs the fast lane itself), and no run recorded as failed.
"""

from __future__ import annotations

import contextlib
import html.parser
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT, free_port, http_ok, wait_until

pytestmark = pytest.mark.slow
SEARCHABLE_WITHIN = 10.0  # seconds, the bound for an admin edit


class FormFields(html.parser.HTMLParser):
    """The fields a browser would send for the first form with a submit row (the admin's change form)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        name = attributes.get("name")
        if tag == "input" and name and attributes.get("type") not in ("submit", "button", "file"):
            if attributes.get("type") in ("checkbox", "radio") and "checked" not in attributes:
                return
            self.fields[name] = attributes.get("value", "on" if attributes.get("type") == "checkbox" else "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.fields[name] = ""
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in attributes:
            self.fields[self._select] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.fields[self._textarea] += data.lstrip("\n") if not self.fields[self._textarea] else data


def form_fields(page: str) -> dict[str, str]:
    parser = FormFields()
    parser.feed(page)
    return parser.fields


class Laptop:
    """A fresh checkout's environment: SQLite and the embedded ClickHouse under one new directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DJANGO_", "ENTITY_VECTORS_", "CELERY_", "OPENAI_"))
            and key not in ("DATABASE_URL", "CLICKHOUSE_URL")
        }
        self.env.update(
            {
                "DJANGO_SETTINGS_MODULE": "app.settings",
                "DATABASE_URL": f"sqlite:///{home / 'db.sqlite3'}",
                "CLICKHOUSE_URL": f"chdb://{home / 'clickhouse'}",
                "CELERY_BROKER_URL": "redis://127.0.0.1:9/0",  # nothing there: no Redis on this laptop
                "ENTITY_VECTORS_LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.timings: dict[str, float] = {}

    def manage(self, step: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.timings[step] = time.monotonic() - started
        assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def failed_runs(self) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home / "db.sqlite3") as db:
            return db.execute("SELECT domain, error FROM entity_vectors_syncrun WHERE status = 'failed'").fetchall()

    def first_action(self, team: int) -> int:
        with sqlite3.connect(self.home / "db.sqlite3") as db:
            (row,) = db.execute("SELECT min(id) FROM app_action WHERE team_id = ?", (team,)).fetchall()
        return int(row[0])


@pytest.fixture
def laptop(tmp_path: Path) -> Laptop:
    return Laptop(tmp_path)


@contextlib.contextmanager
def runserver(laptop: Laptop, tmp_path: Path) -> Iterator[str]:
    """`runserver` on a free port (DJANGO_DEBUG=true, as the README says), stopped at the end."""
    port = free_port()
    log = (tmp_path / "runserver.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**laptop.env, "DJANGO_DEBUG": "true"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/admin/login/"), timeout=60, what="runserver to answer")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        print((tmp_path / "runserver.log").read_text()[-4000:])


def search(url: str, token: str, query: str) -> list[dict[str, Any]]:
    address = f"{url}/api/entity-vectors/search?" + urllib.parse.urlencode(
        {"domain": "action", "q": query, "limit": 3}
    )
    request = urllib.request.Request(address, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return list(json.loads(response.read())["results"])


class Browser:
    """Cookies, redirects and form posts, as a browser sends them (no JavaScript: the admin needs none)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def get(self, path: str) -> tuple[int, str, str]:
        with self._opener.open(self.base + path, timeout=30) as response:
            return response.status, urllib.parse.urlsplit(response.url).path, response.read().decode()

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, str, str]:
        body = urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(self.base + path, data=body, headers={"Referer": self.base + path})
        with self._opener.open(request, timeout=30) as response:
            return response.status, urllib.parse.urlsplit(response.url).path, response.read().decode()


def test_the_readme_s_first_hour_on_the_embedded_default(laptop: Laptop, tmp_path: Path) -> None:
    laptop.manage("demo", "demo")
    laptop.manage(
        "createsuperuser",
        "createsuperuser",
        "--noinput",
        "--username",
        "admin",
        "--email",
        "admin@example.com",
        DJANGO_SUPERUSER_PASSWORD="first-hour-pw",
    )
    with runserver(laptop, tmp_path) as url:
        token_output = laptop.manage("team_api_token", "team_api_token", "--team", "1").stdout
        token = token_output.strip()  # the token alone on stdout
        assert search(url, token, "users who signed up"), "the demo's actions are searchable"
        # A command while runserver holds the embedded store (its search opened it): the command
        # shares it, its run finishes, and runserver goes on serving once the command is gone.
        sync = laptop.manage("sync while runserver runs", "sync_entity_vectors", "--domain", "action", "--wait")
        assert "in use by another process" not in sync.stdout + sync.stderr
        assert search(url, token, "users who signed up")

        browser = Browser(url)
        _, _, login = browser.get("/admin/login/")
        fields = form_fields(login) | {"username": "admin", "password": "first-hour-pw"}
        assert browser.post("/admin/login/?next=/admin/", fields)[1] == "/admin/"
        action = laptop.first_action(team=1)
        status, _, page = browser.get(f"/admin/app/action/{action}/change/")
        assert status == 200
        edit = form_fields(page) | {
            "name": "Renewed a plan for a sailing club",
            "description": "A treasurer renewed the yearly plan of a sailing club",
        }
        started = time.monotonic()
        status, _, saved = browser.post(f"/admin/app/action/{action}/change/", edit)
        assert status == 200 and "was changed successfully" in saved, saved[-2000:]

        def found() -> bool:
            hits = search(url, token, "sailing club plan renewed")
            return bool(hits) and str(hits[0]["id"]) == str(action) and "sailing club" in hits[0]["text"]

        wait_until(found, timeout=SEARCHABLE_WITHIN, what="the admin edit in search, with only runserver running")
        laptop.timings["admin edit -> searchable"] = time.monotonic() - started

    assert laptop.failed_runs() == []
    print("first hour:", {step: round(seconds, 1) for step, seconds in laptop.timings.items()})

