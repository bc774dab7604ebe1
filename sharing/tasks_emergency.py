"""Emergency tasks: thin, given ids, safe to run twice.

A worker registers these only when this module is imported: Celery's
autodiscovery reads `<app>.tasks`, so sharing/tasks.py must import this
module (see the emergency issue's note).
"""

from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, reject_on_worker_lost=True)
def send_break_glass_alert(break_glass_id: int) -> int:
    """Tell the guardians (or the adult patient) at once that an emergency
    service broke the glass. Never a DV-blocked guardian."""
    from sharing.emergency import break_glass_send_alerts

    return break_glass_send_alerts(break_glass_id=break_glass_id)
