"""`manage.py runserver`: Django's development server, refusing settings that cannot work at once."""

from __future__ import annotations

from typing import Any

from django.contrib.staticfiles.management.commands.runserver import Command as StaticfilesRunserver
from django.core.servers.basehttp import get_internal_wsgi_application

from entity_vectors.management.base import OneLineChecks


class Command(OneLineChecks, StaticfilesRunserver):
    """Checks before the autoreloader starts, and exits non-zero on an error.

    Django's runserver checks, and loads the WSGI application, in its serving thread, where an
    error ends only that thread (a traceback, then the autoreloader waits for a file to change).
    Settings come from the environment, which no file change fixes.
    """

    def handle(self, *args: Any, **options: Any) -> None:
        """Check (unless --skip-checks) and load the WSGI application, then serve."""
        if not options.get("skip_checks"):
            self.check()  # SystemCheckError: one line per error (and its hint), exit status 1
        # app.wsgi refuses to serve (one line, exit status 4) with the development secret key
        # unless DEBUG is on: here that ends the process.
        get_internal_wsgi_application()
        super().handle(*args, **options)
