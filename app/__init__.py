"""The host Django project: settings, the Celery app, the host models and their entity configs."""

from app.celery import app as celery_app

__all__ = ["celery_app"]
