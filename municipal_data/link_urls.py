"""A parent's way in with a family link code, mounted at /link/
(config/urls.py): the letter's QR code opens /link/?code=…"""

from __future__ import annotations

from django.urls import path

from municipal_data import link_views as views

app_name = "link"

urlpatterns = [
    path("", views.redeem, name="redeem"),
    path("done/", views.redeem_done, name="done"),
]
