"""Celery tasks of the vitals alerts: thin, given ids, safe to run twice
(the evaluation takes a per-patient lock and writes only what changed)."""

from __future__ import annotations

import uuid

from celery import shared_task

from vitals import alerts


@shared_task(acks_late=True, reject_on_worker_lost=True)
def alerts_evaluate(patient_id: str) -> dict[str, object]:
    """Evaluate one patient's alert rules (queued after a vitals write
    commits: vitals.apps)."""
    result = alerts.alerts_evaluate(patient_id=uuid.UUID(str(patient_id)))
    return {
        "patient": str(result.patient_id),
        "created": len(result.created),
        "updated": len(result.updated),
        "skipped": result.skipped,
    }


@shared_task(acks_late=True, reject_on_worker_lost=True)
def alerts_close_lapsed() -> int:
    """Daily: re-evaluate the patients with an alert whose episode ran out
    (a blood-pressure episode 7 days after its last high reading) so its
    Flag is marked inactive. Returns how many were queued."""
    patients = alerts.patients_with_lapsed_alerts()
    for patient_id in patients:
        alerts_evaluate.delay(str(patient_id))
    return len(patients)
