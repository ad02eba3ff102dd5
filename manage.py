#!/usr/bin/env python
"""Django's command-line utility."""

import os
import sys


def main() -> None:
    """Run a management command."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "app.settings")
    from django.core.management import execute_from_command_line

    from entity_vectors.exceptions import ConfigurationError

    try:
        execute_from_command_line(sys.argv)
    except ConfigurationError as error:
        # A setting that cannot work, met by a command that skips the system checks (`shell`,
        # `serve_clickhouse`, `--skip-checks`): one line naming it, not a traceback.
        from entity_vectors.conf import redact

        sys.stderr.write(f"{redact(' '.join(str(error).split()))}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
