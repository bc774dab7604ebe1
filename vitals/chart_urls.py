"""The family's vitals charts, under /vitals/charts/ (namespace "vitals")."""

from __future__ import annotations

from django.urls import path

from vitals import chart_views

urlpatterns = [
    path("<uuid:patient_id>/", chart_views.person_charts, name="chart-person"),
    path("<uuid:patient_id>/data.json", chart_views.chart_data, name="chart-data"),
]
