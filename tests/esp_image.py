"""Build real ESP32-family application images offline, for tests and benchmarks.

The image is made the way a real build makes it, minus the compiler: binutils
`objcopy` wraps an `esp_app_desc_t` and a block of "code" into an ELF, and
`esptool elf2image` turns that ELF into the flashable `.bin`. esptool therefore
writes the header, checksum, appended SHA-256 and the ELF's SHA-256 inside the
app descriptor exactly as it does for ESP-IDF and Arduino builds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import esptool
from esptool.targets import CHIP_DEFS

OBJCOPY = shutil.which("objcopy") or "/usr/bin/objcopy"

# Bumped whenever the layout below changes, so stale images in the on-disk
# cache (shared by test runs and benchmarks) are never reused.
_LAYOUT_VERSION = 1

APP_DESC_MAGIC = 0xABCD5432
APP_DESC_FORMAT = "<II8s32s32s16s16s32s32sHHB3s72s"
APP_DESC_SIZE = struct.calcsize(APP_DESC_FORMAT)  # 256
APP_DESC_VERSION_OFFSET = 16

# A fixed build date: real builds embed the clock, test images must not.
_BUILD_TIME = b"12:00:00"
_BUILD_DATE = b"Jan  1 2024"

# Every chip maps flash in 64 KiB MMU pages unless told otherwise; the
# descriptor says so explicitly (log2 of the page size) so that esptool picks
# the same page size on chips where it is configurable.
_MMU_PAGE = 0x10000
_MMU_PAGE_LOG2 = 16

_IMAGE_HEADER = 24  # common 8-byte header plus the 16-byte extended header
_SEGMENT_HEADER = 8
# esptool refuses a single segment of 16 MB or more; bigger code is split.
_MAX_CHUNK = 8 * 1024 * 1024

_XTENSA_CHIPS = frozenset({"esp32", "esp32s2", "esp32s3"})
_EM_XTENSA = 0x5E
_EM_RISCV = 0xF3


def build_image(
    version: str = "1.0.0",
    *,
    chip: str = "esp32",
    project_name: str = "otaship-test",
    idf_ver: str = "v5.1.2",
    code_size: int = 4096,
    seed: int = 0,
    app_desc: bool = True,
    secure_version: int = 0,
) -> bytes:
    """Return the bytes of a valid application image; the same arguments give the same bytes.

    The image holds a 256-byte DROM segment (the app descriptor, or filler when
    `app_desc` is false) and `code_size` bytes of seeded pseudo-random flash
    code. Code addresses are chosen so that esptool needs no padding segment:
    the image is `code_size` plus about 340 bytes (plus 8 bytes per extra
    segment when `code_size` exceeds 8 MiB).
    """
    _check_text("version", version)
    _check_text("project_name", project_name)
    _check_text("idf_ver", idf_ver)
    if chip not in CHIP_DEFS or chip == "esp8266":
        raise ValueError(f"unsupported chip {chip!r}")
    if code_size <= 0:
        raise ValueError("code_size must be positive")
    return _build_cached(version, chip, project_name, idf_ver, code_size, seed, app_desc, secure_version)


def write_image(path: Path, version: str = "1.0.0", **kwargs: Any) -> Path:
    """Write `build_image(version, **kwargs)` to `path` and return the path."""
    path = Path(path)
    path.write_bytes(build_image(version, **kwargs))
    return path


def app_descriptor(
    version: str, *, project_name: str = "otaship-test", idf_ver: str = "v5.1.2", secure_version: int = 0
) -> bytes:
    """The 256-byte `esp_app_desc_t`, with the ELF SHA-256 left zero for esptool to fill."""
    return struct.pack(
        APP_DESC_FORMAT,
        APP_DESC_MAGIC,
        secure_version,
        b"",
        version.encode(),
        project_name.encode(),
        _BUILD_TIME,
        _BUILD_DATE,
        idf_ver.encode(),
        b"",  # app_elf_sha256: esptool elf2image writes it
        0,
        0xFFFF,  # max_efuse_blk_rev_full: any
        _MMU_PAGE_LOG2,
        b"",
        b"",
    )


def _check_text(name: str, value: str) -> None:
    # The descriptor's fields are 32-byte C strings.
    if len(value.encode()) > 31:
        raise ValueError(f"{name} is longer than 31 bytes: {value!r}")


@functools.lru_cache(maxsize=64)
def _build_cached(
    version: str,
    chip: str,
    project_name: str,
    idf_ver: str,
    code_size: int,
    seed: int,
    app_desc: bool,
    secure_version: int,
) -> bytes:
    key_fields: dict[str, object] = {
        "layout": _LAYOUT_VERSION,
        "esptool": esptool.__version__,
        "version": version,
        "chip": chip,
        "project_name": project_name,
        "idf_ver": idf_ver,
        "code_size": code_size,
        "seed": seed,
        "app_desc": app_desc,
    }
    if secure_version:
        # Only when set, so that the images cached before it existed are still found.
        key_fields["secure_version"] = secure_version
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
    cache_root = Path(tempfile.gettempdir()) / "otaship-esp-images"
    cached = cache_root / f"{key}.bin"
    if cached.is_file():
        return cached.read_bytes()

    cache_root.mkdir(parents=True, exist_ok=True)
    # A private build folder per call: several test processes may build the
    # same image at once, and only the finished file is published (atomically).
    with tempfile.TemporaryDirectory(dir=cache_root, prefix="build-") as build:
        build_dir = Path(build)
        if app_desc:
            drom = app_descriptor(
                version, project_name=project_name, idf_ver=idf_ver, secure_version=secure_version
            )
        else:
            # Same size, no magic: the first DROM segment holds no descriptor.
            drom = hashlib.sha256(f"rodata {version} {seed}".encode()).digest() * 8
        code = random.Random(seed).randbytes(code_size)
        elf = _make_elf(build_dir, chip, drom, code, has_app_desc=app_desc)
        image = build_dir / "app.bin"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "esptool",
                "--chip",
                chip,
                "elf2image",
                "--flash-size",
                "4MB",
                "--output",
                image.name,
                elf.name,
            ],
            cwd=build_dir,
            check=True,
            capture_output=True,
        )
        data = image.read_bytes()
        os.replace(image, cached)
    return data


def _make_elf(build_dir: Path, chip: str, drom: bytes, code: bytes, *, has_app_desc: bool) -> Path:
    """Wrap the DROM data and the code into an ELF that elf2image accepts."""
    rom = CHIP_DEFS[chip]
    drom_addr = rom.DROM_MAP_START + 0x20
    # esptool puts the first flash segment's data right after the headers
    # (file offset 0x20), so a page offset of 0x20 maps it without padding.
    assert drom_addr % _MMU_PAGE == (_IMAGE_HEADER + _SEGMENT_HEADER)

    # elf2image moves `.flash.appdesc` to the front and patches the ELF's
    # SHA-256 into it; a descriptor-less DROM must not carry that name.
    drom_section = ".flash.appdesc" if has_app_desc else ".flash.rodata"
    (build_dir / "drom.bin").write_bytes(drom)
    # Relative names: objcopy names its symbols after the input path, and that
    # path ends up in the ELF whose SHA-256 lands in the image.
    _objcopy(
        build_dir,
        "-I",
        "binary",
        "-O",
        "elf32-little",
        "--rename-section",
        f".data={drom_section},alloc,load,readonly,data,contents",
        "--change-section-address",
        f".data={drom_addr:#x}",
        "drom.bin",
        "app.o",
    )

    # Place every code chunk where its file offset already lines up with its
    # address modulo the MMU page, so elf2image inserts no padding segment.
    offset = _IMAGE_HEADER + _SEGMENT_HEADER + len(drom)
    if chip == "esp32":
        offset = _esp32_tail_workaround(offset)
    page_base = rom.IROM_MAP_START
    if page_base <= drom_addr < rom.IROM_MAP_END:
        page_base = _align_up(drom_addr + len(drom), _MMU_PAGE)  # shared DROM/IROM space
    args: list[str] = []
    entry = 0
    for index, start in enumerate(range(0, len(code), _MAX_CHUNK)):
        chunk = code[start : start + _MAX_CHUNK]
        chunk += b"\x00" * (-len(chunk) % 4)
        addr = page_base + (offset + _SEGMENT_HEADER) % _MMU_PAGE
        entry = entry or addr
        name = f"code{index}.bin"
        section = f".flash.text{index}"
        (build_dir / name).write_bytes(chunk)
        args += [
            "--add-section",
            f"{section}={name}",
            "--set-section-flags",
            f"{section}=alloc,load,readonly,code,contents",
            "--change-section-address",
            f"{section}={addr:#x}",
        ]
        offset += _SEGMENT_HEADER + len(chunk)
        if chip == "esp32":
            offset = _esp32_tail_workaround(offset)
        # The next chunk starts in a fresh page, well clear of this one.
        page_base = _align_up(addr + len(chunk), _MMU_PAGE) + _MMU_PAGE
    _objcopy(build_dir, "-I", "elf32-little", "-O", "elf32-little", *args, "app.o", "app.elf")

    # objcopy's generic target writes EM_NONE and no entry; elf2image wants a
    # real machine and copies the entry point into the image header.
    elf = build_dir / "app.elf"
    raw = bytearray(elf.read_bytes())
    struct.pack_into("<H", raw, 18, _EM_XTENSA if chip in _XTENSA_CHIPS else _EM_RISCV)
    struct.pack_into("<I", raw, 24, entry)
    elf.write_bytes(raw)
    return elf


def _esp32_tail_workaround(offset: int) -> int:
    # Mirrors esptool's ESP32-only padding of a flash segment that ends fewer
    # than 0x24 bytes past a page boundary (an old bootloader bug).
    remainder = offset % _MMU_PAGE
    return offset + (0x24 - remainder if remainder < 0x24 else 0)


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _objcopy(cwd: Path, *args: str) -> None:
    subprocess.run([OBJCOPY, *args], cwd=cwd, check=True, capture_output=True)
