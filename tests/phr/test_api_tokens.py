"""API tokens are hashed at rest, shown once, and revocable."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from phr.authentication import api_token_create, api_token_revoke, hash_token
from phr.models import ApiToken

pytestmark = pytest.mark.django_db


def test_it_stores_only_a_hash_of_the_secret(mother: Any) -> None:
    token, secret = api_token_create(user=mother, name="gateway")
    stored = ApiToken.objects.get(pk=token.pk)
    assert secret not in (stored.token_hash, stored.prefix)
    assert stored.token_hash == hash_token(secret)
    assert secret.startswith(stored.prefix)


def test_it_creates_and_revokes_tokens_from_the_command_line(mother: Any) -> None:
    out = StringIO()
    call_command("api_token", "create", "--user", mother.email, "--name", "scale", stdout=out)
    prefix, secret, _ = out.getvalue().split("\t")
    assert ApiToken.objects.usable().filter(prefix=prefix).exists()
    call_command("api_token", "revoke", prefix, stdout=StringIO())
    assert not ApiToken.objects.usable().filter(prefix=prefix).exists()
    assert secret.startswith("hgk_")


def test_revoking_twice_changes_nothing(mother: Any) -> None:
    token, _ = api_token_create(user=mother, name="x")
    first = api_token_revoke(token=token).revoked_at
    assert api_token_revoke(token=token).revoked_at == first
