"""Seal the audit log up to now minus the safety lag (beat runs this too)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from phr.audit import audit_maintain_partitions, audit_seal


class Command(BaseCommand):
    help = "Seal the closed part of the audit log and prepare monthly partitions."

    def handle(self, *args: Any, **options: Any) -> None:
        created = audit_maintain_partitions()
        seal = audit_seal()
        if seal is None:
            self.stdout.write("nothing to seal")
        else:
            self.stdout.write(f"sealed {seal.row_count} rows up to {seal.period_end.isoformat()}")
        for name in created:
            self.stdout.write(f"created partition {name}")
