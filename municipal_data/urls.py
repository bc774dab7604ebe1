"""The municipal staff pages, mounted at /municipal/ (config/urls.py).

Batch and review ids are in the paths: each is looked up within the
user's municipalities (municipal_data.selectors), so another
municipality's id answers 404 like a missing one.
"""

from __future__ import annotations

from django.urls import path

from municipal_data import feed_views, link_views, views

app_name = "municipal"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("upload/", views.upload, name="upload"),
    path("batches/", views.batches, name="batches"),
    path("batches/<int:batch_id>/", views.batch, name="batch"),
    path("batches/<int:batch_id>/progress/", views.batch_progress, name="batch_progress"),
    path("batches/<int:batch_id>/errors.csv", views.batch_errors_csv, name="batch_errors_csv"),
    path("batches/<int:batch_id>/confirm/", views.batch_confirm, name="batch_confirm"),
    path("batches/<int:batch_id>/cancel/", views.batch_cancel, name="batch_cancel"),
    path("reviews/", views.reviews, name="reviews"),
    path("reviews/<int:review_id>/decide/", views.review_decision, name="review_decide"),
    # Feed sources and their runs (municipal_data/feed_views.py)
    path("feeds/", feed_views.feed_list, name="feed_list"),
    path("feeds/new/", feed_views.feed_new, name="feed_new"),
    path("feeds/<int:source_id>/", feed_views.feed_detail, name="feed_detail"),
    path("feeds/<int:source_id>/edit/", feed_views.feed_edit, name="feed_edit"),
    path("feeds/<int:source_id>/run/", feed_views.feed_run, name="feed_run"),
    # Family link codes (municipal_data/link_views.py)
    path("link-codes/", link_views.link_codes, name="link_codes"),
    path("link-codes/issue/", link_views.link_code_issue, name="link_code_issue"),
    path(
        "link-codes/<int:link_code_id>/revoke/",
        link_views.link_code_revoke,
        name="link_code_revoke",
    ),
    path(
        "link-codes/<int:link_code_id>/letter/",
        link_views.link_code_letter,
        name="link_code_letter",
    ),
]
