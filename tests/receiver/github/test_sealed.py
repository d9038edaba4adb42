"""Secrets that must be read back are encrypted with OTASHIP_SECRET_KEY."""

from __future__ import annotations

import re

import pytest

from otaship.receiver.github.sealed import NO_KEY, SealError, new_webhook_secret, seal, unseal

KEY = "k" * 40


def test_a_sealed_secret_opens_with_its_key_only() -> None:
    secret = new_webhook_secret()
    sealed = seal(KEY, secret)
    assert secret not in sealed
    assert unseal(KEY, sealed) == secret
    with pytest.raises(SealError, match="does not open with OTASHIP_SECRET_KEY"):
        unseal("x" * 40, sealed)
    # Changed in the database: refused, not misread.
    with pytest.raises(SealError):
        unseal(KEY, sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB"))


def test_without_a_key_nothing_is_sealed_or_opened() -> None:
    with pytest.raises(SealError, match=re.escape(NO_KEY)):
        seal(None, "secret")
    with pytest.raises(SealError, match=re.escape(NO_KEY)):
        unseal(None, seal(KEY, "secret"))


def test_webhook_secrets_are_long_and_new_each_time() -> None:
    secrets = {new_webhook_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(s.startswith("oshk_") and len(s) >= 45 for s in secrets)
