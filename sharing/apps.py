from __future__ import annotations

from django.apps import AppConfig


class SharingConfig(AppConfig):
    name = "sharing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The research release registers its job kind with phr.jobs on
        # import, so a worker that never loaded the portal's views runs it.
        from sharing import research_export  # noqa: F401
