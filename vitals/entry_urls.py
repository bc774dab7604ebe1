"""Quick entry (issue 7 part 1), under /vitals/ in the "vitals" namespace."""

from __future__ import annotations

from django.urls import URLPattern, path

from vitals import entry_views as views

urlpatterns: list[URLPattern] = [
    path("<uuid:patient_id>/", views.home, name="entry-home"),
    path("<uuid:patient_id>/add/<slug:slug>/", views.add, name="entry-add"),
    path("<uuid:patient_id>/entries/<uuid:record_id>/edit/", views.edit, name="entry-edit"),
    path("<uuid:patient_id>/entries/<uuid:record_id>/delete/", views.delete, name="entry-delete"),
]
