"""WSGI entry point (gunicorn). Refuses to serve with the development secret key unless DEBUG is on."""

import os

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
application = get_wsgi_application()

if not settings.DEBUG and (
    getattr(settings, "DEVELOPMENT_SECRET_KEY", None) == settings.SECRET_KEY or len(settings.SECRET_KEY) < 32
):
    raise ImproperlyConfigured(
        "refusing to serve without a real secret key: set DJANGO_SECRET_KEY to a long random value "
        "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), or DJANGO_DEBUG=true for development"
    )
