from __future__ import annotations

from django.urls import URLPattern, path

from vitals import import_views as views

urlpatterns: list[URLPattern] = [
    path("<uuid:patient_id>/", views.upload, name="import-upload"),
    path("<uuid:patient_id>/<int:job_id>/", views.detail, name="import-detail"),
    path("<uuid:patient_id>/<int:job_id>/progress/", views.progress, name="import-progress"),
]
