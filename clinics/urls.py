"""The clinic portal, mounted at /clinic/ (config/urls.py).

Patient and token ids are in the paths: each is looked up within what the
user's clinic may see (clinics.selectors, clinics.tokens), so anything
else answers 404 like a missing id. Visit entry and delivery
(clinics/entry_views.py) add their routes here.
"""

from __future__ import annotations

from django.urls import path

from clinics import entry_views, views

app_name = "clinics"

urlpatterns = [
    path("", views.patients, name="patients"),
    path("patients/<uuid:patient_id>/", views.patient, name="patient"),
    # Visit entry, delivery, registration and the patient's invitation (entry_views.py)
    path("patients/<uuid:patient_id>/visits/new/", entry_views.visit_new, name="visit_new"),
    path("patients/<uuid:patient_id>/delivery/", entry_views.delivery_new, name="delivery_new"),
    path("register/", entry_views.register, name="register"),
    path("join/", entry_views.join, name="join"),
    # Invitations of the patients the clinic registered (views.py)
    path("invitations/", views.invitation_list, name="invitations"),
    path(
        "invitations/<int:invitation_id>/reissue/",
        views.invitation_reissue,
        name="invitation_reissue",
    ),
    path(
        "invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    # API tokens of the clinic's own system
    path("tokens/", views.token_list, name="tokens"),
    path("tokens/create/", views.token_create, name="token_create"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
]
