"""Identifiers and secrets: unguessable, from the operating system's CSPRNG."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from datetime import UTC, datetime

from otaship.protocol import GROUP_TOKEN_LENGTH

_HEX24 = re.compile(r"[0-9a-f]{24}")
_TOKEN_ALPHABET = string.ascii_letters + string.digits
TOKEN_LENGTH = GROUP_TOKEN_LENGTH


def new_id() -> str:
    """24 lowercase hex characters: the shape of the IoTaaP ids, but not time-ordered."""
    return secrets.token_hex(12)


def is_id(value: str) -> bool:
    return _HEX24.fullmatch(value) is not None


def new_group_token() -> str:
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


def new_api_key() -> str:
    return "osk_" + secrets.token_urlsafe(32)


def new_mqtt_password() -> str:
    return secrets.token_urlsafe(24)


def secret_hash(secret: str) -> str:
    """SHA-256 is enough here: every secret we hash is 190+ bits of CSPRNG output,
    so there is nothing for a slow password hash to protect against brute force."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_hash)


def utcnow() -> datetime:
    """UTC with millisecond precision, the resolution the API reports."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and Z, as in the spec: 2020-01-17T17:38:59.983Z."""
    if moment is None:
        return None
    # Naive values are UTC: that is how SQLite hands them back.
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def secret_matches_plain(given: str, expected: str) -> bool:
    """Constant-time equality for secrets kept in clear (group tokens, the
    broker's internal login). Compared as UTF-8: compare_digest takes only
    ASCII str, and a client may send any text."""
    return hmac.compare_digest(given.encode(), expected.encode())
