from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import transaction

# The vitals.records kinds the alert rules read; other writes (a
# temperature, a step count) cannot change an alert.
ALERT_INPUT_KINDS = frozenset({"blood_pressure", "body_weight"})


def queue_alert_evaluation(sender: Any, *, patient_id: Any, kinds: Any = (), **_: Any) -> None:
    """vitals_written receiver: evaluate the patient's alerts in the
    background once the write has committed (the signal is sent on commit
    already; on_commit also covers a sender inside a later transaction)."""
    from vitals.tasks import alerts_evaluate

    if kinds and not ALERT_INPUT_KINDS.intersection(kinds):
        return
    transaction.on_commit(lambda: alerts_evaluate.delay(str(patient_id)))


class VitalsConfig(AppConfig):
    name = "vitals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The Apple Health import registers its job kind with phr.jobs on
        # import, so a worker that never loaded the upload views runs it.
        from vitals import apple_health  # noqa: F401
        from vitals.signals import vitals_written

        vitals_written.connect(queue_alert_evaluation, dispatch_uid="vitals.alerts.evaluate")
