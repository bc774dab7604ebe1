from __future__ import annotations

from django.apps import AppConfig


class ClinicsConfig(AppConfig):
    name = "clinics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The clinic FHIR feed format joins the ingest pipeline and the feeds.
        from clinics import fhir_feed

        fhir_feed.register()
