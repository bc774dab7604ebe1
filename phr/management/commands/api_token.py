"""Create, list or revoke API tokens for systems (the secret is shown once)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from phr.authentication import api_token_create, api_token_revoke
from phr.models import ApiToken, Organization, User


class Command(BaseCommand):
    help = "Manage bearer API tokens: create (prints the secret once), list, revoke."

    def add_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("--user", required=True, help="email of the account the token acts as")
        create.add_argument("--name", required=True)
        create.add_argument("--organization-code", help="the organization's code (optional)")
        sub.add_parser("list")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("prefix", help="the token's visible prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            user = User.objects.filter(email__iexact=options["user"]).first()
            if user is None:
                raise CommandError(f"no user {options['user']}")
            organization = None
            if options.get("organization_code"):
                organization = Organization.objects.filter(
                    code=options["organization_code"]
                ).first()
                if organization is None:
                    raise CommandError(f"no organization {options['organization_code']}")
            token, secret = api_token_create(
                user=user, name=options["name"], organization=organization
            )
            self.stdout.write(f"{token.prefix}\t{secret}\t(shown once; stored hashed)")
        elif action == "list":
            for token in ApiToken.objects.select_related("user").order_by("created_at"):
                state = "revoked" if token.revoked_at else "active"
                self.stdout.write(
                    f"{token.prefix}\t{token.name}\t{token.user.email}\t{state}\t"
                    f"last used {token.last_used_at or '-'}"
                )
        else:
            tokens = ApiToken.objects.filter(prefix=options["prefix"])
            if not tokens.exists():
                raise CommandError(f"no token with prefix {options['prefix']}")
            for token in tokens:
                api_token_revoke(token=token)
            self.stdout.write(f"revoked {options['prefix']}")
