from __future__ import annotations

from django.urls import URLPattern, path

from vitals import alert_views

urlpatterns: list[URLPattern] = [
    path("", alert_views.alert_list, name="alert-list"),
    path("<uuid:patient_id>/", alert_views.alert_patient, name="alert-patient"),
]
