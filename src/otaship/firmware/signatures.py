"""Whether an image carries a valid Secure Boot V2 signature by one of a group's keys.

A signed image ends with a 4 KiB sector of up to three 1216-byte signature
blocks (otaship/firmware/image.py finds it). Each block holds the SHA-256 (or
SHA-384) of everything before the sector, the signer's public key and the
signature, and is valid when its magic, version and CRC32 are. A key is
recognised by its digest (otaship/firmware/signing_keys.py), which for a block
is the SHA-256 of the public key part it carries.

espsecure checks the blocks and the signatures themselves (RSA-PSS and ECDSA
through `cryptography`), in-process: `verify_signature_v2` on the file's
bytes, once per registered key that signed a block. It stops at the first
valid block whose image digest differs, even one by another key, which a
bootloader would skip; so each call sees a sector holding only the blocks of
the key it checks, at their own positions.

The refusals say which of three things is wrong: no block at all, no block by
a registered key, or a block by a registered key that does not verify.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from hashlib import sha256

from otaship.firmware.esptool_log import quiet_esptool
from otaship.firmware.image import SECTOR_SIZE, FirmwareImage, InvalidFirmware
from otaship.firmware.signing_keys import BLOCKS_READ, MAX_BLOCKS, PublicKey, Scheme

BLOCK_SIZE = 1216
_RSA_VERSION = 0x02
_ECDSA_VERSION = 0x03
_SHA384 = 0x01
_CURVES = {1: Scheme.ECDSA_P192, 2: Scheme.ECDSA_P256, 3: Scheme.ECDSA_P384}
# Where each scheme's public key sits in a block: what its digest covers
# (espsecure's signature_info_v2 takes the same ranges).
_KEY_RANGE = {
    Scheme.RSA_3072: (36, 812),
    Scheme.ECDSA_P192: (36, 101),
    Scheme.ECDSA_P256: (36, 101),
    Scheme.ECDSA_P384: (52, 149),
}


class Refusal(StrEnum):
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"


class SignatureRefused(InvalidFirmware):
    """The image is not signed as its group requires; `str(exc)` says how."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SignatureBlock:
    index: int
    scheme: Scheme
    key_digest: str


@dataclass(frozen=True)
class SignatureSector:
    blocks: tuple[SignatureBlock, ...]
    # Blocks with the signature block magic whose version or CRC32 is wrong.
    damaged: tuple[int, ...]


@dataclass(frozen=True)
class Signed:
    """The registered keys whose blocks verified over the image, in block order;
    the first of them in `block`."""

    key_digests: tuple[str, ...]
    block: int

    @property
    def key_digest(self) -> str:
        return self.key_digests[0]


def read_sector(sector: bytes) -> SignatureSector:
    """The valid blocks of a 4 KiB signature sector, and those that are damaged."""
    from espsecure import SIG_BLOCK_MAGIC, validate_signature_block

    if len(sector) != SECTOR_SIZE:
        raise ValueError(f"a signature sector is {SECTOR_SIZE} bytes, not {len(sector)}")
    blocks: list[SignatureBlock] = []
    damaged: list[int] = []
    with quiet_esptool():
        for index in range(MAX_BLOCKS):
            block = sector[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE]
            if validate_signature_block(sector, index) is None:
                if block[0] == SIG_BLOCK_MAGIC:
                    damaged.append(index)
                continue
            scheme = _scheme(block)
            if scheme is None:
                damaged.append(index)
                continue
            start, end = _KEY_RANGE[scheme]
            blocks.append(
                SignatureBlock(index=index, scheme=scheme, key_digest=sha256(block[start:end]).hexdigest())
            )
    return SignatureSector(blocks=tuple(blocks), damaged=tuple(damaged))


def _scheme(block: bytes) -> Scheme | None:
    version, sha = block[1], block[2]
    if version == _RSA_VERSION:
        return Scheme.RSA_3072
    (curve,) = struct.unpack_from("B", block, 52 if sha == _SHA384 else 36)
    scheme = _CURVES.get(curve)
    # A curve that disagrees with the hash the block says it used is no block espsecure made.
    if scheme is None or (scheme is Scheme.ECDSA_P384) != (sha == _SHA384):
        return None
    return scheme


def verify_signature(path: str | os.PathLike[str], image: FirmwareImage, keys: Sequence[PublicKey]) -> Signed:
    """Check that the image at `path` (described by `image`) is signed by one of
    `keys`, and say by which (all of them, when several signed it).

    Raises SignatureRefused saying which check failed. `keys` must not be
    empty: a group without keys takes unsigned images, and never calls this.
    """
    if not keys:
        raise ValueError("verify_signature needs at least one key")
    registered = {key.digest: key for key in keys}
    known = ", ".join(sorted(registered))
    if image.signature_sector is None:
        raise SignatureRefused(
            Refusal.UNSIGNED,
            "Firmware is not signed: this group accepts only images with a Secure Boot V2 "
            f"signature block by one of its keys ({known}); sign it with espsecure sign-data --version 2",
        )
    with open(path, "rb") as file:
        content = bytearray(file.read())
    if len(content) != image.signature_sector + SECTOR_SIZE:
        raise ValueError("the file at path is not the image described")
    sector = bytes(content[-SECTOR_SIZE:])
    found = read_sector(sector)
    read = BLOCKS_READ.get(image.chip, MAX_BLOCKS)
    if not found.blocks:
        if found.damaged:
            raise SignatureRefused(
                Refusal.BAD_SIGNATURE,
                f"Firmware signature does not verify: signature block {found.damaged[0]} is damaged "
                "(its version or CRC32 does not match its contents)",
            )
        raise SignatureRefused(
            Refusal.UNSIGNED,
            "Firmware is not signed: its signature sector holds no signature block; this group accepts "
            f"only images signed by one of its keys ({known})",
        )
    ours = [block for block in found.blocks if block.key_digest in registered]
    readable = [block for block in ours if block.index < read]
    if not readable:
        signers = ", ".join(f"block {block.index} by key {block.key_digest}" for block in found.blocks)
        unread = ""
        if ours:
            unread = f"; {image.chip} reads only the first {read} signature block(s)"
        raise SignatureRefused(
            Refusal.UNKNOWN_KEY,
            f"Firmware is not signed by a key registered for this group: {signers}{unread}; "
            f"the group's keys are {known}",
        )
    # Every registered key that signed it, not only the first: a promotion
    # checks the image against the keys its group has then (a rotation may
    # have removed the first).
    verified: list[str] = []
    first = -1
    failures: list[str] = []
    for digest in dict.fromkeys(block.key_digest for block in readable):
        indexes = [block.index for block in readable if block.key_digest == digest]
        if _verifies(content, sector, indexes, registered[digest]):
            verified.append(digest)
            first = indexes[0] if first < 0 else first
        else:
            failures.append(f"block {', '.join(map(str, indexes))} by registered key {digest}")
    if verified:
        return Signed(key_digests=tuple(verified), block=first)
    raise SignatureRefused(
        Refusal.BAD_SIGNATURE,
        f"Firmware signature does not verify: {'; '.join(failures)} does not match the image "
        "(the image or its signature changed after signing)",
    )


def _verifies(content: bytearray, sector: bytes, indexes: Sequence[int], key: PublicKey) -> bool:
    from espsecure import verify_signature_v2
    from esptool.util import FatalError

    only = bytearray(b"\xff" * SECTOR_SIZE)
    for index in indexes:
        only[index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE] = sector[
            index * BLOCK_SIZE : (index + 1) * BLOCK_SIZE
        ]
    content[-SECTOR_SIZE:] = only
    try:
        with quiet_esptool():
            verify_signature_v2(False, None, io.BytesIO(key.pem.encode("ascii")), _ViewReader(content))
    except FatalError:
        return False
    return True


class _ViewReader:
    """A file whose read() is a view of the bytes, so espsecure's slices copy nothing."""

    def __init__(self, content: bytearray) -> None:
        self._content = content

    def read(self) -> memoryview:
        return memoryview(self._content)
