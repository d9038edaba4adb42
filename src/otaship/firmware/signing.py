"""Signing an application image for Secure Boot V2, as `espsecure sign-data --version 2` does.

The action signs in CI with private keys it gets from secrets. Each key lives
in a file of its own, readable by this user only (0600), for exactly as long
as espsecure reads it, and is deleted after, whatever happens; nothing here
prints or logs a key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from otaship.firmware.esptool_log import quiet_esptool


class SigningFailed(ValueError):
    """espsecure refused a key or the image; `str(exc)` says why, never the key."""


@contextmanager
def private_key_file(pem: bytes) -> Iterator[Path]:
    """`pem` in a 0600 file of a private temporary folder, deleted on leaving."""
    with tempfile.TemporaryDirectory(prefix="otaship-key-") as folder:
        path = Path(folder) / "signing-key.pem"
        # Created 0600 in one call: the key is never readable by others, not even briefly.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(pem)
            yield path
        finally:
            path.unlink(missing_ok=True)


def sign_image(source: Path, private_keys: Sequence[bytes], output: Path) -> None:
    """Write `source` signed by each key (one signature block each, up to three) to `output`."""
    from espsecure import sign_secure_boot_v2
    from esptool.util import FatalError

    if not private_keys:
        raise ValueError("sign_image needs at least one key")
    with ExitStack() as stack:
        keyfiles: list[BinaryIO] = []
        for pem in private_keys:
            path = stack.enter_context(private_key_file(pem))
            keyfiles.append(stack.enter_context(path.open("rb")))
        datafile = stack.enter_context(source.open("rb"))
        try:
            with quiet_esptool():
                sign_secure_boot_v2(keyfiles, str(output), False, False, None, [], [], datafile)
        except FatalError as exc:
            raise SigningFailed(f"espsecure could not sign {source.name}: {exc}") from None
        except (ValueError, TypeError) as exc:
            # cryptography's refusal of a PEM that is no private key names no key material.
            raise SigningFailed(f"a signing key is not a PEM private key ({type(exc).__name__})") from None


def public_key_of(private_pem: bytes) -> bytes:
    """The PEM public key of a private key (what a group registers)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError):
        raise SigningFailed("a signing key is not an unencrypted PEM private key") from None
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
