#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        # Read the settings now: Django's command runner would hide a bad
        # environment behind "Models aren't loaded yet".
        settings.INSTALLED_APPS  # noqa: B018
    except ImproperlyConfigured as exc:
        # Exit status 2 (not 1): a configuration problem, not a failed check
        # such as `makemigrations --check`.
        print(
            f"Configuration error: {exc} (for development: DEBUG=1; see docs/operations.md)",
            file=sys.stderr,
        )
        sys.exit(2)

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
