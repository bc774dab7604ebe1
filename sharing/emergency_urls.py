"""Emergency access, mounted at /emergency/ (config/urls.py)."""

from __future__ import annotations

from django.urls import path, re_path

from sharing import emergency_views as views

app_name = "emergency"

urlpatterns = [
    path("summary/<uuid:patient_id>/", views.summary, name="summary"),
    path("summary/<uuid:patient_id>.json", views.summary_json, name="summary_json"),
    path("find/", views.find, name="find"),
    path("open/", views.open_match, name="open"),
    path("break-glass/", views.break_glass, name="break_glass"),
    path("reviews/", views.reviews, name="reviews"),
    path("card/", views.cards, name="cards"),
    # The card link: any token reaches the view, so an unknown, expired or
    # revoked one gets the same "card not valid" page. A capability token,
    # not an id: tests/test_stranger_matrix.py does not fill it.
    re_path(r"^c/(?P<token>[^/]{1,200})/$", views.card_open, name="card_open"),
]
