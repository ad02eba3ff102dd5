"""WSGI entry point (gunicorn). Refuses to serve on settings that cannot work, or with the development
secret key unless DEBUG is on: one line each on stderr, and exit status 4."""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
application = get_wsgi_application()

from entity_vectors.conf.startup import refuse_to_start, settings_problems  # noqa: E402 - Django is set up now

# 4 is gunicorn's "application failed to load": its arbiter stops instead of restarting workers
# that would refuse again.
APP_LOAD_ERROR = 4
refuse_to_start("web", settings_problems(), status=APP_LOAD_ERROR)
if not settings.DEBUG and (
    getattr(settings, "DEVELOPMENT_SECRET_KEY", None) == settings.SECRET_KEY or len(settings.SECRET_KEY) < 32
):
    from django.core.checks import Error

    refuse_to_start(
        "web",
        [
            Error(
                "refusing to serve without a real secret key (DJANGO_SECRET_KEY unset or shorter than 32 "
                "characters)",
                hint="set DJANGO_SECRET_KEY to a long random value (python -c 'import secrets; "
                "print(secrets.token_urlsafe(50))'), or DJANGO_DEBUG=true for development",
            )
        ],
        status=APP_LOAD_ERROR,
    )
