from __future__ import annotations

from django.apps import AppConfig


class MunicipalDataConfig(AppConfig):
    name = "municipal_data"
    default_auto_field = "django.db.models.BigAutoField"
