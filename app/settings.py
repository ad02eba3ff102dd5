"""Settings of the host project; every value can come from the environment (see README)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from entity_vectors.conf import host
from entity_vectors.conf.readers import or_default
from entity_vectors.exceptions import ConfigurationError

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

# Values from the environment are parsed by entity_vectors.conf.host. One that cannot work gives
# its default here (this module must load, or every process would end in a traceback); the system
# checks read it again and name it, and every process that starts work refuses to start on it.
DEBUG = or_default(host.debug, False)
# Commands and tests run with a development key; serving (app/wsgi.py, the deploy checks) refuses
# it unless DEBUG is on: set DJANGO_SECRET_KEY to a long random value in production.
DEVELOPMENT_SECRET_KEY = "dev-only-insecure-key-not-for-serving"
SECRET_KEY = or_default(host.secret_key, None) or DEVELOPMENT_SECRET_KEY
ALLOWED_HOSTS = or_default(host.allowed_hosts, ["localhost", "127.0.0.1"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "entity_vectors",
    "app",
    # After `app`, whose `runserver` (staticfiles' own, checking the settings before it serves) wins.
    "django.contrib.staticfiles",
]
if importlib.util.find_spec("django_celery_beat") is not None:
    # The `beat-db` extra: schedules in the database, editable in the admin
    # (`celery -A app beat -S django_celery_beat.schedulers:DatabaseScheduler`).
    INSTALLED_APPS.append("django_celery_beat")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The admin's styles under gunicorn: static files served by the app itself.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "app.urls"
WSGI_APPLICATION = "app.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def _default_database() -> dict[str, Any]:
    try:
        url = host.database_url()
    except ConfigurationError:
        # DATABASE_URL is set but cannot be used: no database at all (the checks name it), not another one.
        return {"ENGINE": "django.db.backends.dummy"}
    if url is None:
        VAR_DIR.mkdir(exist_ok=True)
        url = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    return host.database_settings(url, conn_max_age=or_default(host.database_conn_max_age, 60))


DATABASES = {"default": _default_database()}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # Wait for a lock instead of failing on it (the CLI and a solo worker may share the file).
            "timeout": 30,
            # Readers never block the writer (a progress bar, the web app); a commit is not an fsync.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            # Take the write lock when a transaction starts, so two writers queue instead of deadlocking.
            "transaction_mode": "IMMEDIATE",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"  # `manage.py collectstatic` (the Docker image does it)
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Without collectstatic (runserver, a plain checkout), whitenoise serves the apps' own files.
WHITENOISE_USE_FINDERS = True

# entity-vectors reads CLICKHOUSE_URL, OPENAI_* and ENTITY_VECTORS_* from here first, then from
# the environment; the defaults (embedded ClickHouse under var/, offline providers without an
# OpenAI key) live in entity_vectors.conf.

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "entity_vectors.conf.redaction.RedactingFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}},
    "loggers": {
        # Printed once, by this handler (not again by Celery's root handler in a worker).
        "entity_vectors": {
            "handlers": ["console"],
            "level": or_default(host.log_level, "INFO"),
            "propagate": False,
        },
        # A line per HTTP request otherwise (the OpenAI SDK's transport logs as `httpx2` where it
        # ships its own copy of httpx).
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        # Connection retries of the ClickHouse client: the error that follows says what matters.
        "urllib3": {"level": "ERROR"},
    },
}
