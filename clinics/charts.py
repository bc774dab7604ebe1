"""Server-drawn line charts (SVG) for the clinic portal: blood pressure with
the 140/90 and 160/110 lines, and weight, by gestational week.

The page's Content-Security-Policy allows no inline script or style, so a
chart is plain SVG geometry computed here and drawn by a template
(templates/clinics/_portal_chart.html) with classes styled in
static/css/clinic_portal.css. Every chart comes with a table of the same
numbers on the page, for screen readers and for reading exact values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from django.utils.translation import gettext, pgettext

from clinics.flags import HYPERTENSION, SEVERE_HYPERTENSION
from clinics.selectors import Visit

WIDTH = 640
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 12, 36


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class Line:
    """One series: its points in SVG coordinates and the path through them."""

    css: str
    label: str
    points: list[Point]

    @property
    def path(self) -> str:
        return " ".join(
            f"{'M' if i == 0 else 'L'}{p.x:.1f},{p.y:.1f}" for i, p in enumerate(self.points)
        )


@dataclass(frozen=True)
class Rule:
    """A horizontal reference line (a threshold) or a grid line."""

    y: float
    label: str
    css: str


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass
class Chart:
    id: str
    title: str
    description: str
    x_label: str
    y_label: str
    lines: list[Line] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return not any(line.points for line in self.lines)

    @property
    def view_box(self) -> str:
        return f"0 0 {self.width} {self.height}"


class Scale:
    """Maps data values onto [low_px, high_px]."""

    def __init__(self, low: float, high: float, low_px: float, high_px: float) -> None:
        self.low, self.high = low, (high if high > low else low + 1)
        self.low_px, self.high_px = low_px, high_px

    def __call__(self, value: float) -> float:
        share = (value - self.low) / (self.high - self.low)
        return self.low_px + share * (self.high_px - self.low_px)


def _step(span: float, wanted: int) -> float:
    """A round tick step giving about `wanted` ticks over `span`."""
    raw = span / max(wanted, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _ticks(low: float, high: float, wanted: int) -> list[float]:
    step = _step(high - low, wanted)
    first = math.ceil(low / step) * step
    values = []
    value = first
    while value <= high + 1e-9:
        values.append(round(value, 6))
        value += step
    return values


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class XAxis:
    """Where each visit goes: its gestational week when every plotted visit
    has one, else days since the first visit (labelled by date)."""

    by_week: bool
    origin: date

    def value(self, visit: Visit) -> float:
        if self.by_week:
            assert visit.gestation_days is not None
            return visit.gestation_days / 7
        return float((visit.day - self.origin).days)


def _x_axis(visits: Sequence[Visit]) -> XAxis:
    by_week = bool(visits) and all(v.gestation_days is not None for v in visits)
    return XAxis(by_week=by_week, origin=visits[0].day if visits else date.min)


def _frame(
    chart: Chart, axis: XAxis, visits: Sequence[Visit], y_low: float, y_high: float
) -> tuple[Scale, Scale]:
    xs = [axis.value(v) for v in visits]
    if axis.by_week:
        x_low = min(min(xs) - 1, 8.0) if xs else 8.0
        x_high = max(max(xs) + 1, 40.0) if xs else 40.0
        chart.x_label = gettext("Weeks of pregnancy")
    else:
        x_low, x_high = -1.0, (max(xs) + 1 if xs else 28.0)
        chart.x_label = gettext("Date")
    x = Scale(x_low, x_high, chart.left, chart.right)
    y = Scale(y_low, y_high, chart.bottom, chart.top)
    if axis.by_week:
        chart.x_ticks = [Tick(x(w), _number(w)) for w in _ticks(x_low, x_high, 8)]
    else:
        chart.x_ticks = [
            Tick(x(value), f"{v.day:%m/%d}") for v, value in zip(visits, xs, strict=True)
        ]
    chart.y_ticks = [Tick(y(v), _number(v)) for v in _ticks(y_low, y_high, 6)]
    chart.rules += [Rule(t.at, "", "grid") for t in chart.y_ticks]
    return x, y


def _title(visit: Visit, value: str) -> str:
    when = f"{visit.day:%Y-%m-%d}"
    if visit.gestation:
        when += f" ({visit.gestation})"
    return f"{when}: {value}"


def blood_pressure_chart(visits: Sequence[Visit]) -> Chart:
    plotted = [v for v in visits if v.systolic is not None or v.diastolic is not None]
    chart = Chart(
        id="chart-bp",
        title=gettext("Blood pressure"),
        description=gettext(
            "Systolic and diastolic blood pressure at each visit, with the lines of "
            "hypertension (140/90 mmHg) and severe hypertension (160/110 mmHg)."
        ),
        x_label="",
        y_label="mmHg",
    )
    values = [float(v) for visit in plotted for v in (visit.systolic, visit.diastolic) if v]
    y_low = min([50.0, *values]) // 10 * 10
    y_high = math.ceil(max([170.0, *values]) / 10) * 10
    axis = _x_axis(plotted)
    x, y = _frame(chart, axis, plotted, y_low, y_high)
    for limit, css, label in (
        (SEVERE_HYPERTENSION[0], "threshold severe", "160"),
        (HYPERTENSION[0], "threshold", "140"),
        (SEVERE_HYPERTENSION[1], "threshold severe", "110"),
        (HYPERTENSION[1], "threshold", "90"),
    ):
        chart.rules.append(Rule(y(float(limit)), label, css))
    for attribute, css, label in (
        ("systolic", "series series-systolic", pgettext("blood pressure", "Systolic")),
        ("diastolic", "series series-diastolic", pgettext("blood pressure", "Diastolic")),
    ):
        points = []
        for visit in plotted:
            value: Decimal | None = getattr(visit, attribute)
            if value is not None:
                points.append(
                    Point(x(axis.value(visit)), y(float(value)), _title(visit, f"{value:f}"))
                )
        chart.lines.append(Line(css, label, points))
    return chart


def weight_chart(visits: Sequence[Visit]) -> Chart:
    plotted = [v for v in visits if v.values.get("body_weight") and v.values["body_weight"].number]
    chart = Chart(
        id="chart-weight",
        title=gettext("Weight"),
        description=gettext("Body weight at each visit."),
        x_label="",
        y_label="kg",
    )
    weights = [float(v.values["body_weight"].number or 0) for v in plotted]
    y_low = math.floor((min(weights) if weights else 45.0) - 2)
    y_high = math.ceil((max(weights) if weights else 65.0) + 2)
    axis = _x_axis(plotted)
    x, y = _frame(chart, axis, plotted, float(y_low), float(y_high))
    points = [
        Point(x(axis.value(v)), y(w), _title(v, f"{w:g} kg"))
        for v, w in zip(plotted, weights, strict=True)
    ]
    chart.lines.append(Line("series series-weight", gettext("Weight"), points))
    return chart
