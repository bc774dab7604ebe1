"""The notification list and reminder settings, mounted at /notifications/
(config/urls.py). A user only ever sees and changes their own."""

from __future__ import annotations

from django.urls import path

from phr import reminder_views

app_name = "reminder"

urlpatterns = [
    path("", reminder_views.notification_list, name="list"),
    path("read/", reminder_views.mark_read, name="read"),
    path("settings/", reminder_views.notification_settings, name="settings"),
]
