"""Routes of the FHIR R4 API, mounted at /fhir/ (config/urls.py)."""

from __future__ import annotations

from django.urls import path, re_path

from phr import fhir_api, fhir_bundle

app_name = "fhir"

urlpatterns = [
    # POST /fhir: transaction and batch Bundles (phr/fhir_bundle.py).
    path("", fhir_bundle.BundleView.as_view(), name="base"),
    path("metadata", fhir_api.CapabilityStatementView.as_view(), name="metadata"),
    # Patient/$everything (phr/export.py): one patient's records, paged.
    path(
        "Patient/<str:resource_id>/$everything",
        fhir_api.EverythingView.as_view(),
        name="everything",
    ),
    path("<str:resource_type>", fhir_api.TypeView.as_view(), name="type"),
    path("<str:resource_type>/<str:resource_id>", fhir_api.InstanceView.as_view(), name="instance"),
    path(
        "<str:resource_type>/<str:resource_id>/_history",
        fhir_api.HistoryView.as_view(),
        name="history",
    ),
    path(
        "<str:resource_type>/<str:resource_id>/_history/<str:version_id>",
        fhir_api.VersionView.as_view(),
        name="version",
    ),
    # Anything else under /fhir/ answers with a FHIR 404, not Django's page.
    re_path(r"^.*$", fhir_api.UnknownEndpointView.as_view(), name="unknown"),
]
