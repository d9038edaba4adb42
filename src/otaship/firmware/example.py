"""A small, valid ESP32-family application image, built without a toolchain.

It is for trying the receiver before any real project exists: the image holds an
`esp_app_desc_t` (what ESP-IDF and Arduino builds place first in flash) and a
block of filler "code". It would not run on a device; everything the receiver
and the bootloader check before running it is real.

esptool's own image classes write it, the way `esptool elf2image` writes a
build: the headers, the segment layout on MMU page boundaries, the checksum and
the appended SHA-256. Only the ELF is missing, so the descriptor's ELF SHA-256
stays zero.

Pure: no receiver package, no file access, no clock (the build time is an argument).
"""

from __future__ import annotations

import hashlib
import struct
from datetime import datetime

from esptool.bin_image import ELFSection, ESP32FirmwareImage
from esptool.cmds import FLASH_MODES
from esptool.targets import CHIP_DEFS

from otaship.firmware.image import SUPPORTED_CHIPS

PROJECT_NAME = "otaship-example"
# No ESP-IDF built it, so the field says what did.
IDF_VERSION = "otaship example"
CODE_SIZE = 4096

APP_DESC_MAGIC = 0xABCD5432
_APP_DESC_FORMAT = "<II8s32s32s16s16s32s32sHHB3s72s"  # esp_app_desc_t, 256 bytes
_TEXT_FIELDS = {"version": 32, "project_name": 32, "idf_ver": 32}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_MMU_PAGE = 0x10000
_MMU_PAGE_LOG2 = 16
_IMAGE_HEADER = 24  # common header (8 bytes) and extended header (16 bytes)
_SEGMENT_HEADER = 8
# ESP32 only: esptool pads a flash segment ending fewer than this many bytes
# past a page boundary (an old bootloader bug).
_ESP32_TAIL = 0x24


def example_image(
    version: str,
    *,
    chip: str = "esp32",
    built: datetime,
    project_name: str = PROJECT_NAME,
    idf_ver: str = IDF_VERSION,
) -> bytes:
    """The bytes of an application image whose descriptor says `version`.

    The same arguments give the same bytes. A ValueError names the argument
    that cannot go into the image.
    """
    if chip not in SUPPORTED_CHIPS:
        raise ValueError(f"unknown chip {chip!r}: use one of {', '.join(SUPPORTED_CHIPS)}")
    descriptor = app_descriptor(version, project_name=project_name, idf_ver=idf_ver, built=built)
    rom = CHIP_DEFS[chip]
    image_class: type[ESP32FirmwareImage] = rom.BOOTLOADER_IMAGE
    image = image_class()
    if image.MMU_PAGE_SIZE_CONF:
        image.set_mmu_page_size(_MMU_PAGE)
    image.flash_mode = FLASH_MODES["dio"]
    image.flash_size_freq = rom.parse_flash_size_arg("4MB") + rom.parse_flash_freq_arg(None)
    image.min_rev_full = 0
    image.max_rev_full = 0xFFFF  # any revision, as elf2image writes by default

    # The descriptor goes first, right after the headers; the bootloader and
    # `esptool image-info` look for it in the first DROM segment.
    drom_addr = rom.DROM_MAP_START + _IMAGE_HEADER + _SEGMENT_HEADER
    # Where the code segment's data lands in the file: mapping its address to
    # the same offset within an MMU page means esptool adds no padding segment.
    code_offset = _IMAGE_HEADER + _SEGMENT_HEADER + len(descriptor)
    if chip == "esp32":
        code_offset = _esp32_tail(code_offset)
    code_offset += _SEGMENT_HEADER
    page_base = rom.IROM_MAP_START
    if rom.IROM_MAP_START <= drom_addr < rom.IROM_MAP_END:
        # One address space for code and data: the code takes the next page.
        page_base = _align_up(drom_addr + len(descriptor), _MMU_PAGE)
    code_addr = page_base + code_offset % _MMU_PAGE

    image.entrypoint = code_addr
    image.segments = [
        ELFSection(b".flash.appdesc", drom_addr, descriptor, flags=0),
        ELFSection(b".flash.text", code_addr, _filler(version, CODE_SIZE), flags=0),
    ]
    image.verify()
    data: bytes | None = image.save(None)
    assert data is not None  # save(None) returns the bytes
    return data


def app_descriptor(version: str, *, project_name: str, idf_ver: str, built: datetime) -> bytes:
    """The 256-byte `esp_app_desc_t`: magic, version, project, build date and time, IDF version."""
    texts = {"version": version, "project_name": project_name, "idf_ver": idf_ver}
    for name, value in texts.items():
        if not value or not value.isprintable():
            raise ValueError(f"{name} must be printable text, not {value!r}")
        # C strings: the last byte is the terminator.
        if len(value.encode()) >= _TEXT_FIELDS[name]:
            raise ValueError(f"{name} is longer than {_TEXT_FIELDS[name] - 1} bytes: {value!r}")
    return struct.pack(
        _APP_DESC_FORMAT,
        APP_DESC_MAGIC,
        0,  # secure_version
        b"",
        version.encode(),
        project_name.encode(),
        built.strftime("%H:%M:%S").encode(),
        build_date(built).encode(),
        idf_ver.encode(),
        b"",  # app_elf_sha256: there is no ELF
        0,  # min_efuse_blk_rev_full
        0xFFFF,  # max_efuse_blk_rev_full: any
        _MMU_PAGE_LOG2,
        b"",
        b"",
    )


def build_date(built: datetime) -> str:
    """The date as C's `__DATE__` writes it ("Jan  1 2024"), whatever the locale."""
    return f"{_MONTHS[built.month - 1]} {built.day:2d} {built.year}"


def _filler(version: str, size: int) -> bytes:
    # Different for every version, so two example images never share a hash.
    seed = hashlib.sha256(f"otaship example {version}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _esp32_tail(offset: int) -> int:
    remainder = offset % _MMU_PAGE
    return offset + (_ESP32_TAIL - remainder if remainder < _ESP32_TAIL else 0)


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment
