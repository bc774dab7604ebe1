"""A demo population for the research portal (manage.py seed_research_demo).

The demo family alone can never reach k: a release of one person is refused
(docs/decisions/0022-research.md, rule 5). This imports a synthetic infant
checkup file (municipal_data/synthetic.py: fictional names, valid rows)
into the demo municipality through the real upload pipeline — so the
children and mothers get their residency, birth data and checkups exactly
as a municipality's batch gives them — and puts the municipality under the
opt-out regime with a published notice, so its residents take part unless
their family refuses (docs/decisions/0023-research-consent.md).

Idempotent: the import's source identifiers make a second run write
nothing new, and the regime row is updated in place.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date

from django.utils import timezone

from phr.models import Batch, Organization


@dataclass(frozen=True)
class ResearchDemo:
    municipality: Organization
    rows: int
    batch_status: str


OPT_OUT_BASIS = (
    "行政機関等匿名加工情報（個人情報保護法第114条、同法施行規則第62条）に準じ、"
    "匿名加工した情報のみを提供する。提供に先立ち公表し、本人（子は保護者）の求めにより提供を停止する。"
)


def research_demo_seed(*, children: int = 120, notice_on: date | None = None) -> ResearchDemo:
    from municipal_data.synthetic import write_infant_checkup_csv
    from phr import pipeline
    from phr.demo import MAEBASHI_CODE, demo_seed
    from sharing.models import ResearchRegime

    demo_seed()
    municipality = Organization.objects.get(
        kind=Organization.Kind.MUNICIPALITY, code=MAEBASHI_CODE
    )
    rows = children * 4  # four checkups per synthetic child
    buffer = io.BytesIO()
    write_infant_checkup_csv(buffer, rows, municipality_code=MAEBASHI_CODE, seed=20261126)
    batch = pipeline.batch_receive(
        organization=municipality,
        format_key="infant_checkup",
        chunks=iter([buffer.getvalue()]),
        filename=f"research-demo-{children}.csv",
    )
    batch.refresh_from_db()
    if batch.status == Batch.Status.VALIDATED:
        pipeline.batch_confirm(batch=batch, user=None)
        batch.refresh_from_db()
    ResearchRegime.objects.update_or_create(
        municipality=municipality,
        defaults={
            "kind": ResearchRegime.Kind.OPT_OUT,
            "legal_basis": OPT_OUT_BASIS,
            "notice_url": "https://www.city.maebashi.gunma.jp/",
            "notice_published_on": notice_on or timezone.localdate().replace(month=1, day=1),
            "updated_at": timezone.now(),
        },
    )
    return ResearchDemo(municipality=municipality, rows=rows, batch_status=batch.status)
