"""Who a user is, in terms of the roles the access rules know.

These are facts read from control tables; what a role may *see* is decided
only in sharing/access.py.
"""

from __future__ import annotations

from typing import Any

from phr.models import Membership, Organization, Role


def active_memberships(user: Any) -> list[Membership]:
    if not getattr(user, "is_authenticated", False):
        return []
    cache = getattr(user, "_hagukumi_memberships", None)
    if cache is None:
        cache = list(Membership.objects.active().filter(user=user).select_related("organization"))
        user._hagukumi_memberships = cache
    return cache


def is_staff_user(user: Any) -> bool:
    """Staff are everyone who may see other families' data by role:
    organization members and platform admins. They must use MFA and get the
    shorter idle timeout."""
    if not getattr(user, "is_authenticated", False):
        return False
    # Django's is_staff opens the admin: it counts as staff too, so the admin
    # needs MFA like every staff route.
    return bool(
        user.is_platform_admin or user.is_superuser or user.is_staff or active_memberships(user)
    )


def organizations_for(user: Any, role: Role) -> list[Organization]:
    return [m.organization for m in active_memberships(user) if m.role == role]


def has_mfa(user: Any) -> bool:
    """True when the user has an active TOTP authenticator. allauth then
    requires the second factor at every login, so every session of such a
    user passed MFA."""
    if not getattr(user, "is_authenticated", False):
        return False
    cached = getattr(user, "_hagukumi_has_mfa", None)
    if cached is None:
        from allauth.mfa.models import Authenticator

        cached = Authenticator.objects.filter(
            user=user, type=Authenticator.Type.TOTP
        ).exists()
        user._hagukumi_has_mfa = cached
    return bool(cached)
