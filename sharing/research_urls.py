"""The research portal: projects, reviews, exports and downloads
(/research/; docs/decisions/0022-research.md)."""

from __future__ import annotations

from django.urls import URLPattern, path

from sharing import research_views as views

app_name = "research"

urlpatterns: list[URLPattern] = [
    path("", views.index, name="index"),
    path("apply/", views.apply, name="apply"),
    path("projects/<uuid:project_id>/", views.project, name="project"),
    path("projects/<uuid:project_id>/export/", views.export_new, name="export_new"),
    path("projects/<uuid:project_id>/export/create/", views.export_create, name="export_create"),
    path("exports/<uuid:export_id>/", views.export_detail, name="export"),
    path("exports/<uuid:export_id>/progress/", views.export_progress, name="export_progress"),
    path("exports/<uuid:export_id>/links/", views.link_create, name="link_create"),
    path("links/<int:link_id>/revoke/", views.link_revoke, name="link_revoke"),
    path("download/<str:token>/", views.download, name="download"),
    path("reviews/", views.reviews, name="reviews"),
    path("reviews/<uuid:project_id>/", views.review, name="review"),
    path("reviews/<uuid:project_id>/decide/", views.review_decide, name="review_decide"),
]
