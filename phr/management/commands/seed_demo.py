"""manage.py seed_demo: demo organizations, one account per role and a
Maebashi family with checkups, vaccinations and a pregnancy (phr.demo).

Idempotent: running it again changes nothing and prints the same TOTP
secrets. `--if-empty` seeds only a database without any user (make run).
Never seed demo data in production: the accounts share a known password.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from phr.demo import demo_seed
from phr.models import User


class Command(BaseCommand):
    help = "Seed demo organizations, accounts and a family (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="seed only when the database has no users at all",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["if_empty"] and User.objects.exists():
            self.stdout.write("Users exist already: skipped seeding the demo data.")
            return
        if not settings.DEBUG:
            self.stderr.write("Warning: DEBUG is off. Never seed demo data in production.")
        result = demo_seed()
        self.stdout.write(
            f"Demo data ready ({result.written} records written; the family's dates are "
            f"anchored on {result.anchor})."
        )
        for account in result.accounts:
            line = f"{account.email:<28} {account.role}"
            if account.totp_secret:
                line += f"  TOTP secret: {account.totp_secret}"
            self.stdout.write(line)
        # Show the password only when it is the settings' public default; a
        # password set through the environment is not echoed into logs.
        if "DEMO_PASSWORD" in os.environ:
            note = "the value of the DEMO_PASSWORD environment variable"
        else:
            note = f"{settings.DEMO_PASSWORD} (the default of settings.DEMO_PASSWORD)"
        self.stdout.write(f"Password of every demo account: {note}")
