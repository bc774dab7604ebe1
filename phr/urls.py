from __future__ import annotations

from django.urls import path

from phr import views

app_name = "phr"

urlpatterns = [
    path("", views.home, name="home"),
    path("people/<uuid:patient_id>/", views.person, name="person"),
]
