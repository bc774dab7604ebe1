"""Sharing tasks: thin, given ids, safe to run twice."""

from __future__ import annotations

from celery import shared_task
from django.core.mail import send_mail
from django.utils import translation
from django.utils.translation import gettext as _

# Celery autodiscovers tasks.py only: register the emergency alert tasks too.
import sharing.tasks_emergency  # noqa: F401
from sharing.models import Consent


@shared_task(acks_late=True)
def notify_grantee_of_revocation(consent_id: str) -> int:
    """Tell the grantee that a family withdrew its consent. The mail names
    no record and no category: only that access to one patient ended."""
    from sharing.services import grantee_emails

    consent = Consent.objects.select_related("grantee_org", "grantee_user").get(pk=consent_id)
    sent = 0
    language = consent.grantee_user.language if consent.grantee_user_id else "ja"
    with translation.override(language):
        subject = _("A family withdrew its consent to share records")
        body = _(
            "A family you could see records of has withdrawn its consent. "
            "Records shared under that consent are no longer available to you.\n\n"
            "Reference: %(reference)s"
        ) % {"reference": str(consent.pk)[:8]}
        for email in grantee_emails(consent):
            sent += send_mail(subject, body, None, [email])
    return sent
