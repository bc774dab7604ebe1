"""The Apple Health import pages, under /vitals/imports/:

- ``<uuid>/`` upload an export (export.zip or export.xml) for one person,
  and the list of that person's imports;
- ``<uuid>/<job>/`` one import: its progress while it runs (htmx polls
  ``<uuid>/<job>/progress/``), then what was imported, skipped and refused.

Only the person herself and a child's guardians (sharing.access.may_write,
purpose personal, category vitals — the family's own write rule) use them;
a clinic she shares with, a stranger or a missing id get the same 404, and
the refusal is audited. The import itself runs as a background job
(vitals.apple_health, phr.jobs).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_safe

from phr import selectors
from phr.models import Job, Patient
from phr.terminology import Category
from sharing.access import Purpose, audit_denied, audit_reveal, may_write
from vitals import apple_health


def upload_limit_bytes() -> int:
    return int(getattr(settings, "APPLE_HEALTH_UPLOAD_MAX_MB", 4096)) * 1024 * 1024


class UploadForm(forms.Form):
    file = forms.FileField(
        label=gettext_lazy("Apple Health export (export.zip or export.xml)"),
        help_text=gettext_lazy(
            "On the iPhone: Health app → your picture → Export All Health Data. "
            "Send the export.zip here as it is."
        ),
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > upload_limit_bytes():
            raise ValidationError(
                _("The file is larger than %(size)s MB.")
                % {"size": upload_limit_bytes() // (1024 * 1024)},
                code="too_large",
            )
        head = upload.read(5)
        upload.seek(0)
        if head[:4] != b"PK\x03\x04" and head.lstrip()[:1] != b"<":
            raise ValidationError(
                _("This is not an Apple Health export: choose export.zip or export.xml."),
                code="not_export",
            )
        return upload


def _writable_patient(request: HttpRequest, patient_id: uuid.UUID, *, action: str) -> Patient:
    """The person request.user may import vitals for, or Http404 (audited)."""
    patient = Patient.objects.filter(pk=patient_id).first()
    if patient is None:
        raise Http404
    decision = may_write(request.user, patient, category=Category.VITALS,
                         purpose=Purpose.PERSONAL)
    if not decision:
        audit_denied(request.user, patient.pk, action=action, rule=decision.rule)
        raise Http404
    audit_reveal(request.user, [patient.pk], categories=[Category.VITALS], action=action,
                 purpose=Purpose.PERSONAL)
    return patient


def _imports(patient: Patient) -> Any:
    # The person's imports (few rows of the job table: one per upload).
    return Job.objects.filter(kind=apple_health.JOB_KIND,
                              payload__patient_id=str(patient.pk)).order_by("-created_at")


def _job(patient: Patient, job_id: int) -> Job:
    job = _imports(patient).filter(pk=job_id).first()
    if job is None:
        raise Http404
    return job


def _store(upload: Any, patient: Patient) -> tuple[str, int]:
    suffix = ".zip" if upload.read(4) == b"PK\x03\x04" else ".xml"
    upload.seek(0)
    relative = f"vitals/apple-health/{patient.pk}/{uuid.uuid4()}{suffix}"
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    partial = target.with_suffix(suffix + ".part")
    with partial.open("wb") as handle:
        for chunk in upload.chunks():
            handle.write(chunk)
            size += len(chunk)
    partial.rename(target)
    return relative, size


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def upload(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    patient = _writable_patient(request, patient_id, action="vitals.import")
    posted = request.method == "POST"
    form = UploadForm(request.POST, request.FILES) if posted else UploadForm()
    if posted and form.is_valid():
        upload_file = form.cleaned_data["file"]
        relative, size = _store(upload_file, patient)
        job = apple_health.import_enqueue(
            patient=patient, user=request.user, path=relative,
            filename=Path(upload_file.name or "export.xml").name[:200], size=size,
        )
        messages.success(request, _("The file was received. It is imported in the background."))
        return redirect("vitals:import-detail", patient_id=patient.pk, job_id=job.pk)
    return render(
        request,
        "vitals/imports/upload.html",
        {
            "person": selectors.person(user=request.user, patient=patient),
            "patient": patient,
            "form": form,
            "imports": [_row(job) for job in _imports(patient)[:20]],
        },
        status=400 if posted else 200,
    )


def _row(job: Job) -> dict[str, Any]:
    result = job.result or {}
    return {
        "job": job,
        "filename": job.payload.get("filename", ""),
        "running": job.status in (Job.Status.QUEUED, Job.Status.RUNNING),
        "created": result.get("created"),
        "unchanged": result.get("unchanged"),
    }


def _progress(job: Job) -> dict[str, Any]:
    running = job.status in (Job.Status.QUEUED, Job.Status.RUNNING)
    stage = "write" if (job.cursor or {}).get("phase") == "write" else "check"
    total = job.progress_total or 0
    percent = int(job.progress_done * 100 / total) if total else 0
    return {"running": running, "stage": stage, "done": job.progress_done, "total": total,
            "percent": min(percent, 100)}


def _error_text(job: Job) -> str:
    """The file error in the reader's language (ExportError keeps both)."""
    found = (job.cursor or {}).get("file_error")
    if found:
        return str(found["ja"] if (get_language() or "ja").startswith("ja") else found["en"])
    return _("The import failed. Try again later, or send the file again.") if job.error else ""


@require_safe
@login_required
def detail(request: HttpRequest, patient_id: uuid.UUID, job_id: int) -> HttpResponse:
    patient = _writable_patient(request, patient_id, action="vitals.import.view")
    job = _job(patient, job_id)
    result = job.result or {}
    return render(
        request,
        "vitals/imports/detail.html",
        {
            "person": selectors.person(user=request.user, patient=patient),
            "patient": patient,
            "job": job,
            "filename": job.payload.get("filename", ""),
            "progress": _progress(job),
            "result": result,
            "read": sorted((result.get("read") or {}).items()),
            "skipped": sorted((result.get("skipped") or {}).items(), key=lambda kv: -kv[1]),
            "errors": result.get("errors") or [],
            "failed": job.status == Job.Status.FAILED,
            "error": _error_text(job),
        },
    )


@require_safe
@login_required
def progress(request: HttpRequest, patient_id: uuid.UUID, job_id: int) -> HttpResponse:
    """The fragment htmx polls every 2 seconds; once the job is over the
    page reloads (HX-Refresh) to show the report."""
    patient = _writable_patient(request, patient_id, action="vitals.import.view")
    job = _job(patient, job_id)
    state = _progress(job)
    response = render(request, "vitals/imports/_progress.html",
                      {"patient": patient, "job": job, "progress": state})
    if request.headers.get("HX-Request") == "true" and not state["running"]:
        response["HX-Refresh"] = "true"
    patch_vary_headers(response, ["HX-Request"])
    return response
