"""manage.py seed_research_demo: the demo data plus a synthetic population
of the demo municipality under the research opt-out regime, so the
research portal's journey (apply, two approvals, export, download) can be
tried with a cohort large enough for k (sharing/research_demo.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from sharing.research_demo import research_demo_seed


class Command(BaseCommand):
    help = "Seed the demo and a synthetic research population (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--children", type=int, default=120)

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            self.stderr.write("Warning: DEBUG is off. Never seed demo data in production.")
        result = research_demo_seed(children=options["children"])
        self.stdout.write(
            f"Research demo ready: {result.rows} checkup rows of {options['children']} synthetic "
            f"children in {result.municipality.name} (batch {result.batch_status}); the "
            "municipality is under the opt-out regime."
        )
