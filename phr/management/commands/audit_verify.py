"""Recompute every audit seal; exit non-zero when a sealed row was changed,
removed or added after the fact."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from phr.audit import audit_seal, audit_verify


class Command(BaseCommand):
    help = "Verify the audit log's seals (exit 1 on any mismatch)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--seal-first", action="store_true", help="seal what is due before verifying"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["seal_first"]:
            audit_seal()
        problems = audit_verify()
        if not problems:
            self.stdout.write(self.style.SUCCESS("audit log intact: every seal verifies"))
            return
        for p in problems:
            self.stderr.write(
                f"seal {p.seal_id} [{p.period_start.isoformat()} – {p.period_end.isoformat()}]: "
                f"{p.reason}"
            )
        sys.exit(1)
