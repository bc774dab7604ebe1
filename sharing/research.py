"""The research portal's rules (docs/decisions/0022-research.md): who is a
researcher or a reviewer of a project, applying, reviewing (the
two-person rule and the expiry), export requests "within the approval",
and download links.

Selectors first, then services. Every service audits what it did (or was
refused) with a `research.*` action, purpose "research", no patient and
only ids in the detail. Messages people read are "日本語 / English"
(sharing.selectors.in_language shows the half of the page's language),
so a message stored by a worker (ResearchExport.reason) reads in both.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, QuerySet
from django.http import Http404
from django.utils import timezone, translation

from phr.audit import audit_write
from phr.models import Organization, Role
from phr.roles import active_memberships, has_mfa, organizations_for
from phr.terminology import Category
from sharing.access import Purpose
from sharing.models import (
    CohortKind,
    ResearchApproval,
    ResearchDownload,
    ResearchExport,
    ResearchProject,
)
from sharing.selectors import privacy_officer_municipalities

JAPAN = ZoneInfo("Asia/Tokyo")

FORMATS = ("csv", "ndjson")
K_PUBLISHED = 10
K_AGREEMENT = 5
APPROVALS_NEEDED = 2
EARLIEST_BIRTH_YEAR = 1900

REVIEWER_ADMIN = "admin"
REVIEWER_PRIVACY_OFFICER = "privacy_officer"

# The cohort kinds an approved kind allows in an export.
COHORT_WITHIN = {
    CohortKind.BOTH: {CohortKind.BOTH, CohortKind.PREGNANCY, CohortKind.CHILD},
    CohortKind.PREGNANCY: {CohortKind.PREGNANCY},
    CohortKind.CHILD: {CohortKind.CHILD},
}


class ResearchRefused(Exception):
    """An export or a download link is not allowed; the message says why
    ("日本語 / English")."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DownloadGone(Exception):
    """The link exists and is the user's, but can no longer be used
    (expired, used up, revoked, or the project's approval ended)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _bilingual(ja: str, en: str) -> str:
    # The two halves never contain " / " themselves (in_language splits there).
    return f"{ja.replace(' / ', '／')} / {en.replace(' / ', '/')}"


def _both(label: Any) -> tuple[str, str]:
    """A lazily translated label in Japanese and in English."""
    with translation.override("ja"):
        ja = str(label)
    with translation.override("en"):
        en = str(label)
    return ja, en


def today(at: datetime | None = None) -> date:
    return timezone.localtime(at or timezone.now(), JAPAN).date()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --------------------------------------------------------------------------
# Who is who
# --------------------------------------------------------------------------


def researcher_institutions(user: Any) -> list[Organization]:
    """The research institutions where this user is an active researcher,
    with MFA (without it a staff member holds no role here)."""
    if not has_mfa(user):
        return []
    return [
        org
        for org in organizations_for(user, Role.RESEARCHER)
        if org.kind == Organization.Kind.RESEARCH
    ]


def is_researcher_of(user: Any, project: ResearchProject) -> bool:
    return any(org.pk == project.organization_id for org in researcher_institutions(user))


def is_platform_reviewer(user: Any) -> bool:
    return bool(getattr(user, "is_platform_admin", False)) and has_mfa(user)


def is_reviewer(user: Any) -> bool:
    """A platform admin or a municipal privacy officer, with MFA."""
    return is_platform_reviewer(user) or bool(privacy_officer_municipalities(user))


def _member_of(user: Any, organization_id: int) -> bool:
    return any(m.organization_id == organization_id for m in active_memberships(user))


@dataclass(frozen=True)
class ReviewerRole:
    role: str  # REVIEWER_ADMIN or REVIEWER_PRIVACY_OFFICER
    organization: Organization | None


def reviewer_role(user: Any, project: ResearchProject) -> ReviewerRole | None:
    """In what capacity this user may review the project, or None. Never
    the applicant nor anyone of the applying institution."""
    if not getattr(user, "is_authenticated", False):
        return None
    if project.applicant_id == user.pk or _member_of(user, project.organization_id):
        return None
    covered = set(project.municipalities.values_list("pk", flat=True))
    for municipality in privacy_officer_municipalities(user):
        if municipality.pk in covered:
            return ReviewerRole(REVIEWER_PRIVACY_OFFICER, municipality)
    if is_platform_reviewer(user):
        return ReviewerRole(REVIEWER_ADMIN, None)
    return None


# --------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------


def _with_counts(qs: QuerySet[ResearchProject]) -> QuerySet[ResearchProject]:
    return qs.annotate(
        approval_count=Count(
            "approvals",
            filter=Q(approvals__decision=ResearchApproval.Decision.APPROVE),
            distinct=True,
        )
    )


def researcher_projects(user: Any) -> QuerySet[ResearchProject]:
    """The projects of the user's own research institutions, newest first."""
    orgs = [org.pk for org in researcher_institutions(user)]
    return (
        _with_counts(ResearchProject.objects.filter(organization_id__in=orgs))
        .select_related("organization", "applicant")
        .order_by("-created_at", "-pk")
    )


def researcher_project(user: Any, project_id: Any) -> ResearchProject:
    """One project of the user's institutions; any other is a 404, as if
    it did not exist."""
    try:
        return researcher_projects(user).get(pk=project_id)
    except (ResearchProject.DoesNotExist, ValidationError, ValueError) as exc:
        raise Http404 from exc


def _reviewable(user: Any) -> QuerySet[ResearchProject]:
    """Projects this user may see as a reviewer: all (platform admin) or
    those covering one of the officer's municipalities; never those of an
    organization the user belongs to."""
    qs = ResearchProject.objects.all()
    if not is_platform_reviewer(user):
        municipalities = [m.pk for m in privacy_officer_municipalities(user)]
        if not municipalities:
            return qs.none()
        qs = qs.filter(municipalities__in=municipalities).distinct()
    own = [m.organization_id for m in active_memberships(user)]
    return qs.exclude(organization_id__in=own).exclude(applicant_id=user.pk)


def review_queue(user: Any) -> QuerySet[ResearchProject]:
    """Projects waiting for this reviewer: under review, or approved once
    and waiting for the second approval; not those already reviewed by
    them. Oldest first (first come, first served)."""
    if not is_reviewer(user):
        return ResearchProject.objects.none()
    ids = _reviewable(user).values("pk")
    return (
        _with_counts(ResearchProject.objects.filter(pk__in=ids))
        .filter(
            Q(status=ResearchProject.Status.SUBMITTED) | Q(status=ResearchProject.Status.APPROVED)
        )
        .exclude(approvals__reviewer=user)
        .filter(approval_count__lt=APPROVALS_NEEDED)
        .select_related("organization", "applicant")
        .order_by("created_at", "pk")
    )


def reviewed_by(user: Any) -> QuerySet[ResearchApproval]:
    """This reviewer's own decisions, newest first."""
    if not is_reviewer(user):
        return ResearchApproval.objects.none()
    return (
        ResearchApproval.objects.filter(reviewer=user)
        .select_related("project__organization")
        .order_by("-created_at", "-pk")
    )


def reviewable_project(user: Any, project_id: Any) -> ResearchProject:
    """A project this user may look at as a reviewer, or Http404."""
    if not is_reviewer(user):
        raise Http404
    try:
        return (
            _with_counts(ResearchProject.objects.filter(pk__in=_reviewable(user).values("pk")))
            .select_related("organization", "applicant")
            .get(pk=project_id)
        )
    except (ResearchProject.DoesNotExist, ValidationError, ValueError) as exc:
        raise Http404 from exc


def approvals(project: ResearchProject) -> QuerySet[ResearchApproval]:
    return project.approvals.select_related("reviewer", "organization").order_by("created_at")


def approval_count(project: ResearchProject) -> int:
    """Approvals by distinct reviewers (one row per reviewer at most)."""
    return (
        project.approvals.filter(decision=ResearchApproval.Decision.APPROVE)
        .values("reviewer")
        .distinct()
        .count()
    )


def researcher_export(user: Any, export_id: Any) -> ResearchExport:
    """An export of one of the user's institutions' projects, or Http404."""
    orgs = [org.pk for org in researcher_institutions(user)]
    try:
        return ResearchExport.objects.select_related("project", "job", "requested_by").get(
            pk=export_id, project__organization_id__in=orgs
        )
    except (ResearchExport.DoesNotExist, ValidationError, ValueError) as exc:
        raise Http404 from exc


def project_exports(project: ResearchProject) -> QuerySet[ResearchExport]:
    return project.exports.select_related("job", "requested_by").order_by("-created_at")


def export_downloads(export: ResearchExport) -> QuerySet[ResearchDownload]:
    return export.downloads.select_related("created_by").order_by("-created_at")


def researcher_download(user: Any, download_id: Any) -> ResearchDownload:
    orgs = [org.pk for org in researcher_institutions(user)]
    try:
        return ResearchDownload.objects.select_related("export__project").get(
            pk=download_id, export__project__organization_id__in=orgs
        )
    except (ResearchDownload.DoesNotExist, ValidationError, ValueError) as exc:
        raise Http404 from exc


# --------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------


def _audit(
    action: str,
    *,
    user: Any,
    role: str,
    organization_id: int | None,
    project: ResearchProject | None,
    outcome: str = "success",
    categories: Iterable[str] = (),
    **detail: Any,
) -> None:
    """One row: who, in what role, which project (ids only; no patient)."""
    audit_write(
        action=action,
        outcome=outcome,
        actor_id=getattr(user, "pk", None),
        actor_role=role,
        organization_id=organization_id,
        patient_id=None,
        categories=list(categories),
        purpose=Purpose.RESEARCH,
        detail={
            **({"project": str(project.pk)} if project is not None else {}),
            **{key: value for key, value in detail.items() if value is not None},
        },
    )


# --------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------


def project_apply(
    *,
    user: Any,
    title: str,
    ethics_approval_number: str,
    purpose: str,
    categories: Iterable[str],
    cohort_kind: str,
    municipalities: Iterable[Organization],
    birth_year_from: int | None,
    birth_year_to: int | None,
    period_start: date | None,
    period_end: date | None,
    publish: bool,
    organization: Organization | None = None,
    at: datetime | None = None,
) -> ResearchProject:
    """A researcher's application. Refused with a ValidationError of
    "日本語 / English" messages keyed by field; PermissionDenied for a
    user who is no researcher (of `organization`)."""
    institutions = researcher_institutions(user)
    if organization is None and len(institutions) == 1:
        organization = institutions[0]
    if organization is None or organization.pk not in {o.pk for o in institutions}:
        if institutions and organization is None:
            raise ValidationError(
                {
                    "organization": _bilingual(
                        "申請する研究機関を選んでください。",
                        "Choose the research institution applying.",
                    )
                }
            )
        _audit(
            "research.apply",
            user=user,
            role="researcher",
            organization_id=getattr(organization, "pk", None),
            project=None,
            outcome="denied",
        )
        raise PermissionDenied("not a researcher of this institution")

    title = (title or "").strip()
    ethics_approval_number = (ethics_approval_number or "").strip()
    purpose = (purpose or "").strip()
    categories = list(dict.fromkeys(categories or []))
    municipalities = list(municipalities or [])
    errors: dict[str, str] = {}
    if not title:
        errors["title"] = _bilingual("題名を入力してください。", "Enter the title.")
    if not ethics_approval_number:
        errors["ethics_approval_number"] = _bilingual(
            "倫理審査の承認番号を入力してください。", "Enter the ethics approval number."
        )
    if not purpose:
        errors["purpose"] = _bilingual(
            "研究の目的を入力してください。", "Describe the purpose of the research."
        )
    if not categories:
        errors["categories"] = _bilingual(
            "記録の種類を1つ以上選んでください。", "Choose at least one kind of record."
        )
    elif unknown := [c for c in categories if c not in Category.values]:
        errors["categories"] = _bilingual(
            f"不明な記録の種類です: {', '.join(unknown)}",
            f"Unknown kinds of record: {', '.join(unknown)}",
        )
    if cohort_kind not in CohortKind.values:
        errors["cohort_kind"] = _bilingual(
            f"対象が正しくありません: {cohort_kind}", f"Unknown cohort: {cohort_kind}"
        )
    if not municipalities:
        errors["municipalities"] = _bilingual(
            "市区町村を1つ以上選んでください。", "Choose at least one municipality."
        )
    elif wrong := [m for m in municipalities if m.kind != Organization.Kind.MUNICIPALITY]:
        errors["municipalities"] = _bilingual(
            f"市区町村ではありません: {', '.join(m.name for m in wrong)}",
            f"Not a municipality: {', '.join(m.name for m in wrong)}",
        )
    this_year = today(at).year
    for field, value, ja, en in (
        ("birth_year_from", birth_year_from, "出生年（から）", "Birth year from"),
        ("birth_year_to", birth_year_to, "出生年（まで）", "Birth year to"),
    ):
        if value is None:
            errors[field] = _bilingual(f"{ja}を入力してください。", f"Enter the {en.lower()}.")
        elif not EARLIEST_BIRTH_YEAR <= value <= this_year:
            errors[field] = _bilingual(
                f"{ja}: {value} は {EARLIEST_BIRTH_YEAR}年から{this_year}年の間にしてください。",
                f"{en}: {value} must be between {EARLIEST_BIRTH_YEAR} and {this_year}.",
            )
    if (
        "birth_year_from" not in errors
        and "birth_year_to" not in errors
        and birth_year_to < birth_year_from  # type: ignore[operator]
    ):
        errors["birth_year_to"] = _bilingual(
            f"出生年（まで）{birth_year_to} が出生年（から）{birth_year_from} より前です。",
            f"Birth year to ({birth_year_to}) is before birth year from ({birth_year_from}).",
        )
    if period_start is None:
        errors["period_start"] = _bilingual(
            "データの期間の開始日を入力してください。", "Enter the first day of the data period."
        )
    if period_end is None:
        errors["period_end"] = _bilingual(
            "データの期間の終了日を入力してください。", "Enter the last day of the data period."
        )
    if period_start is not None and period_end is not None and period_end < period_start:
        errors["period_end"] = _bilingual(
            f"データの期間の終了日 {period_end.isoformat()} が開始日 "
            f"{period_start.isoformat()} より前です。",
            f"The data period ends ({period_end.isoformat()}) before it starts "
            f"({period_start.isoformat()}).",
        )
    if errors:
        raise ValidationError(errors)

    with transaction.atomic():
        project = ResearchProject.objects.create(
            organization=organization,
            applicant=user,
            title=title,
            ethics_approval_number=ethics_approval_number,
            purpose=purpose,
            categories=categories,
            cohort_kind=cohort_kind,
            birth_year_from=birth_year_from,
            birth_year_to=birth_year_to,
            period_start=period_start,
            period_end=period_end,
            publish=bool(publish),
            k=K_PUBLISHED if publish else K_AGREEMENT,
            pseudonym_salt=os.urandom(32),
        )
        project.municipalities.set(municipalities)
        _audit(
            "research.apply",
            user=user,
            role="researcher",
            organization_id=organization.pk,
            project=project,
            categories=categories,
        )
    return project


# --------------------------------------------------------------------------
# Reviewing
# --------------------------------------------------------------------------


def _review_errors(
    locked: ResearchProject,
    *,
    user: Any,
    decision: str,
    expires_on: date | None,
    note: str,
    now: datetime,
) -> dict[str, str]:
    errors: dict[str, str] = {}
    if decision not in ResearchApproval.Decision.values:
        errors["decision"] = _bilingual("承認か却下を選んでください。", "Choose approve or reject.")
    elif locked.status not in (
        ResearchProject.Status.SUBMITTED,
        ResearchProject.Status.APPROVED,
    ):
        status = _both(ResearchProject.Status(locked.status).label)
        errors["decision"] = _bilingual(
            f"このプロジェクトは審査を終えています（{status[0]}）。",
            f"This project is no longer under review ({status[1]}).",
        )
    elif locked.approvals.filter(reviewer=user).exists():
        errors["decision"] = _bilingual(
            "このプロジェクトはすでに審査しました。1人が審査できるのは1回です。",
            "You have already reviewed this project; each reviewer decides once.",
        )
    elif decision == ResearchApproval.Decision.APPROVE and locked.expires_on is None:
        if expires_on is None:
            errors["expires_on"] = _bilingual(
                "承認の有効期限を入力してください。", "Enter the date the approval expires."
            )
        elif expires_on <= today(now):
            errors["expires_on"] = _bilingual(
                f"有効期限 {expires_on.isoformat()} は明日以降にしてください。",
                f"The expiry {expires_on.isoformat()} must be after today.",
            )
    elif decision == ResearchApproval.Decision.REJECT and not note:
        errors["note"] = _bilingual(
            "却下の理由を入力してください。", "Give the reason for the rejection."
        )
    return errors


def project_review(
    *,
    user: Any,
    project: ResearchProject,
    decision: str,
    expires_on: date | None = None,
    note: str = "",
    at: datetime | None = None,
) -> ResearchApproval:
    """One reviewer's decision. The first approval sets the expiry (a day
    after today) and the status "approved"; the second, by another
    reviewer, allows exports. A rejection ends the project. A reviewer
    decides once per project. PermissionDenied for anyone who may not
    review it (the applicant, the applying institution, officers of
    municipalities the project does not cover); ValidationError for a
    decision that cannot be taken."""
    rejecting = decision == ResearchApproval.Decision.REJECT
    action = "research.reject" if rejecting else "research.approve"
    role = reviewer_role(user, project)
    if role is None:
        _audit(
            action,
            user=user,
            role="",
            organization_id=None,
            project=project,
            outcome="denied",
            reason="not_a_reviewer",
        )
        raise PermissionDenied("not a reviewer of this project")
    org_id = role.organization.pk if role.organization else None
    note = (note or "").strip()
    now = at or timezone.now()
    with transaction.atomic():
        # One review at a time per project: the first approval's expiry
        # and the count of approvals are decided in order.
        locked = ResearchProject.objects.select_for_update().get(pk=project.pk)
        errors = _review_errors(
            locked, user=user, decision=decision, expires_on=expires_on, note=note, now=now
        )
        if not errors:
            first = locked.expires_on is None
            try:
                with transaction.atomic():
                    approval = ResearchApproval.objects.create(
                        project=locked,
                        reviewer=user,
                        reviewer_role=role.role,
                        organization=role.organization,
                        decision=decision,
                        expires_on=(expires_on if first else locked.expires_on)
                        if not rejecting
                        else None,
                        note=note,
                        created_at=now,
                    )
            except IntegrityError:
                errors = {
                    "decision": _bilingual(
                        "このプロジェクトはすでに審査しました。",
                        "You have already reviewed this project.",
                    )
                }
        if not errors:
            locked.status = (
                ResearchProject.Status.REJECTED if rejecting else ResearchProject.Status.APPROVED
            )
            if not rejecting and first:
                locked.expires_on = expires_on
            locked.decided_at = now
            locked.save(update_fields=["status", "expires_on", "decided_at"])
            _audit(
                action,
                user=user,
                role=role.role,
                organization_id=org_id,
                project=locked,
                approvals=approval_count(locked),
            )
    if errors:
        # Outside the transaction above: the refusal is recorded for good.
        _audit(
            action,
            user=user,
            role=role.role,
            organization_id=org_id,
            project=project,
            outcome="denied",
            reason=sorted(errors)[0],
        )
        raise ValidationError(errors)
    project.status = locked.status
    project.expires_on = locked.expires_on
    project.decided_at = locked.decided_at
    return approval


# --------------------------------------------------------------------------
# Export requests
# --------------------------------------------------------------------------


def _municipality_label(org_id: Any, names: dict[int, Organization]) -> tuple[str, str]:
    org = names.get(org_id) if isinstance(org_id, int) else None
    if org is None:
        return f"ID {org_id}", f"ID {org_id}"
    return f"「{org.name}」（{org.code}）", f'"{org.name_en or org.name}" ({org.code})'


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _filter_problems(project: ResearchProject, filters: dict[str, Any]) -> list[tuple[str, str]]:
    """What in the filters lies outside the approval: (ja, en) per problem,
    naming the filter and the value."""
    problems: list[tuple[str, str]] = []
    span = f"{project.birth_year_from}–{project.birth_year_to}"
    years: dict[str, int] = {}
    for key, ja, en in (
        ("birth_year_from", "出生年（から）", "Birth year from"),
        ("birth_year_to", "出生年（まで）", "Birth year to"),
    ):
        raw = filters.get(key)
        value = _int_or_none(raw)
        if value is None:
            problems.append(
                (f"{ja}: {raw!s} は年ではありません。", f"{en}: {raw!s} is not a year.")
            )
        elif not project.birth_year_from <= value <= project.birth_year_to:
            problems.append(
                (
                    f"{ja}: {value} は承認された範囲（{span}年）の外です。",
                    f"{en}: {value} is outside the approved range {span}.",
                )
            )
        else:
            years[key] = value
    if len(years) == 2 and years["birth_year_to"] < years["birth_year_from"]:
        problems.append(
            (
                f"出生年（まで）{years['birth_year_to']} が出生年（から）"
                f"{years['birth_year_from']} より前です。",
                f"Birth year to ({years['birth_year_to']}) is before birth year from "
                f"({years['birth_year_from']}).",
            )
        )

    approved = {m.pk: m for m in project.municipalities.all()}
    chosen = filters.get("municipalities")
    if not isinstance(chosen, list) or not chosen:
        problems.append(("市区町村を1つ以上選んでください。", "Choose at least one municipality."))
    else:
        ids = [_int_or_none(v) for v in chosen]
        outside = [raw for raw, value in zip(chosen, ids, strict=True) if value not in approved]
        if outside:
            known = {
                o.pk: o
                for o in Organization.objects.filter(pk__in=[v for v in ids if isinstance(v, int)])
            }
            labels = [_municipality_label(_int_or_none(raw) or raw, known) for raw in outside]
            problems.append(
                (
                    f"市区町村: {'、'.join(ja for ja, _ in labels)}は承認されていません。",
                    f"Municipality not in the approval: {', '.join(en for _, en in labels)}.",
                )
            )

    kind = filters.get("cohort_kind")
    allowed = COHORT_WITHIN.get(CohortKind(project.cohort_kind), set())
    if kind not in CohortKind.values:
        problems.append((f"対象: {kind!s} は不明です。", f"Cohort: {kind!s} is unknown."))
    elif kind not in allowed:
        asked = _both(CohortKind(kind).label)
        approved_kind = _both(CohortKind(project.cohort_kind).label)
        problems.append(
            (
                f"対象: 「{asked[0]}」は承認された対象（{approved_kind[0]}）の外です。",
                f'Cohort: "{asked[1]}" is outside the approved cohort ({approved_kind[1]}).',
            )
        )

    categories = filters.get("categories")
    if not isinstance(categories, list) or not categories:
        problems.append(
            ("記録の種類を1つ以上選んでください。", "Choose at least one kind of record.")
        )
    else:
        outside_categories = [c for c in categories if c not in project.categories]
        if outside_categories:
            labels = [
                _both(Category(c).label) if c in Category.values else (str(c), str(c))
                for c in outside_categories
            ]
            ja_names = "、".join(f"「{ja}」" for ja, _ in labels)
            en_names = ", ".join(f"\u201c{en}\u201d" for _, en in labels)
            problems.append(
                (
                    f"記録の種類: {ja_names}は承認されていません。",
                    f"Kinds of record not in the approval: {en_names}.",
                )
            )

    formats = filters.get("formats")
    if not isinstance(formats, list) or not formats:
        problems.append(("出力形式を1つ以上選んでください。", "Choose at least one format."))
    elif unknown := [str(x) for x in formats if x not in FORMATS]:
        problems.append(
            (
                f"出力形式: {', '.join(unknown)} は使えません（{', '.join(FORMATS)}）。",
                f"Format: {', '.join(unknown)} is not available ({', '.join(FORMATS)}).",
            )
        )
    return problems


def _not_approved(project: ResearchProject) -> tuple[str, str] | None:
    if project.status == ResearchProject.Status.APPROVED:
        return None
    status = _both(ResearchProject.Status(project.status).label)
    return (
        f"このプロジェクトは承認されていません（{status[0]}）。",
        f"This project is not approved ({status[1]}).",
    )


def _expired(project: ResearchProject, at: datetime | None) -> tuple[str, str] | None:
    if project.expires_on is not None and today(at) <= project.expires_on:
        return None
    expired = project.expires_on.isoformat() if project.expires_on else "—"
    return (
        f"このプロジェクトの承認は {expired} に期限が切れました。",
        f"This project's approval expired on {expired}.",
    )


def _project_refusal(
    project: ResearchProject, user: Any, at: datetime | None
) -> tuple[str, str] | None:
    """Refusals that do not depend on the filters: who asks, approval,
    the second approval, expiry."""
    if not is_researcher_of(user, project):
        return (
            "このプロジェクトの研究機関の研究者ではありません。",
            "You are not a researcher of this project's institution.",
        )
    if refusal := _not_approved(project):
        return refusal
    count = approval_count(project)
    if count < APPROVALS_NEEDED:
        return (
            f"このプロジェクトは2人目の承認が必要です（二者承認の原則。現在の承認: {count}人）。",
            f"This project needs a second approval (two-person rule; approvals so far: {count}).",
        )
    return _expired(project, at)


def project_export_block(
    project: ResearchProject, user: Any, at: datetime | None = None
) -> str | None:
    """Why no export of this project can be requested now (whatever the
    filters), or None: the project page says it before the form."""
    refusal = _project_refusal(project, user, at)
    return _bilingual(*refusal) if refusal else None


def export_refusal(
    *,
    project: ResearchProject,
    user: Any,
    filters: dict[str, Any],
    at: datetime | None = None,
) -> str | None:
    """Why this export may not run, or None. Asked when it is requested
    and again when the job starts (sharing/research_export.py): not a
    researcher of the project's institution, not approved, fewer than two
    approvals by two reviewers, expired (today in Asia/Tokyo after
    expires_on), or a filter outside the approval (named, with its value).
    The message reads "日本語 / English"."""
    refusal = _project_refusal(project, user, at)
    if refusal:
        return _bilingual(*refusal)
    problems = _filter_problems(project, filters or {})
    if problems:
        return _bilingual(" ".join(ja for ja, _ in problems), " ".join(en for _, en in problems))
    return None


def default_filters(project: ResearchProject) -> dict[str, Any]:
    """Everything the approval allows."""
    return {
        "birth_year_from": project.birth_year_from,
        "birth_year_to": project.birth_year_to,
        "municipalities": sorted(project.municipalities.values_list("pk", flat=True)),
        "cohort_kind": project.cohort_kind,
        "categories": list(project.categories),
        "formats": list(FORMATS),
    }


def normalize_filters(project: ResearchProject, filters: dict[str, Any]) -> dict[str, Any]:
    """The filters as stored (ResearchExport.filters): the approval's
    values where one is missing, years and ids as numbers, lists without
    repeats. Values that cannot be read stay as they are, for
    export_refusal to name."""
    merged = {**default_filters(project), **{k: v for k, v in filters.items() if v is not None}}
    for key in ("birth_year_from", "birth_year_to"):
        value = _int_or_none(merged[key])
        if value is not None:
            merged[key] = value
    if isinstance(merged["municipalities"], (list, tuple)):
        ids = [_int_or_none(v) for v in merged["municipalities"]]
        if all(isinstance(v, int) for v in ids):
            merged["municipalities"] = sorted(set(ids))  # type: ignore[type-var]
        else:
            merged["municipalities"] = list(merged["municipalities"])
    for key in ("categories", "formats"):
        if isinstance(merged[key], (list, tuple)):
            merged[key] = list(dict.fromkeys(str(v) for v in merged[key]))
    merged["cohort_kind"] = str(merged["cohort_kind"])
    return {key: merged[key] for key in default_filters(project)}


def request_export(
    *, user: Any, project: ResearchProject, filters: dict[str, Any], at: datetime | None = None
) -> ResearchExport:
    """Queue an export of the project with these filters (normalized; the
    approval's values where one is left out). ResearchRefused with the
    reason when export_refusal says no; the refusal is audited too."""
    from phr.jobs import job_enqueue

    normalized = normalize_filters(project, filters or {})
    org_id = project.organization_id
    categories = [c for c in normalized.get("categories") or [] if c in Category.values]
    refusal = export_refusal(project=project, user=user, filters=normalized, at=at)
    if refusal:
        _audit(
            "research.export_request",
            user=user,
            role="researcher",
            organization_id=org_id,
            project=project,
            outcome="denied",
            categories=categories,
        )
        raise ResearchRefused(refusal)
    with transaction.atomic():
        export = ResearchExport.objects.create(
            project=project, requested_by=user, filters=normalized
        )
        export.job = job_enqueue(
            kind="research.export",
            payload={"export_id": str(export.id)},
            created_by=user,
            organization=project.organization,
        )
        export.save(update_fields=["job"])
        _audit(
            "research.export_request",
            user=user,
            role="researcher",
            organization_id=org_id,
            project=project,
            categories=categories,
            export=str(export.pk),
        )
    return export


# --------------------------------------------------------------------------
# Download links
# --------------------------------------------------------------------------


def _project_gone(project: ResearchProject, at: datetime | None) -> tuple[str, str] | None:
    """Why a finished export's files may no longer be handed out: the
    approval ended (rejected, withdrawn) or expired — the same rules and
    words as an export's refusal."""
    return _not_approved(project) or _expired(project, at)


def create_download(
    *, user: Any, export: ResearchExport, at: datetime | None = None
) -> tuple[ResearchDownload, str]:
    """A download link for a finished export: a 256-bit token shown once
    (only its SHA-256 is kept), RESEARCH_DOWNLOAD_DAYS days,
    RESEARCH_DOWNLOAD_USES uses. Only a researcher of the project's
    institution (PermissionDenied otherwise); ResearchRefused when the
    export is not ready or the project's approval has ended."""
    project = ResearchProject.objects.get(pk=export.project_id)  # its state now
    if not is_researcher_of(user, project):
        _audit(
            "research.link",
            user=user,
            role="researcher",
            organization_id=project.organization_id,
            project=project,
            outcome="denied",
            export=str(export.pk),
        )
        raise PermissionDenied("not a researcher of this project's institution")
    problem = _project_gone(project, at)
    if problem is None and export.status != ResearchExport.Status.DONE:
        status = _both(ResearchExport.Status(export.status).label)
        problem = (
            f"この出力はまだダウンロードできません（{status[0]}）。",
            f"This export cannot be downloaded ({status[1]}).",
        )
    if problem:
        _audit(
            "research.link",
            user=user,
            role="researcher",
            organization_id=project.organization_id,
            project=project,
            outcome="denied",
            export=str(export.pk),
        )
        raise ResearchRefused(_bilingual(*problem))
    now = at or timezone.now()
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        download = ResearchDownload.objects.create(
            export=export,
            created_by=user,
            token_hash=token_hash(token),
            created_at=now,
            expires_at=now + timedelta(days=settings.RESEARCH_DOWNLOAD_DAYS),
            max_uses=settings.RESEARCH_DOWNLOAD_USES,
        )
        _audit(
            "research.link",
            user=user,
            role="researcher",
            organization_id=project.organization_id,
            project=project,
            export=str(export.pk),
            link=download.pk,
        )
    return download, token


def revoke_download(
    *, user: Any, download: ResearchDownload, at: datetime | None = None
) -> ResearchDownload:
    """Stop a link at once. Any researcher of the project's institution
    may (PermissionDenied otherwise); revoking twice changes nothing."""
    project = download.export.project
    if not is_researcher_of(user, project):
        _audit(
            "research.link_revoke",
            user=user,
            role="researcher",
            organization_id=project.organization_id,
            project=project,
            outcome="denied",
            link=download.pk,
        )
        raise PermissionDenied("not a researcher of this project's institution")
    now = at or timezone.now()
    with transaction.atomic():
        changed = ResearchDownload.objects.filter(pk=download.pk, revoked_at__isnull=True).update(
            revoked_at=now
        )
        if changed:
            _audit(
                "research.link_revoke",
                user=user,
                role="researcher",
                organization_id=project.organization_id,
                project=project,
                export=str(download.export_id),
                link=download.pk,
            )
    download.refresh_from_db()
    return download


def download_state(download: ResearchDownload, at: datetime | None = None) -> str:
    """ "active", "revoked", "expired" or "used_up" (for the link list)."""
    now = at or timezone.now()
    if download.revoked_at is not None:
        return "revoked"
    if download.expires_at <= now:
        return "expired"
    if download.uses >= download.max_uses:
        return "used_up"
    return "active"


def download_use(*, user: Any, token: str, at: datetime | None = None) -> ResearchDownload:
    """Count one use of the link with this token and return it, for the
    view to stream the release. Http404 for an unknown token and for
    anyone but a researcher of the project's institution; DownloadGone
    when the link is revoked, expired or used up, or the project's
    approval ended. The use is counted with a guarded UPDATE (uses <
    max_uses), so two simultaneous requests cannot both take the last use.
    Audited either way."""
    now = at or timezone.now()
    try:
        download = ResearchDownload.objects.select_related("export__project").get(
            token_hash=token_hash(token or "")
        )
    except ResearchDownload.DoesNotExist as exc:
        raise Http404 from exc
    export = download.export
    project = export.project

    def audit(outcome: str, reason: str | None = None) -> None:
        _audit(
            "research.download",
            user=user,
            role="researcher",
            organization_id=project.organization_id,
            project=project,
            outcome=outcome,
            categories=[
                c for c in (export.filters or {}).get("categories", []) if c in Category.values
            ],
            export=str(export.pk),
            link=download.pk,
            reason=reason,
        )

    if not is_researcher_of(user, project):
        audit("denied", "not_a_researcher")
        raise Http404
    state = download_state(download, now)
    gone: tuple[str, str] | None = None
    if state == "revoked":
        gone = ("このリンクは取り消されました。", "This link was revoked.")
    elif state == "expired":
        gone = (
            "このリンクは期限が切れました。新しいリンクを作ってください。",
            "This link has expired. Create a new link.",
        )
    elif state == "used_up":
        gone = (
            f"このリンクは使用回数の上限（{download.max_uses}回）に達しました。",
            f"This link has been used the maximum number of times ({download.max_uses}).",
        )
    else:
        gone = _project_gone(project, now)
    if gone is None and (
        export.status != ResearchExport.Status.DONE or release_zip_path(export) is None
    ):
        gone = (
            "この出力のファイルはダウンロードできません。",
            "The files of this export cannot be downloaded.",
        )
    if gone is None:
        counted = ResearchDownload.objects.filter(
            pk=download.pk,
            revoked_at__isnull=True,
            expires_at__gt=now,
            uses__lt=F("max_uses"),
        ).update(uses=F("uses") + 1)
        if not counted:
            gone = (
                f"このリンクは使用回数の上限（{download.max_uses}回）に達しました。",
                f"This link has been used the maximum number of times ({download.max_uses}).",
            )
    if gone is not None:
        audit("denied", state if state != "active" else "gone")
        raise DownloadGone(_bilingual(*gone))
    audit("success")
    download.refresh_from_db()
    return download


def release_zip_path(export: ResearchExport) -> Path | None:
    """MEDIA_ROOT/<export.directory>/release.zip, or None when the folder
    is not set, lies outside MEDIA_ROOT or the zip is missing."""
    if not export.directory:
        return None
    root = Path(settings.MEDIA_ROOT).resolve()
    path = (root / export.directory / "release.zip").resolve()
    if root not in path.parents or not path.is_file():
        return None
    return path
