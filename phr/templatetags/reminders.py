"""{% unread_notifications as count %}: the signed-in user's unread
reminders, for the link to /notifications/ in the site navigation
(templates/phr/notifications/_nav_link.html). One COUNT of the user's own
rows; no health data is read."""

from __future__ import annotations

from typing import Any

from django import template

from phr.reminders import unread_count

register = template.Library()


@register.simple_tag(takes_context=True)
def unread_notifications(context: dict[str, Any]) -> int:
    request = context.get("request")
    return unread_count(getattr(request, "user", None))
