"""The Celery app. Tasks are thin: they load rows by id and call services."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("hagukumi")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
