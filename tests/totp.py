"""The code an authenticator app would show now, for tests that log in
with TOTP.

allauth accepts only the current 30-second window (MFA_TOTP_TOLERANCE 0),
so a code computed in the last moments of a window can expire before the
request that carries it is handled — in a browser journey that is several
seconds later. ``current_code`` therefore waits for the next window when
little of the current one is left, the way a person waits for the next
code when the app's ring is nearly empty."""

from __future__ import annotations

import time

from allauth.mfa.adapter import get_adapter
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value

PERIOD = 30
MARGIN = 6  # seconds of the window that must be left


def code_for_secret(secret: str) -> str:
    left = PERIOD - time.time() % PERIOD
    if left < MARGIN:
        time.sleep(left + 0.1)
    return format_hotp_value(hotp_value(secret, int(time.time()) // PERIOD))


def code_for_user(user: object) -> str:
    authenticator = Authenticator.objects.get(user=user, type=Authenticator.Type.TOTP)
    return code_for_secret(get_adapter().decrypt(authenticator.data["secret"]))
