from __future__ import annotations

from django.urls import URLPattern, path

from vitals import device_api, device_views

urlpatterns: list[URLPattern] = [
    # Token-authenticated device endpoints (vitals/device_api.py).
    path("api/Observation", device_api.ObservationView.as_view(), name="device-api-observation"),
    path("api/Bundle", device_api.BundleView.as_view(), name="device-api-bundle"),
    path("api/omh", device_api.OpenMHealthView.as_view(), name="device-api-omh"),
    # The family's pages.
    path("<uuid:patient_id>/", device_views.device_list, name="device-list"),
    path(
        "<uuid:patient_id>/<uuid:device_id>/revoke/",
        device_views.device_revoke,
        name="device-revoke",
    ),
    path("<uuid:patient_id>/csv/", device_views.csv_upload, name="device-csv"),
]
