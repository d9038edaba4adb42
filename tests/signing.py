"""Signing keys made with `cryptography`, and images signed with espsecure, for tests.

Keys are generated once per test process and name (RSA-3072 takes a moment);
images are signed in-process by espsecure's own `sign_secure_boot_v2`, the
code behind `espsecure sign-data --version 2`.
"""

from __future__ import annotations

import functools
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from otaship.firmware.esptool_log import quiet_esptool
from otaship.firmware.signing_keys import Scheme

_CURVES: dict[Scheme, ec.EllipticCurve] = {
    Scheme.ECDSA_P192: ec.SECP192R1(),
    Scheme.ECDSA_P256: ec.SECP256R1(),
    Scheme.ECDSA_P384: ec.SECP384R1(),
}
SECTOR = 4096
BLOCK = 1216


def private_pem(scheme: Scheme = Scheme.RSA_3072, name: str = "a") -> bytes:
    """A private key in PEM, the same for the same scheme and name within a process."""
    return _private_pem(scheme, name)


@functools.lru_cache(maxsize=32)
def _private_pem(scheme: Scheme, name: str) -> bytes:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if scheme is Scheme.RSA_3072:
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        key = ec.generate_private_key(_CURVES[scheme])
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(private: bytes) -> bytes:
    key = serialization.load_pem_private_key(private, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(image: bytes, *privates: bytes) -> bytes:
    """`image` signed by each key in turn, one signature block each (espsecure)."""
    from espsecure import sign_secure_boot_v2

    signed = image
    with tempfile.TemporaryDirectory() as folder:
        for index, private in enumerate(privates):
            source = Path(folder) / f"in{index}.bin"
            source.write_bytes(signed)
            output = Path(folder) / f"out{index}.bin"
            with quiet_esptool(), source.open("rb") as datafile:
                sign_secure_boot_v2(
                    [io.BytesIO(private)], str(output), index > 0, False, None, [], [], datafile
                )
            signed = output.read_bytes()
    return signed


def blocks(signed: bytes) -> list[bytes]:
    """The three 1216-byte block slots of a signed image's sector."""
    sector = signed[-SECTOR:]
    return [sector[index * BLOCK : (index + 1) * BLOCK] for index in range(3)]


def with_sector(signed: bytes, slots: Sequence[bytes]) -> bytes:
    """`signed` with its sector rebuilt from `slots` (each a block, or b"" for an empty slot)."""
    sector = b"".join(slot or b"\xff" * BLOCK for slot in slots)
    return signed[:-SECTOR] + sector + b"\xff" * (SECTOR - len(sector))
