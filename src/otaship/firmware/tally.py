"""What validating and serving a firmware image needs from its bytes, taken in
the one pass that writes an upload to disk.

Devices check the MD5 (Arduino's x-MD5), storage and ETags use the SHA-256,
and the image's own checksum is an XOR over its segments. XOR does not care
where a byte sits, so the XOR of the whole file is kept, and validation takes
out the few header bytes once it knows the layout. SHA-256 runs 32 bytes
behind the stream: an ESP-IDF image ends with the SHA-256 of everything before
those 32 bytes, so both that digest and the file's come from one hash.

The receiver's upload spool does the tallying; it lives here, beside the image
check that takes the facts, so that the action (which checks whole files)
never imports the receiver.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DIGEST_LEN = 32


def fold_xor(value: int) -> int:
    """XOR the bytes of a non-negative integer down to one byte."""
    width = max(1, (value.bit_length() + 7) // 8)
    while width > 1:
        half = (width + 1) // 2
        value = (value >> (8 * half)) ^ (value & ((1 << (8 * half)) - 1))
        width = half
    return value


@dataclass(frozen=True)
class ImageFacts:
    size: int
    sha256: str
    md5: str
    # Every byte of the file XORed together.
    xor: int
    # SHA-256 of all but the last 32 bytes; None when the file is shorter.
    head_sha256: bytes | None


class ImageTally:
    """Fed chunk by chunk, in order.

    MD5 is the slowest of the three and shares nothing with the others, so
    `update` comes in two halves that two threads may run side by side, each
    seeing every chunk in order: `update_md5` and `update_rest`.
    """

    def __init__(self) -> None:
        self._head = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._xor = 0
        self._tail = b""
        self._size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self.update_md5(chunk)
        self.update_rest(chunk)

    def update_md5(self, chunk: bytes | memoryview) -> None:
        self._md5.update(chunk)

    def update_rest(self, chunk: bytes | memoryview) -> None:
        self._size += len(chunk)
        # C speed, and position-free once folded: each chunk's bytes land on byte boundaries.
        self._xor ^= int.from_bytes(chunk, "little")
        if len(chunk) >= DIGEST_LEN:
            self._head.update(self._tail)
            self._head.update(chunk[:-DIGEST_LEN])
            self._tail = bytes(chunk[-DIGEST_LEN:])
            return
        joined = self._tail + bytes(chunk)
        self._head.update(joined[:-DIGEST_LEN])
        self._tail = joined[-DIGEST_LEN:]

    def facts(self) -> ImageFacts:
        whole = self._head.copy()
        whole.update(self._tail)
        full_tail = len(self._tail) == DIGEST_LEN
        return ImageFacts(
            size=self._size,
            sha256=whole.hexdigest(),
            md5=self._md5.hexdigest(),
            xor=fold_xor(self._xor),
            head_sha256=self._head.digest() if full_tail else None,
        )
