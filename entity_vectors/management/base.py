"""What every management command of the project shares: a setting that cannot work is one line."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.management.base import BaseCommand, SystemCheckError

from entity_vectors.conf.startup import problem_lines


class OneLineChecks(BaseCommand):
    """Reports a failed system check as one line per error (and its hint), like the worker, beat
    and the web app, instead of Django's block of headers around it.

    Mixed in before Django's command class (`class Command(OneLineChecks, BaseCommand)`); warnings
    are Django's as before. Exit status 1, as for Django's own check failure.
    """

    def check(
        self,
        app_configs: Any = None,
        tags: Any = None,
        display_num_errors: bool = False,
        include_deployment_checks: bool = False,
        fail_level: int = checks.ERROR,
        databases: Any = None,
    ) -> None:
        """Django's checks; on an error, the same errors again, one line each."""
        try:
            super().check(
                app_configs=app_configs,
                tags=tags,
                display_num_errors=display_num_errors,
                include_deployment_checks=include_deployment_checks,
                fail_level=fail_level,
                databases=databases,
            )
        except SystemCheckError:
            # Only on failure: run them again to have the messages rather than Django's text.
            problems = [
                message
                for message in checks.run_checks(
                    app_configs=app_configs,
                    tags=tags,
                    include_deployment_checks=include_deployment_checks,
                    databases=databases,
                )
                if message.is_serious(fail_level) and not message.is_silenced()
            ]
            if not problems:  # the errors went away between the two runs: Django's text then
                raise
            raise SystemCheckError("\n".join(problem_lines(self.command_name(), problems))) from None

    def command_name(self) -> str:
        """The name `manage.py` knows this command by: its module's."""
        return type(self).__module__.rsplit(".", 1)[-1]
