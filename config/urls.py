from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from phr.fhir_bundle import BundleView

urlpatterns = [
    path("i18n/", include("django.conf.urls.i18n")),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # FHIR clients POST Bundles to the base URL as the CapabilityStatement
    # names it, without the slash.
    path("fhir", BundleView.as_view(), name="fhir-base"),
    path("fhir/", include("phr.fhir_urls")),
    path("emergency/", include("sharing.emergency_urls")),
    path("sharing/research/", include("sharing.research_consent_urls")),
    path("sharing/", include("sharing.urls")),
    path("research/", include("sharing.research_urls")),
    path("municipal/", include("municipal_data.urls")),
    path("clinic/", include("clinics.urls")),
    path("link/", include("municipal_data.link_urls")),
    path("handbook/", include("phr.handbook_urls")),
    path("medications/", include("phr.medication_urls")),
    path("notifications/", include("phr.reminder_urls")),
    path("family/", include("phr.family_urls")),
    path("vitals/", include("vitals.urls")),
    path("", include("phr.urls")),
]
