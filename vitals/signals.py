"""The signal every vitals write sends once it is committed.

`vitals_written` is sent with `sender` (the module or service that wrote),
`patient_id` (uuid.UUID) and `kinds` (a frozenset of vitals.records kind
keys, e.g. {"blood_pressure", "heart_rate"}) after the transaction that
wrote, edited or deleted vitals commits — once per write call and patient,
never on rollback, never for a re-import that changed nothing. The alerts
part connects to it; receivers run after the commit (their own writes are
their own transaction) and a failing receiver is logged, never undoes or
hides the write that was made.

In tests, on_commit callbacks run only with the `django_capture_on_commit_callbacks`
fixture (execute=True) or a transactional database.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger(__name__)

# Arguments: sender, patient_id (uuid.UUID), kinds (frozenset[str]).
vitals_written = Signal()


def _send(sender: Any, patient_id: uuid.UUID, kinds: frozenset[str]) -> None:
    for receiver, result in vitals_written.send_robust(
        sender=sender, patient_id=patient_id, kinds=kinds
    ):
        if isinstance(result, Exception):
            logger.error("vitals_written receiver %r failed", receiver, exc_info=result)


def send_on_commit(sender: Any, changes: Mapping[uuid.UUID, Iterable[str]]) -> None:
    """Send `vitals_written` for each patient in `changes` (patient id →
    kinds written) when the current transaction commits (at once outside
    one)."""
    for patient_id, kinds in changes.items():
        frozen = frozenset(kinds)
        if not frozen:
            continue
        transaction.on_commit(
            lambda pid=patient_id, k=frozen: _send(sender, pid, k)  # type: ignore[misc]
        )
