"""The public keys that sign a group's firmware, and which chip takes which.

A key is what `espsecure` reads: a PEM public key, RSA-3072 or ECDSA on NIST
P-192, P-256 or P-384. It is known by the digest Secure Boot V2 gives it (the
SHA-256 of the key as a signature block holds it, as `espsecure
digest-sbv2-public-key` writes it), which is also how a signature block names
the key that made it. espsecure does the parsing and the digest, so that a key
otaship accepts is exactly a key espsecure signs and verifies with.

espsecure is imported inside the functions: importing it costs most of a
second, which a receiver that never sees a key should not pay.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum

# PEM public keys are a few hundred bytes (RSA-3072: about 630).
MAX_PEM_BYTES = 16 * 1024


class Scheme(StrEnum):
    RSA_3072 = "rsa-3072"
    ECDSA_P192 = "ecdsa-p192"
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"


_RSA_ONLY = frozenset({Scheme.RSA_3072})
_ECDSA = frozenset({Scheme.ECDSA_P192, Scheme.ECDSA_P256})
_RSA_AND_ECDSA = _RSA_ONLY | _ECDSA

# What each chip's Secure Boot V2 verifies. ESP-IDF says it per target in
# components/soc/<chip>/include/soc/soc_caps.h: SOC_SECURE_BOOT_V2_RSA (RSA-3072,
# RSA-PSS), SOC_SECURE_BOOT_V2_ECC (ECDSA, on P-192 or P-256: the menuconfig's
# SECURE_BOOT_ECDSA_KEY_LEN choices), and P-384 only where
# SOC_ECDSA_SUPPORT_CURVE_P384 is set too (its blocks hash the image with
# SHA-384, which espsecure signs and verifies). Where that is (ESP-IDF master):
# - RSA only: ESP32 (from chip v3.0), S2, S3, C3 (from v0.3), S31;
# - ECDSA only: C2, C61;
# - both: C6, H2, H21, H4, and C5 and P4 with P-384 too.
# esptool also knows ESP32-E22 (image chip id 31), which ESP-IDF does not
# describe yet: it is left out, and a key for it is refused with a message
# saying so, rather than guessed. tests/firmware/test_signing_keys.py checks
# the table against esptool's chips and their image chip ids.
CHIP_SCHEMES: dict[str, frozenset[Scheme]] = {
    "esp32": _RSA_ONLY,  # from chip v3.0 (ECO3): earlier chips have only Secure Boot V1
    "esp32s2": _RSA_ONLY,
    "esp32s3": _RSA_ONLY,
    "esp32c3": _RSA_ONLY,  # from chip v0.3
    "esp32s31": _RSA_ONLY,
    "esp32c2": _ECDSA,
    "esp32c61": _ECDSA,
    "esp32c5": _RSA_AND_ECDSA | {Scheme.ECDSA_P384},
    "esp32c6": _RSA_AND_ECDSA,
    "esp32h2": _RSA_AND_ECDSA,
    "esp32h21": _RSA_AND_ECDSA,
    "esp32h4": _RSA_AND_ECDSA,
    "esp32p4": _RSA_AND_ECDSA | {Scheme.ECDSA_P384},
}

# A group that pins no chip takes every scheme but P-192: its 96-bit security
# is for the chip that has nothing stronger, and a group that pins it asks for it.
ANY_CHIP_SCHEMES = frozenset({Scheme.RSA_3072, Scheme.ECDSA_P256, Scheme.ECDSA_P384})

# How many of the sector's three blocks the chip's bootloader reads: ESP32
# (v3.0) and ESP32-C2 read only the first (ESP-IDF's Secure Boot V2 document:
# "only one signature block can be appended"; espsecure sign-data's help says
# --append-signatures is not valid for them), so they cannot rotate keys.
BLOCKS_READ: dict[str, int] = {"esp32": 1, "esp32c2": 1}
MAX_BLOCKS = 3


class InvalidKey(ValueError):
    """The key cannot be registered; `str(exc)` says why, for the user."""


@dataclass(frozen=True)
class PublicKey:
    # The key re-encoded as a PEM SubjectPublicKeyInfo, whatever form it came in.
    pem: str
    scheme: Scheme
    # Hex SHA-256 of the key in its signature-block form.
    digest: str


def load_public_key(data: bytes) -> PublicKey:
    """Parse a PEM public key for Secure Boot V2. Raises InvalidKey.

    A private key is refused: the receiver must never hold one, and the
    message says how to extract the public half instead.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from espsecure import _digest_sbv2_public_key, _load_sbv2_pub_key
    from esptool.util import FatalError

    if len(data) > MAX_PEM_BYTES:
        raise InvalidKey(f"the key file is {len(data)} bytes; a PEM public key is under {MAX_PEM_BYTES}")
    if b"PRIVATE KEY" in data:
        raise InvalidKey(
            "this is a private key: register its public key instead "
            "(espsecure extract-public-key --version 2 --keyfile key.pem pub.pem), "
            "and keep the private key secret"
        )
    if b"-----BEGIN PUBLIC KEY-----" not in data:
        raise InvalidKey("not a PEM public key: expected a file starting with -----BEGIN PUBLIC KEY-----")
    try:
        key = _load_sbv2_pub_key(data)
    except FatalError as exc:
        raise InvalidKey(f"not a Secure Boot V2 key: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"not a readable PEM public key ({exc})") from None
    if isinstance(key, rsa.RSAPublicKey):
        scheme = Scheme.RSA_3072
    elif isinstance(key, ec.EllipticCurvePublicKey):
        scheme = {
            "secp192r1": Scheme.ECDSA_P192,
            "secp256r1": Scheme.ECDSA_P256,
            "secp384r1": Scheme.ECDSA_P384,
        }[key.curve.name]
    else:  # pragma: no cover - espsecure refuses every other kind above
        raise InvalidKey("not a Secure Boot V2 key: only RSA-3072 and ECDSA keys are supported")
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    digest: bytes = _digest_sbv2_public_key(io.BytesIO(pem.encode("ascii")))
    return PublicKey(pem=pem, scheme=scheme, digest=digest.hex())


def schemes_for(chip: str | None) -> frozenset[Scheme]:
    """The schemes a group running `chip` may register (None: no chip pinned)."""
    if chip is None:
        return ANY_CHIP_SCHEMES
    return CHIP_SCHEMES.get(chip, frozenset())


def check_fits_chip(scheme: Scheme, chip: str | None) -> None:
    """Raise InvalidKey if a group running `chip` cannot verify `scheme`."""
    allowed = schemes_for(chip)
    if scheme in allowed:
        return
    if chip is None:
        raise InvalidKey(
            f"a {scheme} key is accepted only for a group whose chip supports nothing stronger; "
            f"this group pins no chip, so use one of: {', '.join(sorted(allowed))}"
        )
    if not allowed:
        raise InvalidKey(
            f"otaship does not know which Secure Boot V2 schemes {chip} supports, "
            "so it cannot check that the group's devices would accept this key"
        )
    raise InvalidKey(
        f"{chip} Secure Boot V2 does not support {scheme} keys; it supports {', '.join(sorted(allowed))}"
    )
