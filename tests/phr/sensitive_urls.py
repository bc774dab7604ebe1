"""URLs for tests/phr/test_accounts.py: the site's own, plus a tiny view
behind phr.auth.sensitive_action."""

from __future__ import annotations

from django.urls import path

from config.urls import urlpatterns as site_urlpatterns
from tests.phr.test_accounts import sensitive_view

urlpatterns = [
    path("sensitive/", sensitive_view, name="test_sensitive"),
    *site_urlpatterns,
]
