"""A test-only app holding a model no config is registered for."""

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    """Registers nothing: the tests register its domain themselves."""

    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"
