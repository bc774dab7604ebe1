"""The municipal staff pages, mounted at /municipal/ (config/urls.py).

Batch and review ids are in the paths: each is looked up within the
user's municipalities (municipal_data.selectors), so another
municipality's id answers 404 like a missing one.
"""

from __future__ import annotations

from django.urls import path

from municipal_data import link_views, views

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
