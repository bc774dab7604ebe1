from __future__ import annotations

from django.urls import URLPattern, path

from phr import medication_views as views

app_name = "medication"

urlpatterns: list[URLPattern] = [
    path("<uuid:patient_id>/", views.notebook, name="notebook"),
    path("<uuid:patient_id>/import/", views.import_view, name="import"),
    path("<uuid:patient_id>/new/", views.statement_new, name="statement-new"),
    path(
        "<uuid:patient_id>/statements/<uuid:resource_id>/edit/",
        views.statement_edit,
        name="statement-edit",
    ),
]
