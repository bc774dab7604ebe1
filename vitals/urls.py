"""The vitals pages and device endpoints, mounted at /vitals/
(config/urls.py). Each part has its own module; names share the "vitals"
namespace, prefixed by their part (entry-, device-, import-, chart-,
alert-)."""

from __future__ import annotations

from django.urls import include, path

app_name = "vitals"

urlpatterns = [
    path("", include("vitals.entry_urls")),
    path("devices/", include("vitals.device_urls")),
    path("imports/", include("vitals.import_urls")),
    path("charts/", include("vitals.chart_urls")),
    path("alerts/", include("vitals.alert_urls")),
]
