from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import pytest
from esptool.bin_image import ESP32FirmwareImage

from otaship.firmware.image import SECTOR_SIZE, SIG_BLOCK_MAGIC, InvalidFirmware, inspect_firmware
from otaship.firmware.signatures import (
    BLOCK_SIZE,
    Refusal,
    SignatureRefused,
    Signed,
    read_sector,
    verify_signature,
)
from otaship.firmware.signing_keys import PublicKey, Scheme, load_public_key
from tests.esp_image import build_image
from tests.signing import blocks, private_pem, public_pem, sign, with_sector


def key(scheme: Scheme = Scheme.RSA_3072, name: str = "a") -> PublicKey:
    return load_public_key(public_pem(private_pem(scheme, name)))


def check(tmp_path: Path, data: bytes, *keys: PublicKey) -> Signed:
    path = tmp_path / "firmware.bin"
    path.write_bytes(data)
    return verify_signature(path, inspect_firmware(path), keys)


def refused(tmp_path: Path, data: bytes, *keys: PublicKey) -> SignatureRefused:
    with pytest.raises(SignatureRefused) as caught:
        check(tmp_path, data, *keys)
    return caught.value


def reseal_head(data: bytes) -> bytes:
    """An edited unsigned image with its checksum and appended SHA-256 made right again."""
    sealed = bytearray(data)
    sealed[-33] = ESP32FirmwareImage(io.BytesIO(bytes(sealed))).calculate_checksum()
    sealed[-32:] = hashlib.sha256(sealed[:-32]).digest()
    return bytes(sealed)


def with_crc(block: bytes) -> bytes:
    return block[:1196] + struct.pack("<I", zlib.crc32(block[:1196])) + block[1200:]


def test_the_constants_are_espsecures() -> None:
    import espsecure

    assert (SECTOR_SIZE, SIG_BLOCK_MAGIC, BLOCK_SIZE) == (
        espsecure.SECTOR_SIZE,
        espsecure.SIG_BLOCK_MAGIC,
        espsecure.SIG_BLOCK_SIZE,
    )


@pytest.mark.parametrize(
    ("scheme", "chip"),
    [
        (Scheme.RSA_3072, "esp32"),
        (Scheme.RSA_3072, "esp32s3"),
        (Scheme.RSA_3072, "esp32c3"),
        (Scheme.ECDSA_P192, "esp32c2"),
        (Scheme.ECDSA_P256, "esp32c2"),
        (Scheme.ECDSA_P256, "esp32c6"),
        (Scheme.ECDSA_P384, "esp32c5"),
        (Scheme.ECDSA_P384, "esp32p4"),
        (Scheme.ECDSA_P256, "esp32c61"),
        (Scheme.RSA_3072, "esp32h21"),
        (Scheme.ECDSA_P192, "esp32h4"),
        (Scheme.RSA_3072, "esp32s31"),
    ],
)
def test_an_image_signed_by_a_registered_key_verifies(tmp_path: Path, scheme: Scheme, chip: str) -> None:
    image = build_image(chip=chip, seed=3)
    signed = sign(image, private_pem(scheme))
    assert len(signed) % SECTOR_SIZE == 0
    registered = key(scheme)
    assert check(tmp_path, signed, key(Scheme.RSA_3072, "other"), registered) == Signed(
        key_digests=(registered.digest,), block=0
    )
    described = inspect_firmware(tmp_path / "firmware.bin")
    assert described.signature_sector == len(signed) - SECTOR_SIZE
    assert described.app is not None and described.app.version == "1.0.0"
    # The digest a block names its key by is the digest of the registered key.
    (block,) = read_sector(signed[-SECTOR_SIZE:]).blocks
    assert (block.index, block.scheme, block.key_digest) == (0, scheme, registered.digest)


def test_an_unsigned_image_is_refused(tmp_path: Path) -> None:
    registered = key()
    caught = refused(tmp_path, build_image(), registered)
    assert caught.reason is Refusal.UNSIGNED
    assert str(caught) == (
        "Firmware is not signed: this group accepts only images with a Secure Boot V2 signature block "
        f"by one of its keys ({registered.digest}); sign it with espsecure sign-data --version 2"
    )


def test_an_empty_signature_sector_is_no_signature(tmp_path: Path) -> None:
    signed = sign(build_image(), private_pem())
    emptied = with_sector(signed, [b"", b"", b""])
    # The sector's first byte is 0xFF now: the file is the image and its padding.
    assert inspect_firmware(_write(tmp_path, emptied)).signature_sector is None
    assert refused(tmp_path, emptied, key()).reason is Refusal.UNSIGNED


def test_an_image_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    signed = sign(build_image(), private_pem(Scheme.RSA_3072, "stranger"))
    registered = key()
    stranger = key(Scheme.RSA_3072, "stranger")
    caught = refused(tmp_path, signed, registered)
    assert caught.reason is Refusal.UNKNOWN_KEY
    assert str(caught) == (
        f"Firmware is not signed by a key registered for this group: block 0 by key {stranger.digest}; "
        f"the group's keys are {registered.digest}"
    )


def test_a_byte_flipped_in_the_image_is_refused(tmp_path: Path) -> None:
    image = build_image(code_size=8192)
    signed = sign(image, private_pem())
    tampered = bytearray(image)
    tampered[len(image) // 2] ^= 0x01
    # Resealed, the image itself is valid again: only the signature can tell.
    forged = reseal_head(bytes(tampered)) + signed[len(image) :]
    caught = refused(tmp_path, forged, key())
    assert caught.reason is Refusal.BAD_SIGNATURE
    assert str(caught) == (
        f"Firmware signature does not verify: block 0 by registered key {key().digest} does not match "
        "the image (the image or its signature changed after signing)"
    )


def test_a_byte_flipped_in_the_signature_is_refused(tmp_path: Path) -> None:
    signed = sign(build_image(), private_pem(Scheme.ECDSA_P256))
    block = bytearray(blocks(signed)[0])
    block[150] ^= 0x01  # inside the signature (r, s)

    damaged = with_sector(signed, [bytes(block), b"", b""])
    caught = refused(tmp_path, damaged, key(Scheme.ECDSA_P256))
    assert caught.reason is Refusal.BAD_SIGNATURE
    assert str(caught) == (
        "Firmware signature does not verify: signature block 0 is damaged "
        "(its version or CRC32 does not match its contents)"
    )

    # With its CRC made right, the block is well-formed and its signature wrong.
    forged = with_sector(signed, [with_crc(bytes(block)), b"", b""])
    caught = refused(tmp_path, forged, key(Scheme.ECDSA_P256))
    assert caught.reason is Refusal.BAD_SIGNATURE
    assert str(caught).startswith(
        f"Firmware signature does not verify: block 0 by registered key {key(Scheme.ECDSA_P256).digest} "
    )


@pytest.mark.parametrize("cut", [1, SECTOR_SIZE - BLOCK_SIZE, SECTOR_SIZE - 1])
def test_a_truncated_signature_sector_is_refused(tmp_path: Path, cut: int) -> None:
    signed = sign(build_image(), private_pem())
    path = _write(tmp_path, signed[:-cut])
    with pytest.raises(InvalidFirmware) as caught:
        inspect_firmware(path)
    assert str(caught.value) == (
        "Firmware is not a valid ESP application image: the signature sector at offset "
        f"0x{len(signed) - SECTOR_SIZE:X} is truncated: the file holds {SECTOR_SIZE - cut} of its "
        f"{SECTOR_SIZE} bytes; upload the whole signed file"
    )


def test_bytes_after_the_signature_sector_are_refused(tmp_path: Path) -> None:
    signed = sign(build_image(), private_pem())
    with pytest.raises(InvalidFirmware) as caught:
        inspect_firmware(_write(tmp_path, signed + b"\x00" * 16))
    assert str(caught.value) == (
        "Firmware is not a valid ESP application image: 16 unexpected bytes after the signature sector at "
        f"offset 0x{len(signed) - SECTOR_SIZE:X}; the sector must end the file"
    )


def test_three_blocks_of_which_only_the_third_is_valid(tmp_path: Path) -> None:
    image = build_image(chip="esp32c6")
    registered = key(Scheme.ECDSA_P256)
    signed = sign(image, private_pem(Scheme.ECDSA_P256))
    damaged = bytearray(blocks(signed)[0])
    damaged[200] ^= 0xFF
    # A valid block by another key, over other bytes: espsecure alone would stop at it.
    elsewhere = blocks(sign(build_image("9.9.9", chip="esp32c6"), private_pem(Scheme.RSA_3072, "b")))[0]
    three = with_sector(signed, [bytes(damaged), elsewhere, blocks(signed)[0]])
    assert check(tmp_path, three, registered) == Signed(key_digests=(registered.digest,), block=2)
    sector = read_sector(three[-SECTOR_SIZE:])
    assert [block.index for block in sector.blocks] == [1, 2]
    assert sector.damaged == (0,)


def test_rotation_two_blocks_verify_by_either_key(tmp_path: Path) -> None:
    old, new = key(Scheme.RSA_3072, "old"), key(Scheme.RSA_3072, "new")
    signed = sign(
        build_image(chip="esp32s3"), private_pem(Scheme.RSA_3072, "old"), private_pem(Scheme.RSA_3072, "new")
    )
    assert [block.key_digest for block in read_sector(signed[-SECTOR_SIZE:]).blocks] == [
        old.digest,
        new.digest,
    ]
    both = check(tmp_path, signed, new, old)
    assert both == Signed(key_digests=(old.digest, new.digest), block=0)
    assert both.key_digest == old.digest
    assert check(tmp_path, signed, new) == Signed(key_digests=(new.digest,), block=1)
    assert refused(tmp_path, signed, key(Scheme.RSA_3072, "third")).reason is Refusal.UNKNOWN_KEY


def test_an_esp32_reads_only_the_first_block(tmp_path: Path) -> None:
    new = key(Scheme.RSA_3072, "new")
    signed = sign(
        build_image(chip="esp32"), private_pem(Scheme.RSA_3072, "old"), private_pem(Scheme.RSA_3072, "new")
    )
    caught = refused(tmp_path, signed, new)
    assert caught.reason is Refusal.UNKNOWN_KEY
    assert "; esp32 reads only the first 1 signature block(s); " in str(caught)


def test_an_esp32c2_reads_only_the_first_block(tmp_path: Path) -> None:
    old, new = key(Scheme.ECDSA_P256, "old"), key(Scheme.ECDSA_P256, "new")
    image = build_image(chip="esp32c2")
    # Two blocks, as espsecure writes them for a chip that reads three.
    signed = with_sector(
        sign(image, private_pem(Scheme.ECDSA_P256, "old")),
        [
            blocks(sign(image, private_pem(Scheme.ECDSA_P256, "old")))[0],
            blocks(sign(image, private_pem(Scheme.ECDSA_P256, "new")))[0],
            b"",
        ],
    )
    assert check(tmp_path, signed, old) == Signed(key_digests=(old.digest,), block=0)
    caught = refused(tmp_path, signed, new)
    assert caught.reason is Refusal.UNKNOWN_KEY
    assert "; esp32c2 reads only the first 1 signature block(s); " in str(caught)


def test_verification_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one key"):
        check(tmp_path, build_image())


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "firmware.bin"
    path.write_bytes(data)
    return path
