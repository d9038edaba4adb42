"""A webhook delivery's `X-Hub-Signature-256`: HMAC-SHA256 of the raw body with
the binding's secret, checked before anything in the body is read."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def signature_of(secret: str, body: bytes) -> str:
    """The header GitHub sends for `body` signed with `secret`."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """Compared in constant time: a timing difference would reveal the digest byte by byte."""
    if header is None:
        return False
    # compare_digest takes only ASCII text; anything else cannot match.
    given = header.strip().encode("utf-8", errors="replace")
    return hmac.compare_digest(given, signature_of(secret, body).encode())
