"""The family's research choices (/sharing/research/;
docs/decisions/0022-research.md)."""

from __future__ import annotations

from django.urls import path  # noqa: F401

app_name = "research_consent"

urlpatterns: list = []
