"""allauth adapter: sign-up is for parents only; staff accounts are created
by administrators and get memberships there."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter


class AccountAdapter(DefaultAccountAdapter):
    pass
