from __future__ import annotations

from django.urls import path

from phr import handbook_views as views

app_name = "handbook"

urlpatterns = [
    path("<uuid:patient_id>/", views.book, name="book"),
    path("<uuid:patient_id>/print/", views.book_print, name="print"),
    path(
        "<uuid:patient_id>/school-checkups/new/",
        views.school_checkup_new,
        name="school_checkup_new",
    ),
    path("<uuid:patient_id>/birth/", views.birth_data, name="birth"),
    path("<uuid:patient_id>/vaccinations/new/", views.vaccination_new, name="vaccination_new"),
    path(
        "<uuid:patient_id>/vaccinations/<uuid:record_id>/delete/",
        views.vaccination_delete,
        name="vaccination_delete",
    ),
    path("<uuid:patient_id>/notes/new/", views.note_new, name="note_new"),
    path("<uuid:patient_id>/notes/<uuid:note_id>/edit/", views.note_edit, name="note_edit"),
    path("<uuid:patient_id>/notes/<uuid:note_id>/delete/", views.note_delete, name="note_delete"),
]
