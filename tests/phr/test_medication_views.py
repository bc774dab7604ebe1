"""The medication notebook pages (/medications/): importing by paste,
scan and upload (Shift_JIS, UTF-8, BOM), split parts over several
submissions, the report, manual entry, and who may do what — the person
herself and a child's guardians write; a clinic with a medications consent
reads (page and FHIR API); a stranger gets 404 like a missing id, audited.
Garbage through the view (hypothesis) never gives a 500 and never imports
without a report."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phr.models import AuditEvent, Organization, Patient, Provenance, Resource, User
from sharing.services import consent_grant

pytestmark = pytest.mark.django_db

# Copies of ../shared/reference/data/jahis_tc_* kept in the repository.
REFERENCE = Path(__file__).resolve().parents[2] / "phr" / "reference_data"
SAMPLE = (REFERENCE / "jahis_tc_sample_utf8.txt").read_text(encoding="utf-8")
SAMPLE_SJIS = (REFERENCE / "jahis_tc_sample_sjis.txt").read_bytes()


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def import_url(patient: Patient) -> str:
    return reverse("medication:import", args=[patient.pk])


def notebook_url(patient: Patient) -> str:
    return reverse("medication:notebook", args=[patient.pk])


def dispenses(patient: Patient) -> list[Resource]:
    return list(
        Resource.objects.filter(
            resource_type="MedicationDispense", compartments__overlap=[patient.pk]
        )
    )


def paste(client: Client, patient: Patient, text: str, via: str = "paste", **extra: Any) -> Any:
    return client.post(import_url(patient), {"text": text, "via": via}, **extra)


# --------------------------------------------------------------------------
# Importing
# --------------------------------------------------------------------------


def test_the_mother_imports_pasted_text_and_sees_the_report(
    mother: User, mother_patient: Patient
) -> None:
    client = client_for(mother)
    assert client.get(import_url(mother_patient)).status_code == 200
    response = paste(client, mother_patient, SAMPLE)
    assert response.status_code == 200
    assert len(dispenses(mother_patient)) == 3
    body = response.content.decode()
    assert 'id="import-summary"' in body
    assert "コリオパンカプセル5mg" in body
    assert body.count('class="import-item import-created"') == 3
    assert "3 件を追加しました。" in body  # Japanese by default (locale/features/medications)
    provenance = Provenance.objects.get(pk=dispenses(mother_patient)[0].provenance_id)
    assert provenance.source == "jahis:paste"
    # The notebook shows them, grouped under the pharmacy, with the pharmacy badge.
    page = client.get(notebook_url(mother_patient)).content.decode()
    assert "株式会社 工業会薬局 駅前店" in page
    assert "badge-pharmacy" in page
    assert "フェロベリン配合錠" in page
    assert "調剤されたお薬" in page


def test_importing_the_same_text_again_says_nothing_is_new(
    mother: User, mother_patient: Patient
) -> None:
    client = client_for(mother)
    paste(client, mother_patient, SAMPLE)
    response = paste(client, mother_patient, SAMPLE)
    assert response.status_code == 200
    assert len(dispenses(mother_patient)) == 3
    assert response.content.decode().count('class="import-item import-unchanged"') == 3


def test_a_shift_jis_file_is_uploaded_and_detected(mother: User, mother_patient: Patient) -> None:
    upload = SimpleUploadedFile("okusuri.txt", SAMPLE_SJIS, content_type="text/plain")
    response = client_for(mother).post(import_url(mother_patient), {"file": upload})
    assert response.status_code == 200
    names = {r.content["medicationCodeableConcept"]["text"] for r in dispenses(mother_patient)}
    assert "モーラステープ２０ｍｇ" in names
    assert Provenance.objects.get(pk=dispenses(mother_patient)[0].provenance_id).source == (
        "jahis:upload"
    )


def test_a_utf8_file_with_a_byte_order_mark_is_uploaded(
    mother: User, mother_patient: Patient
) -> None:
    upload = SimpleUploadedFile("okusuri.txt", b"\xef\xbb\xbf" + SAMPLE.encode())
    response = client_for(mother).post(import_url(mother_patient), {"file": upload})
    assert response.status_code == 200
    assert len(dispenses(mother_patient)) == 3


def test_an_empty_form_or_both_inputs_are_refused_with_a_message(
    mother: User, mother_patient: Patient
) -> None:
    client = client_for(mother)
    empty = client.post(import_url(mother_patient), {"text": "  "}, HTTP_ACCEPT_LANGUAGE="en")
    both = client.post(
        import_url(mother_patient),
        {"text": SAMPLE, "file": SimpleUploadedFile("a.txt", SAMPLE.encode())},
        HTTP_ACCEPT_LANGUAGE="en",
    )
    nothing = client.post(import_url(mother_patient), {}, HTTP_ACCEPT_LANGUAGE="en")
    # A form with errors is a bad request (as the handbook's forms answer).
    assert (empty.status_code, both.status_code, nothing.status_code) == (400, 400, 400)
    assert "Paste the text, scan the QR code or choose a file." in empty.content.decode()
    assert "Paste the text, scan the QR code or choose a file." in nothing.content.decode()
    assert "not both" in both.content.decode()
    assert dispenses(mother_patient) == []


def test_malformed_lines_are_reported_by_line_and_the_rest_imported(
    mother: User, mother_patient: Patient
) -> None:
    lines = SAMPLE.splitlines()
    lines.insert(8, "201,1,,6,錠,2,620000000,1")  # line 9: no medicine name
    response = paste(
        client_for(mother), mother_patient, "\n".join(lines), HTTP_ACCEPT_LANGUAGE="en"
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert len(dispenses(mother_patient)) == 3
    assert 'id="import-errors"' in body
    assert "record 201: 薬品名称 is missing" in body
    assert "<td>9</td>" in body


def test_split_qr_codes_are_accepted_in_separate_submissions_in_any_order(
    mother: User, mother_patient: Patient
) -> None:
    header, *records = SAMPLE.splitlines()
    cut = [records[:6], records[6:10], records[10:]]
    parts = [
        "\r\n".join([header, *body, f"911,20260310123000,3,{n}"]) for n, body in enumerate(cut, 1)
    ]
    client = client_for(mother)
    first = paste(client, mother_patient, parts[1], via="scan")
    assert 'id="waiting-parts"' in first.content.decode()
    assert dispenses(mother_patient) == []
    # The import page says what is still missing.
    assert 'id="waiting-parts"' in client.get(import_url(mother_patient)).content.decode()
    paste(client, mother_patient, parts[2], via="scan")
    assert dispenses(mother_patient) == []
    last = paste(client, mother_patient, parts[0], via="scan")
    assert 'id="waiting-parts"' not in last.content.decode()
    assert len(dispenses(mother_patient)) == 3
    assert Provenance.objects.get(pk=dispenses(mother_patient)[0].provenance_id).source == (
        "jahis:scan"
    )


def test_parts_kept_for_one_person_do_not_complete_another_persons_document(
    mother: User, mother_patient: Patient, child: Patient
) -> None:
    header, *records = SAMPLE.splitlines()
    one = "\n".join([header, *records[:6], "911,1,2,1"])
    two = "\n".join([header, *records[6:], "911,1,2,2"])
    client = client_for(mother)
    paste(client, mother_patient, one)
    paste(client, child, two)
    assert dispenses(mother_patient) == []
    assert dispenses(child) == []


def test_waiting_parts_can_be_discarded(mother: User, mother_patient: Patient) -> None:
    header, *records = SAMPLE.splitlines()
    client = client_for(mother)
    paste(client, mother_patient, "\n".join([header, *records[:6], "911,1,2,1"]))
    response = client.post(import_url(mother_patient), {"action": "discard"})
    assert response.status_code == 302
    assert 'id="waiting-parts"' not in client.get(import_url(mother_patient)).content.decode()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.lists(
            st.sampled_from([*SAMPLE.splitlines(), "911,1,2,1", "5,H310501,1", "201,,x", ""]),
            max_size=20,
        ).map("\n".join),
    )
)
def test_garbage_never_gives_a_500_nor_an_import_without_a_report(
    mother: User, mother_patient: Patient, text: str
) -> None:
    client = client_for(mother)
    before = Resource.objects.count()
    response = paste(client, mother_patient, text)
    body = response.content.decode()
    added = Resource.objects.count() - before
    if response.status_code == 400:
        # A form with errors (blank text, a NUL character): the form says
        # what is wrong, and nothing is written.
        assert text.strip() == "" or "\x00" in text
        assert added == 0
        assert 'class="errorlist field-errors"' in body
        return
    assert response.status_code == 200
    if added:
        # Whatever was written is listed in the report.
        assert body.count('class="import-item import-created"') == added
    else:
        assert "import-created" not in body
    client.post(import_url(mother_patient), {"action": "discard"})


# --------------------------------------------------------------------------
# Manual entry
# --------------------------------------------------------------------------


def test_a_parent_adds_a_medicine_and_edits_it(mother: User, child: Patient) -> None:
    client = client_for(mother)
    response = client.post(
        reverse("medication:statement-new", args=[child.pk]),
        {
            "name": "ムコダインシロップ",
            "dosage": "1日3回",
            "start": "2026-11-20",
            "days": "5",
            "taking": "on",
            "note": "保育園で",
        },
    )
    assert response.status_code == 302
    (statement,) = Resource.objects.filter(
        resource_type="MedicationStatement", compartments__overlap=[child.pk]
    )
    assert statement.content["effectivePeriod"] == {"start": "2026-11-20", "end": "2026-11-24"}
    assert Provenance.objects.get(pk=statement.provenance_id).origin == Provenance.Origin.SELF
    edit = reverse("medication:statement-edit", args=[child.pk, statement.pk])
    page = client.get(edit)
    assert page.status_code == 200
    assert "ムコダインシロップ" in page.content.decode()
    client.post(edit, {"name": "ムコダインシロップ", "dosage": "1日2回", "start": "2026-11-20"})
    statement.refresh_from_db()
    assert statement.content["dosage"] == [{"text": "1日2回"}]
    assert statement.content["status"] == "completed"  # "taking it now" unticked
    notebook = client.get(notebook_url(child)).content.decode()
    assert "ムコダインシロップ" in notebook
    assert "badge-self" in notebook


def test_the_form_refuses_an_end_before_the_start(mother: User, mother_patient: Patient) -> None:
    response = client_for(mother).post(
        reverse("medication:statement-new", args=[mother_patient.pk]),
        {"name": "鉄剤", "start": "2026-11-20", "end": "2026-11-01"},
        HTTP_ACCEPT_LANGUAGE="en",
    )
    assert response.status_code == 400
    assert "The end cannot be before the start." in response.content.decode()
    assert not Resource.objects.filter(
        resource_type="MedicationStatement", compartments__overlap=[mother_patient.pk]
    ).exists()


def test_an_invalid_edit_is_refused_and_changes_nothing(mother: User, child: Patient) -> None:
    client = client_for(mother)
    client.post(
        reverse("medication:statement-new", args=[child.pk]),
        {"name": "整腸剤", "start": "2026-11-20", "taking": "on"},
    )
    (statement,) = Resource.objects.filter(
        resource_type="MedicationStatement", compartments__overlap=[child.pk]
    )
    edit = reverse("medication:statement-edit", args=[child.pk, statement.pk])
    response = client.post(edit, {"name": "", "start": "2026-11-20"})
    assert response.status_code == 400
    assert client.post(edit, {}).status_code == 400
    statement.refresh_from_db()
    assert statement.content["medicationCodeableConcept"]["text"] == "整腸剤"


def test_only_the_author_edits_a_statement(mother: User, child: Patient, father: User) -> None:
    client_for(mother).post(
        reverse("medication:statement-new", args=[child.pk]),
        {"name": "整腸剤", "start": "2026-11-20", "taking": "on"},
    )
    (statement,) = Resource.objects.filter(
        resource_type="MedicationStatement", compartments__overlap=[child.pk]
    )
    edit = reverse("medication:statement-edit", args=[child.pk, statement.pk])
    assert client_for(father).get(edit).status_code == 404
    assert client_for(father).post(edit, {"name": "x", "start": "2026-11-20"}).status_code == 404
    notebook = client_for(father).get(notebook_url(child)).content.decode()
    assert "整腸剤" in notebook
    assert edit not in notebook


def test_an_imported_record_cannot_be_edited(mother: User, mother_patient: Patient) -> None:
    paste(client_for(mother), mother_patient, "JAHISTC08,1\n3,バファリンＡ,20261101,,2,,")
    (statement,) = Resource.objects.filter(
        resource_type="MedicationStatement", compartments__overlap=[mother_patient.pk]
    )
    edit = reverse("medication:statement-edit", args=[mother_patient.pk, statement.pk])
    assert client_for(mother).get(edit).status_code == 404


# --------------------------------------------------------------------------
# Who may do what
# --------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_log_in(mother_patient: Patient) -> None:
    for url in (notebook_url(mother_patient), import_url(mother_patient)):
        response = Client().get(url)
        assert response.status_code == 302
        assert "/accounts/login/" in response["Location"]


def test_the_other_guardian_imports_for_the_child_but_not_for_the_mother(
    father: User, child: Patient, mother_patient: Patient
) -> None:
    client = client_for(father)
    assert paste(client, child, SAMPLE).status_code == 200
    assert len(dispenses(child)) == 3
    assert client.get(notebook_url(child)).status_code == 200
    # The mother's own records are hers.
    assert client.get(notebook_url(mother_patient)).status_code == 404
    assert client.get(import_url(mother_patient)).status_code == 404
    assert paste(client, mother_patient, SAMPLE).status_code == 404
    assert dispenses(mother_patient) == []


def test_a_stranger_gets_404_like_a_missing_id_and_is_audited(
    stranger: User, mother_patient: Patient
) -> None:
    client = client_for(stranger)
    missing = uuid.uuid4()
    for patient_id in (mother_patient.pk, missing):
        assert client.get(f"/medications/{patient_id}/").status_code == 404
        assert client.get(f"/medications/{patient_id}/import/").status_code == 404
        assert client.get(f"/medications/{patient_id}/new/").status_code == 404
    assert paste(client, mother_patient, SAMPLE).status_code == 404
    assert dispenses(mother_patient) == []
    denied = AuditEvent.objects.filter(actor=stranger, outcome="denied", patient=mother_patient)
    assert denied.filter(action="medications.import").exists()
    assert denied.filter(action="view.medications").exists()


def test_a_clinic_with_a_medications_consent_reads_but_does_not_import(
    mother: User,
    mother_patient: Patient,
    clinic: Organization,
    clinician: User,
    unconsented_clinician: User,
) -> None:
    paste(client_for(mother), mother_patient, SAMPLE)
    consent_grant(
        patient=mother_patient,
        by=mother,
        purpose="care",
        categories=["medications"],
        grantee_org=clinic,
    )
    client = client_for(clinician)
    page = client.get(notebook_url(mother_patient))
    assert page.status_code == 200
    assert "コリオパンカプセル5mg" in page.content.decode()
    assert 'id="medication-import-link"' not in page.content.decode()
    assert client.get(import_url(mother_patient)).status_code == 404
    # Through the FHIR API too.
    bundle = client.get(f"/fhir/MedicationDispense?patient={mother_patient.pk}").json()
    assert bundle["total"] == 3
    names = {e["resource"]["medicationCodeableConcept"]["text"] for e in bundle["entry"]}
    assert "モーラステープ２０ｍｇ" in names
    # A clinic the family does not share with sees nothing.
    other = client_for(unconsented_clinician)
    assert other.get(notebook_url(mother_patient)).status_code == 404
    assert other.get(f"/fhir/MedicationDispense?patient={mother_patient.pk}").json()["total"] == 0


def test_the_notebook_shows_current_medicines_first(mother: User, mother_patient: Patient) -> None:
    client = client_for(mother)
    client.post(
        reverse("medication:statement-new", args=[mother_patient.pk]),
        {"name": "葉酸", "start": "2026-01-01", "taking": "on"},
    )
    page = client.get(notebook_url(mother_patient)).content.decode()
    current = page.split('id="current-medicines"', 1)[1].split("</section>", 1)[0]
    assert "葉酸" in current


def test_a_dv_blocked_guardian_can_neither_read_nor_import(
    father: User, child: Patient, municipality: Organization, municipal_officer: User
) -> None:
    from sharing.models import DvBlock

    DvBlock.objects.create(
        patient=child, blocked_user=father, municipality=municipality, created_by=municipal_officer
    )
    client = client_for(father)
    assert client.get(notebook_url(child)).status_code == 404
    assert paste(client, child, SAMPLE).status_code == 404
    assert dispenses(child) == []
    assert AuditEvent.objects.filter(
        actor=father, patient=child, outcome="denied", action="medications.import"
    ).exists()


def test_staff_never_import_for_a_family(
    municipal_officer: User, clinician: User, mother_patient: Patient
) -> None:
    for user in (municipal_officer, clinician):
        client = client_for(user)
        assert client.get(import_url(mother_patient)).status_code == 404
        assert paste(client, mother_patient, SAMPLE).status_code == 404
        new = reverse("medication:statement-new", args=[mother_patient.pk])
        assert client.get(new).status_code == 404
    assert dispenses(mother_patient) == []
