"""{% current_alerts %}: the alerts banner's data (templates/vitals/alerts/
_banner.html), for any page of the family to include."""

from __future__ import annotations

import uuid
from typing import Any

from django import template

from sharing.access import Category, Purpose, audit_reveal
from vitals.alerts import AlertLine, alert_lines

register = template.Library()


@register.simple_tag(takes_context=True)
def current_alerts(context: template.Context, patient_id: Any = None) -> list[AlertLine]:
    """The current alerts the signed-in user may see as the family (herself,
    her children), or only `patient_id`'s; most severe first. Audited for
    the patients whose alerts it returns."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    ids = None
    if patient_id:
        try:
            ids = [uuid.UUID(str(patient_id))]
        except ValueError:
            return []
    found = alert_lines(user=user, patient_ids=ids, current_only=True)
    if not found:
        return []
    audit_reveal(
        user,
        list(found),
        categories=[Category.VITALS],
        action="view.alerts",
        purpose=Purpose.PERSONAL,
    )
    lines = [line for lines in found.values() for line in lines]
    order = {"severe": 0, "soon": 1, "advice": 2}
    return sorted(lines, key=lambda a: order[a.severity])
