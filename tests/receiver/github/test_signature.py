"""X-Hub-Signature-256: GitHub's documented test vector, and what must not pass."""

from __future__ import annotations

import pytest

from otaship.receiver.github.signature import signature_of, signature_valid

# docs.github.com, "Validating webhook deliveries", "Testing the webhook payload validation".
SECRET = "It's a Secret to Everybody"
PAYLOAD = b"Hello, World!"
SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_githubs_documented_test_vector() -> None:
    assert signature_of(SECRET, PAYLOAD) == SIGNATURE
    assert signature_valid(SECRET, PAYLOAD, SIGNATURE)


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        (SECRET, PAYLOAD, None),
        (SECRET, PAYLOAD, ""),
        (SECRET, b"Hello, World?", SIGNATURE),
        (SECRET, PAYLOAD + b" ", SIGNATURE),
        ("another secret", PAYLOAD, SIGNATURE),
        (SECRET, PAYLOAD, SIGNATURE.removeprefix("sha256=")),
        (SECRET, PAYLOAD, "sha1=" + SIGNATURE.removeprefix("sha256=")),
        (SECRET, PAYLOAD, SIGNATURE.upper()),
        (SECRET, PAYLOAD, SIGNATURE[:-1]),
        (SECRET, PAYLOAD, SIGNATURE + "0"),
        (SECRET, PAYLOAD, "sha256=ü" + SIGNATURE[8:]),
    ],
)
def test_anything_else_is_refused(secret: str, body: bytes, header: str | None) -> None:
    assert not signature_valid(secret, body, header)
