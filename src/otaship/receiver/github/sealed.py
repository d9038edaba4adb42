"""Secrets otaship must read back (a binding's webhook secret, its GitHub token),
encrypted with OTASHIP_SECRET_KEY.

Hashing is not enough here: checking an HMAC needs the secret itself, and
calling GitHub needs the token. Fernet (AES-128-CBC and HMAC-SHA256) from
`cryptography` authenticates what it decrypts, so a changed row is refused
rather than misread. The key comes from the environment, never the database,
so a dump or a backup of the database alone reveals no secret.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.fernet import Fernet


class SealError(Exception):
    """No key, or a value this key did not seal; the message says what to do."""


NO_KEY = "set OTASHIP_SECRET_KEY (at least 32 characters) to use GitHub bindings"
WEBHOOK_SECRET_PREFIX = "oshk_"


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


def _fernet(key: str | None) -> Fernet:
    if not key:
        raise SealError(NO_KEY)
    from cryptography.fernet import Fernet

    # Any long text works as the setting: its SHA-256 is the 32 bytes Fernet wants.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


def seal(key: str | None, plain: str) -> str:
    return _fernet(key).encrypt(plain.encode()).decode()


def unseal(key: str | None, sealed: str) -> str:
    from cryptography.fernet import InvalidToken

    fernet = _fernet(key)
    try:
        plain = fernet.decrypt(sealed.encode())
    except InvalidToken:
        raise SealError(
            "a stored secret does not open with OTASHIP_SECRET_KEY: was the key changed? "
            "Bind the repository again"
        ) from None
    return plain.decode()
