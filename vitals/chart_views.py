"""The family's vitals charts: a child's growth (weight, length/height and
head circumference against the Japanese 2023 bands, or the WHO percentiles
with z-scores), a mother's pregnancy weight gain and blood pressure; and
the same numbers as JSON.

These are the family's pages, like the handbook (phr/handbook_views.py):
only the family's own grants open them (self, guardian —
Purpose.PERSONAL); clinic staff see the clinic portal's charts. Everyone
else gets 404, and every view is audited by `access_patient`.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from phr.models import Patient
from phr.selectors import JAPAN
from sharing.access import Purpose, access_patient
from vitals import charts, growth

ACTION_VIEW = "view.vitals_charts"
ACTION_DATA = "view.vitals_chart_data"


def _reference(request: HttpRequest) -> str:
    wanted = request.GET.get("reference", charts.REFERENCE_JP)
    return wanted if wanted in (charts.REFERENCE_JP, charts.REFERENCE_WHO) else charts.REFERENCE_JP


def _period(request: HttpRequest) -> str:
    wanted = request.GET.get("period", charts.DEFAULT_PERIOD)
    return wanted if wanted in charts.PERIODS else charts.DEFAULT_PERIOD


@require_safe
@login_required
def person_charts(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """A child's growth charts, or a mother's weight gain and blood
    pressure charts."""
    patient = access_patient(request.user, patient_id, purpose=Purpose.PERSONAL, action=ACTION_VIEW)
    today = timezone.localdate(timezone=JAPAN)
    context: dict[str, Any] = {"patient": patient}
    if patient.kind == Patient.Kind.CHILD:
        reference = _reference(request)
        data = charts.child_growth(user=request.user, patient=patient)
        context.update(
            data=data,
            reference=reference,
            figures=[
                (charts.growth_chart(data, indicator, reference), data.series.get(indicator, []),
                 "kg" if indicator == growth.WEIGHT else "cm")
                for indicator in growth.INDICATORS
            ],
        )  # fmt: skip
        return render(request, "vitals/charts/child.html", context)
    period = _period(request)
    data = charts.mother_vitals(user=request.user, patient=patient, period=period, today=today)
    context.update(
        data=data,
        period=period,
        periods=[(key, charts.period_label(key)) for key in charts.PERIODS],
        gain_figure=charts.weight_gain_chart(data) if data.pregnancy else None,
        bp_figure=charts.blood_pressure_chart(data, today),
        band_range=charts.gain_range_text(data.band) if data.band else "",
        band_label=charts.band_label(data.band) if data.band else "",
    )
    return render(request, "vitals/charts/mother.html", context)


@require_safe
@login_required
def chart_data(request: HttpRequest, patient_id: uuid.UUID) -> JsonResponse:
    """The numbers behind the charts: a child's measurements with age,
    corrected age, WHO z-score and percentile and the Japanese 2023 band;
    a mother's readings over ?period= (30, 90, 365, all), her weight gain
    and its band."""
    patient = access_patient(request.user, patient_id, purpose=Purpose.PERSONAL, action=ACTION_DATA)
    if patient.kind == Patient.Kind.CHILD:
        body = charts.growth_json(charts.child_growth(user=request.user, patient=patient))
    else:
        body = charts.mother_json(
            charts.mother_vitals(user=request.user, patient=patient, period=_period(request))
        )
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    return response
