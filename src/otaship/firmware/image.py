"""Validate an ESP32-family application image and describe it.

esptool's own image classes do the parsing, so the receiver accepts exactly what
`esptool image-info` calls a valid image. Two things are done here instead of
in esptool, both for speed and memory on 16 MiB uploads:

- the file is memory-mapped and esptool reads zero-copy slices of the map, so
  the image is never held in memory twice;
- the XOR checksum is computed with big-integer XOR (C speed) rather than
  esptool's per-byte Python loop, or taken from the XOR of the whole file that
  an upload computed while it streamed in (otaship/firmware/tally.py).

The module is shared by the receiver and the action, and prints nothing.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from esptool.bin_image import ESP32FirmwareImage, ImageSegment
from esptool.cmds import _parse_app_info
from esptool.loader import ESPLoader
from esptool.targets import CHIP_DEFS
from esptool.util import FatalError

from otaship.firmware.esptool_log import quiet_esptool
from otaship.firmware.tally import ImageFacts, fold_xor

SUPPORTED_CHIPS: tuple[str, ...] = tuple(
    name
    for name, rom in CHIP_DEFS.items()
    if name != "esp8266"
    and isinstance(rom.BOOTLOADER_IMAGE, type)
    and issubclass(rom.BOOTLOADER_IMAGE, ESP32FirmwareImage)
)
_CHIP_BY_IMAGE_ID: dict[int, str] = {CHIP_DEFS[name].IMAGE_CHIP_ID: name for name in SUPPORTED_CHIPS}

_INVALID = "Firmware is not a valid ESP application image"
_HEADER_LEN = 24  # common header (8 bytes) and ESP32 extended header (16 bytes)
_DIGEST_LEN = 32
_SEGMENT_HEADER_LEN = 8  # load address and length
_APP_DESC_LEN = 256
# Reads shorter than this are copied: esptool calls ord() on one-byte reads,
# and a copy of a header is cheaper than tracking another view.
_COPY_BELOW = 64
_CHECKSUM_CHUNK = 1 << 16  # measured fastest, and keeps the integers small
# espsecure's SECTOR_SIZE and SIG_BLOCK_MAGIC, written out: importing espsecure
# costs most of a second, which every inspection would pay
# (tests/firmware/test_image.py compares them).
SECTOR_SIZE = 4096
SIG_BLOCK_MAGIC = 0xE7


class InvalidFirmware(ValueError):
    """The upload is not an application image this receiver can serve.

    `str(exc)` is a user-facing message saying what is wrong.
    """


@dataclass(frozen=True)
class AppDescriptor:
    """The `esp_app_desc_t` that ESP-IDF (and Arduino) place at the start of the app."""

    project_name: str
    version: str
    idf_ver: str
    date: str
    time: str
    secure_version: int


@dataclass(frozen=True)
class Segment:
    """One segment of the image: where it loads, its length, and what memory that address is."""

    addr: int
    length: int
    memory: tuple[str, ...]


@dataclass(frozen=True)
class FirmwareImage:
    chip: str
    size: int
    sha256: str
    md5: str
    app: AppDescriptor | None
    segments: tuple[Segment, ...] = ()
    # The offset of the Secure Boot V2 signature sector that ends the file, if
    # any; whether its blocks verify is otaship/firmware/signatures.py's question.
    signature_sector: int | None = None


def inspect_firmware(
    path: str | os.PathLike[str],
    *,
    expected_chip: str | None = None,
    facts: ImageFacts | None = None,
) -> FirmwareImage:
    """Validate an ESP32-family application image file and describe it. Raises InvalidFirmware.

    The chip comes from the image header and is compared with `expected_chip`
    before anything else is read, so an image for another chip gets that
    message even if it is also damaged. An `expected_chip` that is not in
    SUPPORTED_CHIPS is a ValueError: it is a bug or bad configuration, not a
    bad upload. `facts` are the file's hashes and XOR when the caller already
    took them while the bytes streamed in.
    """
    if expected_chip is not None and expected_chip not in SUPPORTED_CHIPS:
        raise ValueError(f"Unknown chip {expected_chip!r}; expected one of: {', '.join(SUPPORTED_CHIPS)}")
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise InvalidFirmware(f"{_INVALID}: the file is empty")
        # Closing the map raises BufferError if any view of it survived, so
        # every slice handed to esptool is released before it closes.
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            reader = _MappedReader(view)
            try:
                return _inspect(view, reader, expected_chip, facts)
            finally:
                reader.release()
                view.release()


def _inspect(
    view: memoryview, reader: _MappedReader, expected_chip: str | None, facts: ImageFacts | None
) -> FirmwareImage:
    chip = _chip_from_header(view)
    if expected_chip is not None and chip != expected_chip:
        raise InvalidFirmware(f"Firmware is built for {chip}, but this group runs {expected_chip}")
    if facts is not None:
        if facts.size != len(view):
            raise ValueError(f"the facts are of a {facts.size}-byte file, this one has {len(view)} bytes")
        image, sector = _load_image(view, reader, chip, facts)
        return FirmwareImage(
            chip=chip,
            size=len(view),
            sha256=facts.sha256,
            md5=facts.md5,
            app=_app_descriptor(image),
            segments=_segments(image),
            signature_sector=sector,
        )

    # MD5 runs on a second core while esptool parses and the checksum and
    # SHA-256 are computed here: hashlib releases the GIL on large buffers.
    # Leaving the pool waits for it, so the view is never released under it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="firmware-md5") as pool:
        md5 = pool.submit(_md5_hex, view)
        image, sector = _load_image(view, reader, chip)
        app = _app_descriptor(image)
        sha256 = hashlib.sha256(view).hexdigest()
        return FirmwareImage(
            chip=chip,
            size=len(view),
            sha256=sha256,
            md5=md5.result(),
            app=app,
            segments=_segments(image),
            signature_sector=sector,
        )


def _md5_hex(view: memoryview) -> str:
    # MD5 is what Arduino's HTTPUpdate checks (x-MD5), not a security measure.
    return hashlib.md5(view, usedforsecurity=False).hexdigest()


def _load_image(
    view: memoryview, reader: _MappedReader, chip: str, facts: ImageFacts | None = None
) -> tuple[ESP32FirmwareImage, int | None]:
    """Parse the image with esptool and check everything the bootloader checks.

    `facts`: the file's XOR and head digest, when an upload already took them.
    Returns the image and the offset of its signature sector, if it has one.
    """
    image_class: type[ESP32FirmwareImage] = CHIP_DEFS[chip].BOOTLOADER_IMAGE
    try:
        with quiet_esptool():
            if facts is None or facts.head_sha256 is None:
                image = image_class(reader)
            else:
                image = _parse_with_known_digest(image_class, view, reader, facts.head_sha256)
    except _Truncated as exc:
        raise InvalidFirmware(f"{_INVALID}: {exc}") from None
    except FatalError as exc:
        raise InvalidFirmware(f"{_INVALID}: {exc}") from exc

    _check_segment_lengths(view, image.segments)
    if facts is None:
        checksum = _xor_checksum(image.segments)
    else:
        checksum = _checksum_from_file_xor(view, image.segments, facts.xor)
    if checksum != image.checksum:
        raise InvalidFirmware(
            f"{_INVALID}: checksum mismatch (stored 0x{image.checksum:02X}, calculated 0x{checksum:02X})"
        )
    if image.append_digest:
        if image.stored_digest != image.calc_digest:
            raise InvalidFirmware(f"{_INVALID}: the appended SHA-256 digest does not match the image")
        end = image.data_length + _DIGEST_LEN
    else:
        end = reader.tell()
    return image, _check_trailing_bytes(view, end)


def _parse_with_known_digest(
    image_class: type[ESP32FirmwareImage], view: memoryview, reader: _MappedReader, head_sha256: bytes
) -> ESP32FirmwareImage:
    """What `image_class(reader)` does, step by step with esptool's own methods,
    except hashing the image once more for its appended digest.

    An image that ends with its digest is hashed over everything before it:
    exactly `head_sha256`, the SHA-256 of all but the file's last 32 bytes
    that the upload took as it streamed in. Anything after the digest (0xFF
    padding) moves the range, and then it is hashed here as esptool would.
    tests/firmware/test_image.py compares both ways attribute by attribute, so an
    esptool release that changes the constructor shows up there.
    """
    image = image_class()
    start = reader.tell()
    segments = image.load_common_header(reader, ESPLoader.ESP_IMAGE_MAGIC)
    image.load_extended_header(reader)
    for _ in range(segments):
        image.load_segment(reader)
    image.checksum = image.read_checksum(reader)
    if image.append_digest:
        end = reader.tell()
        image.stored_digest = reader.read(_DIGEST_LEN)
        if start == 0 and end + _DIGEST_LEN == len(view):
            image.calc_digest = head_sha256
        else:
            image.calc_digest = hashlib.sha256(view[start:end]).digest()
        image.data_length = end - start
    image.verify()
    return image


def _chip_from_header(view: memoryview) -> str:
    # esptool's image classes trust the caller to pick the chip, so the chip id
    # in the extended header is read here, the way `esptool image-info` does.
    magic = view[0]
    if magic != ESPLoader.ESP_IMAGE_MAGIC:
        hint = ""
        if magic == 0xFF:
            hint = "; is this a merged flash image? Upload the application .bin only"
        raise InvalidFirmware(
            f"{_INVALID}: bad magic byte 0x{magic:02X} (expected 0x{ESPLoader.ESP_IMAGE_MAGIC:02X}){hint}"
        )
    if len(view) < _HEADER_LEN:
        raise InvalidFirmware(
            f"{_INVALID}: truncated, {len(view)} bytes is shorter than the {_HEADER_LEN}-byte header"
        )
    (chip_id,) = struct.unpack_from("<H", view, 12)
    chip = _CHIP_BY_IMAGE_ID.get(chip_id)
    if chip is None:
        raise InvalidFirmware(
            f"{_INVALID}: unknown chip id {chip_id} in the header "
            "(only ESP32-family images are supported, not ESP8266)"
        )
    # esptool raises a bare RuntimeError for this one, so it is checked first.
    if view[_HEADER_LEN - 1] not in (0, 1):
        raise InvalidFirmware(
            f"{_INVALID}: invalid hash-appended flag 0x{view[_HEADER_LEN - 1]:02X} in the header"
        )
    return chip


def _check_segment_lengths(view: memoryview, segments: Sequence[ImageSegment]) -> None:
    # esptool zero-pads an odd-length segment while loading, which would hide
    # it; the bootloader refuses such a segment, so the raw length is checked.
    for index, segment in enumerate(segments):
        (length,) = struct.unpack_from("<I", view, segment.file_offs + 4)
        if length % 4:
            raise InvalidFirmware(
                f"{_INVALID}: segment {index} at 0x{segment.addr:08X} is {length} bytes long, "
                "not a multiple of 4"
            )


def _xor_of(data: bytes | memoryview) -> int:
    """Every byte of `data` XORed together.

    XOR does not care where a byte sits, so whole chunks are XORed as big
    integers and the result folded down to one byte, all in C.
    """
    accumulated = 0
    for start in range(0, len(data), _CHECKSUM_CHUNK):
        accumulated ^= int.from_bytes(data[start : start + _CHECKSUM_CHUNK], "little")
    return fold_xor(accumulated)


def _xor_checksum(segments: Sequence[ImageSegment]) -> int:
    """The image checksum: 0xEF XOR every byte of every segment."""
    checksum: int = ESPLoader.ESP_CHECKSUM_MAGIC
    for segment in segments:
        checksum ^= _xor_of(segment.data)
    return checksum


def _checksum_from_file_xor(view: memoryview, segments: Sequence[ImageSegment], file_xor: int) -> int:
    """The image checksum from the XOR of the whole file.

    XOR is its own inverse: XORing in again every byte outside the segments'
    data (headers, padding, checksum, digest: a few dozen bytes) leaves the
    XOR of the segments' data.
    """
    outside = 0
    position = 0
    for segment in segments:
        data_start = segment.file_offs + _SEGMENT_HEADER_LEN
        (length,) = struct.unpack_from("<I", view, segment.file_offs + 4)
        outside ^= _xor_of(view[position:data_start])
        position = data_start + length
    outside ^= _xor_of(view[position:])
    magic: int = ESPLoader.ESP_CHECKSUM_MAGIC
    return file_xor ^ outside ^ magic


def _check_trailing_bytes(view: memoryview, end: int) -> int | None:
    """Allow 0xFF padding after the image, and a Secure Boot V2 signature
    sector at the end of the file; refuse anything else. Returns the sector's
    offset, or None when there is none.

    `elf2image --pad-to-size` and tools that cut an image out of a flash dump
    leave erased-flash bytes (0xFF) behind it, and the bootloader never reads
    them. `espsecure sign-data` pads the image with 0xFF to a 4 KiB boundary and
    appends one 4 KiB sector of signature blocks, each starting with 0xE7. Any
    other data is most likely a merged flash image (bootloader, partition
    table and app in one file) or two files glued together, and serving it to
    devices would write the wrong thing into the OTA slot.
    """
    size = len(view)
    first = _first_unerased(view, end)
    if first is None:
        return None
    if first % SECTOR_SIZE == 0 and view[first] == SIG_BLOCK_MAGIC:
        if size - first < SECTOR_SIZE:
            raise InvalidFirmware(
                f"{_INVALID}: the signature sector at offset 0x{first:X} is truncated: the file holds "
                f"{size - first} of its {SECTOR_SIZE} bytes; upload the whole signed file"
            )
        if size - first == SECTOR_SIZE:
            return first
        raise InvalidFirmware(
            f"{_INVALID}: {size - first - SECTOR_SIZE} unexpected bytes after the signature sector at "
            f"offset 0x{first:X}; the sector must end the file"
        )
    raise InvalidFirmware(
        f"{_INVALID}: {size - end} unexpected bytes after the end of the image at offset "
        f"0x{end:X}; is this a merged flash image? Upload the application .bin only"
    )


def _first_unerased(view: memoryview, start: int) -> int | None:
    """The offset of the first byte from `start` on that is not 0xFF, or None."""
    size = len(view)
    erased = b"\xff" * min(_CHECKSUM_CHUNK, max(0, size - start))
    for offset in range(start, size, _CHECKSUM_CHUNK):
        stop = min(offset + _CHECKSUM_CHUNK, size)
        # A copied chunk compares with memcmp; comparing memoryviews goes
        # element by element and is several times slower.
        chunk = view[offset:stop].tobytes()
        if chunk != erased[: stop - offset]:
            return stop - len(chunk.lstrip(b"\xff"))
    return None


def _segments(image: ESP32FirmwareImage) -> tuple[Segment, ...]:
    return tuple(
        Segment(addr=segment.addr, length=len(segment.data), memory=tuple(segment.get_memory_type(image)))
        for segment in image.segments
    )


def _app_descriptor(image: ESP32FirmwareImage) -> AppDescriptor | None:
    # Same rule as `esptool image-info`: the descriptor, if any, starts the
    # first segment that is mapped as DROM.
    for segment in image.segments:
        if "DROM" not in segment.get_memory_type(image):
            continue
        if len(segment.data) < _APP_DESC_LEN:
            return None
        try:
            fields: dict[str, Any] | None = _parse_app_info(bytes(segment.data[:_APP_DESC_LEN]))
        except UnicodeDecodeError as exc:
            raise InvalidFirmware(f"{_INVALID}: the app descriptor holds text that is not UTF-8") from exc
        if fields is None:
            return None
        return AppDescriptor(
            project_name=fields["project_name"],
            version=fields["version"],
            idf_ver=fields["idf_ver"],
            date=fields["date"],
            time=fields["time"],
            secure_version=fields["secure_version"],
        )
    return None


class _Truncated(Exception):
    pass


class _MappedReader:
    """Just enough of a binary file for esptool's image loader, without copying.

    Large reads return memoryview slices of the map. Every slice is kept so it
    can be released before the map is closed, even if an exception's traceback
    still refers to it.
    """

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._position = 0
        self._slices: list[memoryview] = []

    def read(self, size: int = -1) -> bytes | memoryview:
        start = self._position
        end = len(self._view) if size < 0 else start + size
        if end > len(self._view):
            # esptool would fail later on a short read with a less clear
            # error (or a TypeError from ord(b"")), so stop here.
            raise _Truncated(
                f"truncated, the file ends at byte {len(self._view)} but the image continues to byte {end}"
            )
        self._position = end
        # Odd sizes are copied too: esptool pads such segments by appending
        # to them, which a memoryview does not support.
        if end - start < _COPY_BELOW or (end - start) % 4:
            return self._view[start:end].tobytes()
        part = self._view[start:end]
        self._slices.append(part)
        return part

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._position = offset
        elif whence == os.SEEK_CUR:
            self._position += offset
        else:
            self._position = len(self._view) + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def release(self) -> None:
        for part in self._slices:
            part.release()
        self._slices.clear()
