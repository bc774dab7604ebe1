from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class MunicipalDataConfig(AppConfig):
    name = "municipal_data"
    verbose_name = _("Municipal data")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The municipal formats join the ingest pipeline; job handlers
        # (feeds) register themselves on import.
        from municipal_data import importing

        importing.register_all()
