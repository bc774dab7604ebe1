"""Run the daily reminder job now (beat runs it at 08:00 Japan time): for
operations after an outage, and for the demo. Safe to run any number of
times — a reminder is made and mailed once per guardian, child, item and
stage (docs/decisions/0015-reminders.md)."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from phr.reminders import reminders_run


class Command(BaseCommand):
    help = "Remind guardians of vaccinations and checkups due within 14 days or overdue."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--date",
            help="the day in Japan to compute for, YYYY-MM-DD (default: today in Japan)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        day = None
        if options.get("date"):
            try:
                day = date.fromisoformat(options["date"])
            except ValueError:
                raise CommandError(
                    f"--date {options['date']!r}: expected YYYY-MM-DD, e.g. 2026-11-26"
                ) from None
        result = reminders_run(today=day)
        self.stdout.write(
            f"run {result.run}: {result.guardians} guardians, {result.created} new reminders, "
            f"{result.emails} emails ({result.reminders_emailed} reminders), "
            f"{result.skipped} skipped, {result.failed} failed, {result.unknown} unknown, "
            f"{result.errors} errors"
        )
        if result.errors:
            raise CommandError(
                f"{result.errors} guardians failed (ids {result.failed_guardians}); see the log"
            )
