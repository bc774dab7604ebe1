"""The Sharing pages, mounted at /sharing/ (config/urls.py).

No ids in the paths: the consent, person, report or audit row a request is
about travels in its POST body or query string and is looked up within
what the user may act on (404 otherwise)."""

from __future__ import annotations

from django.urls import path

from sharing import views

app_name = "sharing"

urlpatterns = [
    path("", views.index, name="index"),
    path("grant/", views.grant, name="grant"),
    path("revoke/", views.revoke, name="revoke"),
    path("emergency/", views.emergency, name="emergency"),
    path("clinics/", views.clinics, name="clinics"),
    path("why/", views.why, name="why"),
    path("history/", views.history, name="history"),
    path("history/report/", views.report, name="report"),
    path("reports/", views.reports, name="reports"),
    path("reports/close/", views.report_close, name="report_close"),
    path("with-me/", views.with_me, name="with_me"),
]
