"""The research portal: projects, reviews, exports and downloads
(/research/; docs/decisions/0022-research.md)."""

from __future__ import annotations

from django.urls import path  # noqa: F401

app_name = "research"

urlpatterns: list = []
