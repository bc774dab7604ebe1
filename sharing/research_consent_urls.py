"""The family's research choices (/sharing/research/;
docs/decisions/0022-research.md, 0023-research-consent.md).

No ids in the paths: the person travels in the POST body and is looked up
among the people the user decides for (404 otherwise)."""

from __future__ import annotations

from django.urls import path

from sharing import research_consent_views as views

app_name = "research_consent"

urlpatterns = [
    path("", views.index, name="index"),
    path("choose/", views.choose, name="choose"),
    path("withdraw/", views.withdraw, name="withdraw"),
]
