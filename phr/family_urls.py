"""The family pages, mounted at /family/ (phr/family_views.py)."""

from __future__ import annotations

from django.urls import path

from phr import family_views as views

app_name = "family"

urlpatterns = [
    path("", views.index, name="index"),
    path("invite/", views.invite, name="invite"),
    path("invitations/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("invitation/", views.invitation, name="invitation"),
    path("children/add/", views.child_add, name="child_add"),
    path("export/", views.export_page, name="export"),
    path("export/bundle.json", views.export_bundle, name="export_bundle"),
    path("export/print/", views.export_print, name="export_print"),
    path("leave/", views.leave, name="leave"),
    path("leave/confirm/", views.leave_confirm, name="leave_confirm"),
    path("left/", views.left, name="left"),
]
