"""The family's device pages, under /vitals/devices/:

- ``<uuid>/`` one person's devices (measuring devices, phone apps,
  gateways): when registered and by whom, last use, revoked or not; and
  the form to register a new one. Registering asks for a recent login or
  "Confirm access" (phr.auth, as clinic tokens), and answers with the page
  again, showing the new token once (never in a redirect, a session or a
  log).
- ``<uuid>/<device uuid>/revoke/`` revoke at once.
- ``<uuid>/csv/`` upload a vitals CSV (docs/formats/vitals_csv.md): it is
  imported whole, or not at all with every bad row reported.

All of them are for the person herself (rule ``self``) and a child's
guardians (rule ``guardian``) only — the policy point's family write rule,
sharing.access.may_write(purpose=personal) for vitals. Everyone else (a
person she shares with, a clinic, a stranger, a missing id) gets the same
404, and the refusal is audited.
"""

from __future__ import annotations

import uuid
from typing import Any

from allauth.account.internal.flows.reauthentication import suspend_request
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from phr import selectors
from phr.auth import reauthentication_url, recently_authenticated
from phr.models import Patient
from phr.terminology import Category
from sharing.access import Purpose, audit_denied, audit_reveal, may_write
from vitals import csv_import, device_writes, devices
from vitals.models import Device


def writable_patient(request: HttpRequest, patient_id: uuid.UUID, *, action: str) -> Patient:
    """The patient `request.user` may manage devices and import vitals for,
    or Http404 (audited) — a missing id and a person one may not write for
    alike."""
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        raise Http404
    decision = may_write(request.user, patient, category=Category.VITALS, purpose=Purpose.PERSONAL)
    if not decision:
        audit_denied(request.user, patient.pk, action=action, rule=decision.rule)
        raise Http404
    audit_reveal(
        request.user,
        [patient.pk],
        categories=[Category.VITALS],
        action=action,
        purpose=Purpose.PERSONAL,
    )
    return patient


class DeviceForm(forms.Form):
    name = forms.CharField(
        label=gettext_lazy("Name (e.g. the make of the monitor, or the app)"),
        max_length=devices.NAME_MAX,
    )
    kind = forms.ChoiceField(label=gettext_lazy("Kind"), choices=Device.Kind.choices)


class CsvForm(forms.Form):
    file = forms.FileField(
        label=gettext_lazy("CSV file"),
        help_text=gettext_lazy(
            "Columns timestamp, type, value, unit; UTF-8 or Shift_JIS; at most 5 MB."
        ),
    )
    device = forms.ChoiceField(
        label=gettext_lazy("Measured with"),
        required=False,
        help_text=gettext_lazy(
            "If these readings came from a registered device, choose it: readings it "
            "already sent are then not added twice."
        ),
    )

    def __init__(self, *args: Any, patient: Patient, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.patient = patient
        self.fields["device"].choices = [("", _("a file (no registered device)"))] + [
            (str(d.pk), d.name) for d in devices.devices_of(patient)
        ]


def _state(device: Device) -> str:
    return "revoked" if device.revoked_at else "active"


def _list_context(request: HttpRequest, patient: Patient, **extra: Any) -> dict[str, Any]:
    return {
        "patient": patient,
        "person": selectors.person(user=request.user, patient=patient),
        "rows": [{"device": d, "state": _state(d)} for d in devices.devices_of(patient)],
        "form": extra.pop("form", None) or DeviceForm(),
        "api_base": request.build_absolute_uri("/vitals/devices/api/"),
        **extra,
    }


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def device_list(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    patient = writable_patient(request, patient_id, action="view.vitals.devices")
    if request.method != "POST":
        return render(request, "vitals/devices/list.html", _list_context(request, patient))
    if not recently_authenticated(request):
        # A token that writes someone's health record is minted only by a
        # person who proved who she is in the last few minutes (as clinic
        # tokens); allauth replays this POST after "Confirm access".
        return suspend_request(request, reauthentication_url(request.user))
    form = DeviceForm(request.POST)
    if form.is_valid():
        try:
            device, secret = devices.device_register(
                patient=patient,
                by=request.user,
                name=form.cleaned_data["name"],
                kind=form.cleaned_data["kind"],
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            # Shown once, in this response only.
            response = render(
                request,
                "vitals/devices/list.html",
                _list_context(request, patient, new_device=device, new_secret=secret),
            )
            response["Cache-Control"] = "no-store"
            return response
    return render(
        request, "vitals/devices/list.html", _list_context(request, patient, form=form), status=400
    )


@require_POST
@login_required
def device_revoke(
    request: HttpRequest, patient_id: uuid.UUID, device_id: uuid.UUID
) -> HttpResponse:
    patient = writable_patient(request, patient_id, action="view.vitals.devices")
    device = devices.device_of(patient, device_id)
    devices.device_revoke(device=device, by=request.user)
    messages.success(request, _("%(name)s can no longer send readings.") % {"name": device.name})
    return redirect("vitals:device-list", patient_id=patient.pk)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def csv_upload(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    patient = writable_patient(request, patient_id, action="view.vitals.csv_import")
    context: dict[str, Any] = {
        "patient": patient,
        "person": selectors.person(user=request.user, patient=patient),
    }
    if request.method != "POST":
        context["form"] = CsvForm(patient=patient)
        return render(request, "vitals/devices/csv.html", context)
    form = CsvForm(request.POST, request.FILES, patient=patient)
    context["form"] = form
    if not form.is_valid():
        return render(request, "vitals/devices/csv.html", context, status=400)
    device = None
    if form.cleaned_data["device"]:
        device = devices.device_of(patient, form.cleaned_data["device"])
    upload = form.cleaned_data["file"]
    data = upload.read(csv_import.MAX_BYTES + 1)
    try:
        rows = csv_import.parse(data)
        result = device_writes.write_csv(patient=patient, by=request.user, rows=rows, device=device)
    except csv_import.CsvError as exc:
        context["problems"] = exc.problems
        return render(request, "vitals/devices/csv.html", context, status=400)
    context["result"] = result
    context["form"] = CsvForm(patient=patient)
    return render(request, "vitals/devices/csv.html", context)
