from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from otaship.firmware.image import SUPPORTED_CHIPS
from otaship.firmware.signing_keys import (
    ANY_CHIP_SCHEMES,
    CHIP_SCHEMES,
    InvalidKey,
    Scheme,
    check_fits_chip,
    load_public_key,
    schemes_for,
)
from tests.signing import private_pem, public_pem


def pem_of(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_key_gets_the_digest_espsecure_gives_it(scheme: Scheme, tmp_path: Path) -> None:
    public = public_pem(private_pem(scheme))
    key = load_public_key(public)
    assert key.scheme is scheme
    assert key.pem.encode() == public

    (tmp_path / "pub.pem").write_bytes(public)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "espsecure",
            "digest-sbv2-public-key",
            "--keyfile",
            "pub.pem",
            "-o",
            "digest.bin",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert key.digest == (tmp_path / "digest.bin").read_bytes().hex()


def test_only_the_pem_espsecure_reads_is_taken_and_spacing_does_not_matter() -> None:
    public = public_pem(private_pem(Scheme.RSA_3072))
    pkcs1 = serialization.load_pem_public_key(public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert b"BEGIN RSA PUBLIC KEY" in pkcs1
    with pytest.raises(InvalidKey, match="BEGIN PUBLIC KEY"):
        load_public_key(pkcs1)
    assert load_public_key(public + b"\n\n") == load_public_key(public)


def test_a_private_key_is_refused_and_never_echoed() -> None:
    private = private_pem(Scheme.ECDSA_P256)
    with pytest.raises(InvalidKey) as caught:
        load_public_key(private)
    message = str(caught.value)
    assert message.startswith("this is a private key: register its public key instead")
    assert "espsecure extract-public-key" in message
    for line in private.decode().splitlines()[1:-1]:
        assert line not in message


@pytest.mark.parametrize(
    ("public", "message"),
    [
        (
            pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()),
            "not a Secure Boot V2 key: Key file has length 2048 bits. Secure boot v2 only supports RSA-3072.",
        ),
        (
            pem_of(ec.generate_private_key(ec.SECP521R1()).public_key()),
            "not a Secure Boot V2 key: Key file uses incorrect curve.",
        ),
        (
            pem_of(ed25519.Ed25519PrivateKey.generate().public_key()),
            "not a Secure Boot V2 key: Unsupported public key for Secure Boot V2.",
        ),
        (
            b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
            "not a readable PEM public key",
        ),
        (b"ssh-rsa AAAA", "not a PEM public key: expected a file starting with -----BEGIN PUBLIC KEY-----"),
        (b"-----BEGIN PUBLIC KEY-----" + b"A" * 20000, "the key file is 20026 bytes"),
    ],
    ids=["rsa-2048", "p521", "ed25519", "bad-base64", "ssh", "huge"],
)
def test_keys_secure_boot_v2_cannot_use_are_refused(public: bytes, message: str) -> None:
    with pytest.raises(InvalidKey) as caught:
        load_public_key(public)
    assert str(caught.value).startswith(message)


def test_the_chip_table_names_only_chips_esptool_knows() -> None:
    assert set(CHIP_SCHEMES) <= set(SUPPORTED_CHIPS)


@pytest.mark.parametrize("chip", [*SUPPORTED_CHIPS, None])
@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_key_fits_a_chip_exactly_when_the_table_says(scheme: Scheme, chip: str | None) -> None:
    allowed = ANY_CHIP_SCHEMES if chip is None else CHIP_SCHEMES.get(chip, frozenset())
    assert schemes_for(chip) == allowed
    if scheme in allowed:
        check_fits_chip(scheme, chip)
        return
    with pytest.raises(InvalidKey) as caught:
        check_fits_chip(scheme, chip)
    message = str(caught.value)
    if chip is None:
        assert scheme is Scheme.ECDSA_P192
        assert message == (
            "a ecdsa-p192 key is accepted only for a group whose chip supports nothing stronger; "
            "this group pins no chip, so use one of: ecdsa-p256, ecdsa-p384, rsa-3072"
        )
    elif not allowed:
        assert message == (
            f"otaship does not know which Secure Boot V2 schemes {chip} supports, "
            "so it cannot check that the group's devices would accept this key"
        )
    else:
        assert message == (
            f"{chip} Secure Boot V2 does not support {scheme} keys; it supports {', '.join(sorted(allowed))}"
        )


def test_the_documented_schemes() -> None:
    assert schemes_for("esp32") == {Scheme.RSA_3072}
    assert schemes_for("esp32s3") == {Scheme.RSA_3072}
    assert schemes_for("esp32c2") == {Scheme.ECDSA_P192, Scheme.ECDSA_P256}
    assert schemes_for("esp32c6") == {Scheme.RSA_3072, Scheme.ECDSA_P192, Scheme.ECDSA_P256}
    assert schemes_for("esp32c5") == set(Scheme)


# Each chip of the table, by the id esptool writes in its image header, and
# what ESP-IDF's soc_caps.h says its Secure Boot V2 takes (see CHIP_SCHEMES).
RSA, P192, P256, P384 = Scheme.RSA_3072, Scheme.ECDSA_P192, Scheme.ECDSA_P256, Scheme.ECDSA_P384
TABLE: dict[str, tuple[int, set[Scheme]]] = {
    "esp32": (0, {RSA}),
    "esp32s2": (2, {RSA}),
    "esp32c3": (5, {RSA}),
    "esp32s3": (9, {RSA}),
    "esp32c2": (12, {P192, P256}),
    "esp32c6": (13, {RSA, P192, P256}),
    "esp32h2": (16, {RSA, P192, P256}),
    "esp32p4": (18, {RSA, P192, P256, P384}),
    "esp32c61": (20, {P192, P256}),
    "esp32c5": (23, {RSA, P192, P256, P384}),
    "esp32h21": (25, {RSA, P192, P256}),
    "esp32h4": (28, {RSA, P192, P256}),
    "esp32s31": (32, {RSA}),
}


def test_the_table_is_each_chips_by_its_esptool_image_id() -> None:
    from esptool.targets import CHIP_DEFS

    assert {chip: (CHIP_DEFS[chip].IMAGE_CHIP_ID, set(CHIP_SCHEMES[chip])) for chip in CHIP_SCHEMES} == TABLE
    # Only ESP32-E22 (image id 31) is left out: ESP-IDF does not describe its Secure Boot yet.
    assert set(SUPPORTED_CHIPS) - set(CHIP_SCHEMES) == {"esp32e22"}
    assert CHIP_DEFS["esp32e22"].IMAGE_CHIP_ID == 31
    assert schemes_for("esp32e22") == frozenset()


def test_p384_is_for_the_chips_with_sha384_signature_blocks_and_espsecure_makes_them() -> None:
    import espsecure

    assert {chip for chip, schemes in CHIP_SCHEMES.items() if P384 in schemes} == {"esp32c5", "esp32p4"}
    # espsecure signs P-384 blocks with a SHA-384 image digest (its curve id 3).
    assert (espsecure.CURVE_ID_P384, espsecure.ECDSA_SHA_384) == (3, 1)
