from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PhrConfig(AppConfig):
    name = "phr"
    verbose_name = _("Hagukumi PHR")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Job handlers register themselves on import.
        from phr import feeds, ingest, pipeline  # noqa: F401
