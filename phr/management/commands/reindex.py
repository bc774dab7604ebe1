"""manage.py reindex: rebuild every record's search columns from its JSON.

The JSON is the record; the search columns (phr.indexing) are derived from
it and can always be recomputed, e.g. after the indexer learns a new rule
or a bad write damaged them.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from phr import store


class Command(BaseCommand):
    help = "Recompute the search columns of every stored resource from its JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=store.REINDEX_BATCH,
            help="rows per transaction (default %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = store.reindex_all(batch_size=options["batch_size"])
        self.stdout.write(f"Reindexed {count} resources.")
