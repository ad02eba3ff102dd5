"""The Celery app: every setting comes from celeryconfig.py; tasks are found in installed apps."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")

app = Celery("app")
app.config_from_object("celeryconfig")
app.autodiscover_tasks()
