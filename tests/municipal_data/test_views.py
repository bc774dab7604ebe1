"""The municipal staff pages: upload → validation report → import with the
real pipeline and the real infant-checkup format, the error report as
CSV, the match-review queue (accept imports the row, reject keeps it
out), the dashboard's coverage figures — persona by persona (another
municipality's ids are 404s like missing ones)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse

from municipal_data import selectors
from municipal_data.formats.common import CHECKUP_TYPE_SYSTEM, VACCINE_SYSTEM
from municipal_data.models import MatchReview
from municipal_data.services import review_decide
from phr import services, store
from phr.models import AuditEvent, Batch, Membership, Provenance, Resource, Role
from phr.terminology import CATEGORY_SYSTEM, Category
from sharing.access import forget_grants
from sharing.services import dv_block_set
from tests import factories as f

pytestmark = pytest.mark.django_db

Capture = Callable[..., Any]
JAPAN = ZoneInfo("Asia/Tokyo")

HEADER = "市町村コード,宛名番号,氏名（姓）,氏名（名）,生年月日,性別,健診区分,受診日,身長,体重,判定"


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = tmp_path


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response: HttpResponse) -> str:
    return response.content.decode()


def checkup_line(
    code: str,
    number: str,
    *,
    given: str = "陽翔",
    birth: str = "2025-01-10",
    sex: str = "1",
    kind: str = "3～4か月",
    day: str = "2025-05-01",
    height: str = "61.2",
    weight: str = "6.35",
) -> str:
    return f"{code},{number},前橋,{given},{birth},{sex},{kind},{day},{height},{weight},所見なし"


def checkup_csv(lines: list[str], encoding: str = "utf-8") -> bytes:
    return ("\r\n".join([HEADER, *lines]) + "\r\n").encode(encoding)


def upload(
    client: Client,
    capture: Capture,
    municipality: Any,
    data: bytes,
    *,
    name: str = "kenshin.csv",
    encoding: str = "auto",
) -> HttpResponse:
    with capture(execute=True):
        response: HttpResponse = client.post(
            reverse("municipal:upload"),
            {
                "municipality": municipality.pk,
                "format": "infant_checkup",
                "encoding": encoding,
                "file": SimpleUploadedFile(name, data, content_type="text/csv"),
            },
        )
    return response


def latest_batch() -> Batch:
    return Batch.objects.order_by("-pk").first()  # type: ignore[return-value]


def one_bad_row(code: str) -> bytes:
    return checkup_csv(
        [
            checkup_line(code, "1001"),
            checkup_line(code, "1002", given="結衣", birth="2025-02-01", sex="2", kind="1か月",
                         day="2025-03-03", height="52.0", weight="4.10"),
            checkup_line(code, "1003", given="蓮", day="2025-13-01"),
        ]
    )  # fmt: skip


# --------------------------------------------------------------------------
# Who gets in
# --------------------------------------------------------------------------

PAGES = ("municipal:dashboard", "municipal:upload", "municipal:batches", "municipal:reviews")


@pytest.mark.parametrize("name", PAGES)
def test_it_opens_the_pages_to_municipal_staff(name: str, municipal_officer: Any) -> None:
    response = client_for(municipal_officer).get(reverse(name))
    assert response.status_code == 200


@pytest.mark.parametrize("name", PAGES)
@pytest.mark.parametrize("persona", ["clinician", "mother", "stranger"])
def test_it_hides_the_pages_from_everyone_else(
    name: str, persona: str, request: pytest.FixtureRequest
) -> None:
    # Not found, like a page that does not exist: nothing says there is a
    # municipal portal here.
    user = request.getfixturevalue(persona)
    assert client_for(user).get(reverse(name)).status_code == 404


def test_it_sends_staff_without_mfa_to_set_it_up(staff_without_mfa: Any) -> None:
    response = client_for(staff_without_mfa).get(reverse("municipal:dashboard"))
    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_activate_totp")


def test_it_sends_anonymous_visitors_to_the_login_page(db: None) -> None:
    response = Client().get(reverse("municipal:dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_it_links_the_dashboard_from_the_staff_home_page(
    municipal_officer: Any, clinician: Any
) -> None:
    assert reverse("municipal:dashboard") in text(client_for(municipal_officer).get("/"))
    assert reverse("municipal:dashboard") not in text(client_for(clinician).get("/"))


def test_a_member_of_two_municipalities_chooses_one(municipal_officer: Any) -> None:
    second = f.MunicipalityFactory(name="ZZ村")
    Membership.objects.create(
        user=municipal_officer, organization=second, role=Role.MUNICIPAL_STAFF
    )
    client = client_for(municipal_officer)
    first = selectors.staff_municipalities(municipal_officer)[0]
    assert first != second
    assert first.name in text(client.get(reverse("municipal:dashboard")))  # the first by name
    chosen = text(client.get(reverse("municipal:dashboard"), {"municipality": second.pk}))
    assert "ZZ村" in chosen
    assert f'<option value="{second.pk}" selected>' in chosen
    # Someone else's municipality cannot be chosen.
    other = f.MunicipalityFactory()
    assert client.get(reverse("municipal:dashboard"), {"municipality": other.pk}).status_code == 404


# --------------------------------------------------------------------------
# Upload, report, import
# --------------------------------------------------------------------------


def test_it_uploads_reports_the_bad_row_and_imports_the_valid_ones(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> None:
    client = client_for(municipal_officer)
    response = upload(client, django_capture_on_commit_callbacks, municipality,
                      one_bad_row(municipality.code))  # fmt: skip
    batch = latest_batch()
    assert response.status_code == 302
    assert response["Location"] == reverse("municipal:batch", args=[batch.pk])
    assert batch.status == Batch.Status.VALIDATED
    assert batch.uploaded_by == municipal_officer
    assert batch.organization == municipality

    page = text(client.get(response["Location"]))
    assert "kenshin.csv" in page
    assert batch.sha256 in page
    assert "UTF-8" in page
    assert municipal_officer.display_name in page
    # The bad row: line, column as the file wrote it, value, and why in both languages.
    assert "<td>4</td>" in page
    assert "受診日" in page
    assert "2025-13-01" in page
    assert "存在しない日付です" in page
    assert "no such date" in page
    # The summary, and the choice: only the valid rows (no plain "import").
    assert batch.summary["invalid"] == 1
    assert batch.summary["valid"] == 2
    assert batch.summary["new_patients"] == 2
    assert 'name="only_valid"' in page
    assert 'class="import-all"' not in page
    assert reverse("municipal:batch_errors_csv", args=[batch.pk]) in page

    # Importing everything is refused while rows have errors.
    with django_capture_on_commit_callbacks(execute=True):
        refused = client.post(reverse("municipal:batch_confirm", args=[batch.pk]), follow=True)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.VALIDATED
    assert "正しい行だけを取り込むことを選んでください" in text(refused)

    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(
            reverse("municipal:batch_confirm", args=[batch.pk]), {"only_valid": "1"}, follow=True
        )
    batch.refresh_from_db()
    assert batch.status == Batch.Status.IMPORTED
    assert batch.only_valid
    assert batch.confirmed_by == municipal_officer
    assert batch.result["new_patients"] == 2
    assert batch.result["created"] == batch.summary["created"] > 2
    encounters = Resource.objects.filter(resource_type="Encounter", category="infant_checkups")
    assert encounters.count() == 2
    page = text(done)
    assert 'class="batch-count batch-count-created nonzero"' in page
    assert f"<dd>{batch.result['created']}</dd>" in page
    assert 'name="only_valid"' not in page  # nothing more to import


def test_it_imports_a_file_without_errors_with_one_button(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> None:
    client = client_for(municipal_officer)
    data = checkup_csv([checkup_line(municipality.code, "1001")], encoding="cp932")
    upload(client, django_capture_on_commit_callbacks, municipality, data)
    batch = latest_batch()
    assert batch.detected_encoding == "cp932"
    page = text(client.get(reverse("municipal:batch", args=[batch.pk])))
    assert "Shift_JIS" in page
    assert 'class="import-all"' in page
    assert 'name="only_valid"' not in page
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("municipal:batch_confirm", args=[batch.pk]))
    batch.refresh_from_db()
    assert batch.status == Batch.Status.IMPORTED
    assert not batch.only_valid


def test_the_error_report_is_a_csv_excel_opens(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> None:
    client = client_for(municipal_officer)
    upload(client, django_capture_on_commit_callbacks, municipality,
           one_bad_row(municipality.code))  # fmt: skip
    batch = latest_batch()
    response = client.get(reverse("municipal:batch_errors_csv", args=[batch.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert f'filename="batch-{batch.pk}-errors.csv"' in response["Content-Disposition"]
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert body.startswith(b"\xef\xbb\xbf")  # the BOM: Excel reads it as UTF-8
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert rows[0] == ["line", "column", "value", "code", "reason_ja", "reason_en"]
    assert rows[1] == ["4", "受診日", "2025-13-01", "date", "存在しない日付です", "no such date"]
    assert len(rows) == 2
    # The cells of the bad rows left the system: who took them is audited.
    event = AuditEvent.objects.get(action="batch.errors_download")
    assert event.actor_id == municipal_officer.pk
    assert event.organization_id == municipality.pk
    assert event.patient_id is None
    assert event.detail["batch"] == batch.pk


def test_it_says_plainly_when_the_same_file_was_imported_before(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> None:
    client = client_for(municipal_officer)
    data = checkup_csv([checkup_line(municipality.code, "1001")])
    upload(client, django_capture_on_commit_callbacks, municipality, data)
    first = latest_batch()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("municipal:batch_confirm", args=[first.pk]))
    upload(client, django_capture_on_commit_callbacks, municipality, data, name="again.csv")
    again = latest_batch()
    assert again.same_as == first
    page = text(client.get(reverse("municipal:batch", args=[again.pk])))
    day = first.created_at.astimezone(JAPAN).strftime("%Y/%m/%d")  # shown in Japan's time
    assert f"このファイルは {day} に取り込み済みです。新しく取り込まれる記録はありません。" in page


def test_it_shows_why_a_file_was_rejected_in_both_languages(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> None:
    client = client_for(municipal_officer)
    data = "名前,年齢\r\n花子,3\r\n".encode()
    upload(client, django_capture_on_commit_callbacks, municipality, data)
    batch = latest_batch()
    assert batch.status == Batch.Status.REJECTED
    page = text(client.get(reverse("municipal:batch", args=[batch.pk])))
    assert batch.file_error["ja"] in page
    assert batch.file_error["en"] in page
    assert "必須の列がありません" in page
    # Cancelled, to fix and upload again.
    response = client.post(reverse("municipal:batch_cancel", args=[batch.pk]))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("municipal:upload"))
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED


def test_it_cancels_a_validated_batch_and_refuses_to_import_it_afterwards(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> None:
    client = client_for(municipal_officer)
    upload(client, django_capture_on_commit_callbacks, municipality,
           one_bad_row(municipality.code))  # fmt: skip
    batch = latest_batch()
    client.post(reverse("municipal:batch_cancel", args=[batch.pk]))
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED
    page = text(
        client.post(
            reverse("municipal:batch_confirm", args=[batch.pk]), {"only_valid": "1"}, follow=True
        )
    )
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED
    assert "message-error" in page
    assert not Resource.objects.filter(resource_type="Encounter").exists()


def test_the_form_reports_a_missing_file_and_an_unknown_format(
    municipality: Any, municipal_officer: Any
) -> None:
    response = client_for(municipal_officer).post(
        reverse("municipal:upload"), {"municipality": municipality.pk, "format": "nope"}
    )
    assert response.status_code == 200
    assert response.context["form"].errors.keys() == {"format", "file"}
    assert not Batch.objects.exists()


def test_it_refuses_a_file_over_the_limit(
    settings: Any, municipality: Any, municipal_officer: Any
) -> None:
    settings.MUNICIPAL_UPLOAD_MAX_MB = 1
    data = checkup_csv([checkup_line(municipality.code, "1001")] * 20000)
    assert len(data) > 1024 * 1024 + 64 * 1024
    response = client_for(municipal_officer).post(
        reverse("municipal:upload"),
        {
            "municipality": municipality.pk,
            "format": "infant_checkup",
            "encoding": "auto",
            "file": SimpleUploadedFile("big.csv", data),
        },
    )
    assert response.status_code == 413
    assert "1 MB" in text(response)
    assert not Batch.objects.exists()


def test_every_form_needs_its_csrf_token(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> None:
    # The upload view checks the token itself (after its size limit is in
    # place): a cross-site form is refused like everywhere else.
    client = Client(enforce_csrf_checks=True)
    client.force_login(municipal_officer)
    data = checkup_csv([checkup_line(municipality.code, "1001")])
    response = client.post(
        reverse("municipal:upload"),
        {"municipality": municipality.pk, "format": "infant_checkup", "file": SimpleUploadedFile(
            "a.csv", data)},
    )  # fmt: skip
    assert response.status_code == 403
    assert not Batch.objects.exists()
    upload(client_for(municipal_officer), django_capture_on_commit_callbacks, municipality, data)
    batch = latest_batch()
    for name in ("batch_confirm", "batch_cancel"):
        response = client.post(reverse(f"municipal:{name}", args=[batch.pk]))
        assert response.status_code == 403
    batch.refresh_from_db()
    assert batch.status == Batch.Status.VALIDATED


def test_the_progress_fragment_polls_while_a_job_runs_and_reloads_the_page_after(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> None:
    client = client_for(municipal_officer)
    # Received, its validation not run yet (no commit): the page polls.
    client.post(
        reverse("municipal:upload"),
        {
            "municipality": municipality.pk,
            "format": "infant_checkup",
            "encoding": "auto",
            "file": SimpleUploadedFile(
                "a.csv", checkup_csv([checkup_line(municipality.code, "1")])
            ),
        },
    )
    batch = latest_batch()
    assert batch.status == Batch.Status.RECEIVED
    url = reverse("municipal:batch_progress", args=[batch.pk])
    page = text(client.get(reverse("municipal:batch", args=[batch.pk])))
    assert f'hx-get="{url}"' in page
    assert 'hx-trigger="every 2s"' in page
    fragment = client.get(url, HTTP_HX_REQUEST="true")
    assert 'hx-trigger="every 2s"' in text(fragment)
    assert "HX-Refresh" not in fragment
    # Validated: the fragment stops polling and asks htmx to reload the page.
    batch.status = Batch.Status.VALIDATED
    batch.save(update_fields=["status"])
    fragment = client.get(url, HTTP_HX_REQUEST="true")
    assert fragment["HX-Refresh"] == "true"
    assert "hx-trigger" not in text(fragment)


def test_another_municipalitys_batch_is_not_found(
    municipality: Any,
    municipal_officer: Any,
    other_municipal_officer: Any,
    django_capture_on_commit_callbacks: Capture,
) -> None:
    upload(client_for(municipal_officer), django_capture_on_commit_callbacks, municipality,
           one_bad_row(municipality.code))  # fmt: skip
    batch = latest_batch()
    other = client_for(other_municipal_officer)
    for name in ("batch", "batch_progress", "batch_errors_csv"):
        assert other.get(reverse(f"municipal:{name}", args=[batch.pk])).status_code == 404
    for name in ("batch_confirm", "batch_cancel"):
        response = other.post(reverse(f"municipal:{name}", args=[batch.pk]), {"only_valid": "1"})
        assert response.status_code == 404
    # The same as an id that does not exist.
    assert other.get(reverse("municipal:batch", args=[batch.pk + 1000])).status_code == 404
    batch.refresh_from_db()
    assert batch.status == Batch.Status.VALIDATED
    # Nor is it on their list.
    assert "kenshin.csv" not in text(other.get(reverse("municipal:batches")))
    assert "kenshin.csv" in text(client_for(municipal_officer).get(reverse("municipal:batches")))


def test_the_actions_take_only_post(municipality: Any, municipal_officer: Any) -> None:
    batch = Batch.objects.create(
        organization=municipality, format="infant_checkup", filename="x.csv", path="x",
        sha256="0" * 64, size=1, status=Batch.Status.VALIDATED, summary={"valid": 1, "rows": 1},
    )  # fmt: skip
    client = client_for(municipal_officer)
    assert client.get(reverse("municipal:batch_confirm", args=[batch.pk])).status_code == 405
    assert client.get(reverse("municipal:batch_cancel", args=[batch.pk])).status_code == 405
    assert client.post(reverse("municipal:batch", args=[batch.pk])).status_code == 405


# --------------------------------------------------------------------------
# The match-review queue
# --------------------------------------------------------------------------


@pytest.fixture
def review(
    municipality: Any, municipal_officer: Any, django_capture_on_commit_callbacks: Capture
) -> MatchReview:
    """A resident (宛名番号 2001, born 2025-01-10, a girl) and a checkup row
    for 2001 that says born 2025-01-12, a boy: the row waits for review."""
    client = client_for(municipal_officer)
    registered = checkup_line(municipality.code, "2001", given="さくら", sex="2", kind="1か月",
                              day="2025-02-12", height="50.0", weight="4.0")  # fmt: skip
    upload(client, django_capture_on_commit_callbacks, municipality, checkup_csv([registered]))
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("municipal:batch_confirm", args=[latest_batch().pk]))
    differing = checkup_line(municipality.code, "2001", given="さくら", birth="2025-01-12")
    upload(client, django_capture_on_commit_callbacks, municipality, checkup_csv([differing]),
           name="differs.csv")  # fmt: skip
    batch = latest_batch()
    assert batch.summary["review"] == 1
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("municipal:batch_confirm", args=[batch.pk]))
    batch.refresh_from_db()
    assert batch.result["review"] == 1
    return MatchReview.objects.get()


def test_an_imported_batch_links_to_the_review_queue(
    review: MatchReview, municipal_officer: Any
) -> None:
    page = text(
        client_for(municipal_officer).get(reverse("municipal:batch", args=[review.batch_id]))
    )
    assert reverse("municipal:reviews") in page
    assert "match review" in page.lower() or "照合" in page


def test_the_queue_shows_the_row_and_what_differs_and_audits_the_person(
    review: MatchReview, municipal_officer: Any
) -> None:
    response = client_for(municipal_officer).get(reverse("municipal:reviews"))
    page = text(response)
    assert "2001" in page
    assert "2025-01-12" in page  # the file
    assert "2025-01-10" in page  # the record
    assert "さくら" in page  # the row's cells
    assert "differs.csv" in page
    assert f'action="{reverse("municipal:review_decide", args=[review.pk])}"' in page
    event = AuditEvent.objects.get(action="view.match_review")
    assert event.patient_id == review.patient_id
    assert event.purpose == "public_health"
    assert event.categories == [Category.INFANT_CHECKUPS]


def test_accepting_updates_the_person_and_imports_the_row(
    review: MatchReview, municipal_officer: Any
) -> None:
    encounters = Resource.objects.filter(resource_type="Encounter", deleted=False)
    assert encounters.count() == 1
    response = client_for(municipal_officer).post(
        reverse("municipal:review_decide", args=[review.pk]),
        {"decision": "accept", "note": "戸籍で確認"},
    )
    assert response.status_code == 302
    review.refresh_from_db()
    assert review.status == MatchReview.Status.ACCEPTED
    assert review.decided_by == municipal_officer
    assert review.note == "戸籍で確認"
    person = Resource.objects.get(pk=review.patient_id)
    assert person.content["birthDate"] == "2025-01-12"
    assert person.content["gender"] == "male"
    assert person.version == 2
    provenance = Provenance.objects.get(pk=person.provenance_id)
    assert provenance.origin == Provenance.Origin.MUNICIPALITY
    assert provenance.agent_org_id == review.municipality_id
    assert provenance.agent_user == municipal_officer
    # The row's checkup is now in the person's record.
    assert encounters.count() == 2
    imported = encounters.get(tokens__contains=[f"{CHECKUP_TYPE_SYSTEM}|3-4m"])
    assert imported.compartments == [review.patient_id]
    event = AuditEvent.objects.get(action="match_review.accept")
    assert event.patient_id == review.patient_id
    assert event.organization_id == review.municipality_id
    assert event.detail["review"] == review.pk
    assert event.detail["created"] >= 1
    # Deciding again changes nothing.
    review_decide(review=review, user=municipal_officer, accept=False)
    review.refresh_from_db()
    assert review.status == MatchReview.Status.ACCEPTED


def test_rejecting_keeps_the_row_out(review: MatchReview, municipal_officer: Any) -> None:
    client = client_for(municipal_officer)
    response = client.post(
        reverse("municipal:review_decide", args=[review.pk]), {"decision": "reject"}
    )
    assert response.status_code == 302
    review.refresh_from_db()
    assert review.status == MatchReview.Status.REJECTED
    assert Resource.objects.get(pk=review.patient_id).content["birthDate"] == "2025-01-10"
    assert Resource.objects.filter(resource_type="Encounter").count() == 1
    assert AuditEvent.objects.filter(action="match_review.reject").count() == 1
    assert "2001" not in text(client.get(reverse("municipal:reviews")))


def test_another_municipality_cannot_see_or_decide_a_review(
    review: MatchReview, other_municipal_officer: Any, clinician: Any
) -> None:
    for user in (other_municipal_officer, clinician):
        client = client_for(user)
        response = client.post(
            reverse("municipal:review_decide", args=[review.pk]), {"decision": "accept"}
        )
        assert response.status_code == 404
    assert "2001" not in text(client_for(other_municipal_officer).get(reverse("municipal:reviews")))
    review.refresh_from_db()
    assert review.status == MatchReview.Status.OPEN


def test_a_decision_needs_a_choice(review: MatchReview, municipal_officer: Any) -> None:
    response = client_for(municipal_officer).post(
        reverse("municipal:review_decide", args=[review.pk]), {"decision": "maybe"}, follow=True
    )
    assert response.status_code == 200
    review.refresh_from_db()
    assert review.status == MatchReview.Status.OPEN


def test_the_dashboard_counts_the_open_reviews(review: MatchReview, municipal_officer: Any) -> None:
    page = text(client_for(municipal_officer).get(reverse("municipal:dashboard")))
    assert 'class="count-badge">1<' in page
    assert "differs.csv" in page  # the latest uploads


# --------------------------------------------------------------------------
# Coverage
# --------------------------------------------------------------------------


def _child(municipality: Any, born: str, number: str) -> Any:
    child = f.make_patient(birth_date=date.fromisoformat(born))
    services.residency_add(
        patient=child,
        municipality=municipality,
        resident_number=number,
        valid_from=date.fromisoformat(born),
    )
    return child


def _checkup(child: Any, kind: str, day: str, *, status: str = "finished") -> None:
    provenance = services.provenance_create(origin=Provenance.Origin.MUNICIPALITY)
    resource = {
        "resourceType": "Encounter",
        "meta": {"tag": [{"system": CATEGORY_SYSTEM, "code": Category.INFANT_CHECKUPS}]},
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": CHECKUP_TYPE_SYSTEM, "code": kind}]}],
        "subject": {"reference": f"Patient/{child.pk}"},
        "period": {"start": day, "end": day},
    }
    store.record_write(resource, provenance=provenance)


def _dose(child: Any, vaccine: str, dose: int, *, status: str = "completed") -> None:
    provenance = services.provenance_create(origin=Provenance.Origin.MUNICIPALITY)
    resource = {
        "resourceType": "Immunization",
        "status": status,
        "vaccineCode": {
            "coding": [{"system": VACCINE_SYSTEM, "code": vaccine}],
            "text": "5種混合",
        },
        "patient": {"reference": f"Patient/{child.pk}"},
        "occurrenceDateTime": "2025-09-01",
        "protocolApplied": [{"doseNumberPositiveInt": dose}],
    }
    store.record_write(resource, provenance=provenance)


@pytest.fixture
def cohorts(municipality: Any, mother_patient: Any) -> dict[str, Any]:
    """Children of the town born in fiscal years 2024 (A, B, C) and 2025
    (D, E), one born in FY2023 (Z), and two who must not count: a child of
    another town and a child who moved away (the mother, an adult, is a
    resident too and must not count either)."""
    kids = {
        "A": _child(municipality, "2024-05-10", "A"),
        "B": _child(municipality, "2025-03-31", "B"),  # FY2024's last day
        "C": _child(municipality, "2024-04-01", "C"),  # FY2024's first day
        "D": _child(municipality, "2025-04-01", "D"),
        "E": _child(municipality, "2025-12-01", "E"),
        "Z": _child(municipality, "2024-03-31", "Z"),  # FY2023
    }
    _checkup(kids["A"], "1m", "2024-06-10")
    _checkup(kids["A"], "3-4m", "2024-09-01")
    _checkup(kids["B"], "1m", "2025-05-01")
    _checkup(kids["C"], "1m", "2024-05-01", status="cancelled")  # not done
    _checkup(kids["D"], "1m", "2025-05-01")
    _checkup(kids["D"], "1m", "2025-05-08")  # twice: one child
    _checkup(kids["Z"], "1m", "2024-05-01")
    _dose(kids["A"], "dtap-ipv-hib", 1)
    _dose(kids["A"], "dtap-ipv-hib", 2)
    _dose(kids["B"], "dtap-ipv-hib", 1)
    _dose(kids["D"], "dtap-ipv-hib", 1)
    _dose(kids["E"], "dtap-ipv-hib", 1, status="not-done")
    # Not the town's children today:
    elsewhere = _child(f.MunicipalityFactory(), "2024-06-01", "X")
    _checkup(elsewhere, "1m", "2024-07-01")
    moved = _child(municipality, "2024-07-01", "M")
    moved.residencies.update(valid_to=date(2025, 3, 31))
    _checkup(moved, "1m", "2024-08-01")
    return kids


def test_coverage_gives_the_share_of_each_cohort_with_each_checkup_and_dose(
    cohorts: dict[str, Any], municipality: Any, municipal_officer: Any
) -> None:
    result = selectors.coverage(
        user=municipal_officer, municipality=municipality, at=date(2026, 11, 1)
    )
    assert result.cohorts == [2025, 2024, 2023]
    assert result.children == {2025: 2, 2024: 3, 2023: 1}
    by_kind = {line.key: line.shares for line in result.checkups}
    assert [line.key for line in result.checkups][:7] == [
        "1m", "3-4m", "6-7m", "9-10m", "18m", "3y", "5y"
    ]  # fmt: skip
    assert by_kind["1m"] == [
        selectors.Share(1, 2),  # D (twice, once counted); E none
        selectors.Share(2, 3),  # A, B; C's was cancelled
        selectors.Share(1, 1),
    ]
    assert [s.percent for s in by_kind["1m"]] == [50.0, 66.7, 100.0]
    assert by_kind["3-4m"] == [selectors.Share(0, 2), selectors.Share(1, 3), selectors.Share(0, 1)]
    assert by_kind["5y"] == [selectors.Share(0, 2), selectors.Share(0, 3), selectors.Share(0, 1)]
    doses = {line.key: line.shares for line in result.vaccinations}
    assert doses == {
        "dtap-ipv-hib#1": [selectors.Share(1, 2), selectors.Share(2, 3), selectors.Share(0, 1)],
        "dtap-ipv-hib#2": [selectors.Share(0, 2), selectors.Share(1, 3), selectors.Share(0, 1)],
    }


def test_coverage_counts_only_what_the_user_may_see(
    cohorts: dict[str, Any], municipality: Any, municipal_officer: Any, other_municipal_officer: Any
) -> None:
    # A DV block naming the officer herself (contrived, but it is the rule
    # that reaches everyone) takes the child out of every figure, as out of
    # every page: the figures are read through the policy point.
    colleague = f.make_member(Role.MUNICIPAL_STAFF, municipality)
    dv_block_set(patient=cohorts["A"], blocked_user=municipal_officer, by=colleague)
    forget_grants(municipal_officer)
    result = selectors.coverage(
        user=municipal_officer, municipality=municipality, at=date(2026, 11, 1)
    )
    assert result.children[2024] == 2
    by_kind = {line.key: line.shares for line in result.checkups}
    assert by_kind["1m"][1] == selectors.Share(1, 2)
    # Another town's officer sees none of this town's children.
    other = selectors.coverage(
        user=other_municipal_officer, municipality=municipality, at=date(2026, 11, 1)
    )
    assert other.cohorts == []


def test_the_dashboard_shows_the_figures_and_audits_one_aggregate_use(
    cohorts: dict[str, Any], municipality: Any, municipal_officer: Any
) -> None:
    page = text(client_for(municipal_officer).get(reverse("municipal:dashboard")))
    assert "66.7%" in page
    assert "(2/3)" in page
    assert "1か月児健診" in page
    events = AuditEvent.objects.filter(action="view.municipal_dashboard")
    assert events.count() == 1  # one row for the view, not one per child
    event = events.get()
    assert event.patient_id is None
    assert event.organization_id == municipality.pk
    assert event.detail["aggregate"] is True
    assert event.detail["children"] == 6
    assert (
        not AuditEvent.objects.filter(patient_id__in=[c.pk for c in cohorts.values()])
        .exclude(action__startswith="dv_block")
        .exists()
    )


def test_fiscal_years_start_in_april() -> None:
    assert selectors.fiscal_year(date(2025, 3, 31)) == 2024
    assert selectors.fiscal_year(date(2025, 4, 1)) == 2025
