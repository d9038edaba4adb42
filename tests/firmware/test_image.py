from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from esptool.bin_image import ELFSection, ESP32FirmwareImage, ESP8266ROMFirmwareImage, ImageSegment
from esptool.loader import ESPLoader
from esptool.targets import CHIP_DEFS

from otaship.firmware import image as firmware
from otaship.firmware.image import SUPPORTED_CHIPS, AppDescriptor, InvalidFirmware, inspect_firmware
from otaship.firmware.tally import ImageFacts, ImageTally, fold_xor
from tests.esp_image import app_descriptor, build_image, write_image

INVALID = "Firmware is not a valid ESP application image"


def write(tmp_path: Path, data: bytes, name: str = "firmware.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def reseal(data: bytes | bytearray) -> bytes:
    """Recompute the checksum and appended digest of an edited image (no trailing bytes)."""
    sealed = bytearray(data)
    image = ESP32FirmwareImage(io.BytesIO(bytes(sealed)))
    sealed[-33] = image.calculate_checksum()
    sealed[-32:] = hashlib.sha256(sealed[:-32]).digest()
    return bytes(sealed)


def code_offset(data: bytes) -> int:
    """File offset of the code segment's data (segment 1) in a built image."""
    image = ESP32FirmwareImage(io.BytesIO(data))
    offset: int = image.segments[1].file_offs
    return offset + 8


def tallied(data: bytes, chunk: int = 1000) -> ImageFacts:
    """What an upload of `data` learns while it streams in."""
    tally = ImageTally()
    for start in range(0, len(data), chunk):
        tally.update(data[start : start + chunk])
    return tally.facts()


def assert_invalid(path: Path, *fragments: str, expected_chip: str | None = None) -> str:
    with pytest.raises(InvalidFirmware) as caught:
        inspect_firmware(path, expected_chip=expected_chip)
    message = str(caught.value)
    # An upload's route, with the checksum taken from the streamed XOR, says the same.
    if path.stat().st_size:
        with pytest.raises(InvalidFirmware) as streamed:
            inspect_firmware(path, expected_chip=expected_chip, facts=tallied(path.read_bytes()))
        assert str(streamed.value) == message
    for fragment in fragments:
        assert fragment in message
    return message


# --- valid images ---------------------------------------------------------


def test_valid_image_is_described(tmp_path: Path) -> None:
    data = build_image("1.4.2", project_name="thermostat", idf_ver="v5.1.2")
    result = inspect_firmware(write(tmp_path, data))
    assert result.chip == "esp32"
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.md5 == hashlib.md5(data).hexdigest()
    assert result.app == AppDescriptor(
        project_name="thermostat",
        version="1.4.2",
        idf_ver="v5.1.2",
        date="Jan  1 2024",
        time="12:00:00",
        secure_version=0,
    )


def test_image_without_app_descriptor_has_no_app(tmp_path: Path) -> None:
    result = inspect_firmware(write(tmp_path, build_image(app_desc=False)))
    assert result.chip == "esp32"
    assert result.app is None


@pytest.mark.parametrize("chip", ["esp32s3", "esp32c3", "esp32c6"])
def test_other_chips_are_detected(tmp_path: Path, chip: str) -> None:
    result = inspect_firmware(write(tmp_path, build_image("3.0.0", chip=chip)), expected_chip=chip)
    assert result.chip == chip
    assert result.app is not None and result.app.version == "3.0.0"


def test_checksum_over_many_chunks(tmp_path: Path) -> None:
    # Larger than the checksum chunk, with an odd number of chunks.
    data = build_image(code_size=5 * 65536 + 1000, seed=3)
    assert inspect_firmware(write(tmp_path, data)).size == len(data)


def test_xor_checksum_matches_esptool() -> None:
    for data in (build_image(), build_image(code_size=200_004, seed=7)):
        image = ESP32FirmwareImage(io.BytesIO(data))
        assert firmware._xor_checksum(image.segments) == image.calculate_checksum() == image.checksum


def test_erased_flash_padding_after_the_image_is_accepted(tmp_path: Path) -> None:
    data = build_image() + b"\xff" * 70_000
    result = inspect_firmware(write(tmp_path, data))
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_supported_chips() -> None:
    assert {"esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6"} <= set(SUPPORTED_CHIPS)
    assert "esp8266" not in SUPPORTED_CHIPS


def test_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    inspect_firmware(write(tmp_path, build_image()))
    with pytest.raises(InvalidFirmware):
        inspect_firmware(write(tmp_path, build_image()[:-5], "cut.bin"))
    assert capfd.readouterr() == ("", "")


# --- rejections -----------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    assert_invalid(write(tmp_path, b""), INVALID, "empty")


def test_bad_magic(tmp_path: Path) -> None:
    data = bytearray(build_image())
    data[0] = 0x00
    message = assert_invalid(write(tmp_path, bytes(data)))
    assert message == f"{INVALID}: bad magic byte 0x00 (expected 0xE9)"


def test_merged_flash_image_gets_a_hint(tmp_path: Path) -> None:
    # An ESP32 merged image starts with erased flash before the bootloader at 0x1000.
    merged = b"\xff" * 0x1000 + build_image()
    assert_invalid(write(tmp_path, merged), "bad magic byte 0xFF", "merged flash image")


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda data: data[:20], id="header"),
        pytest.param(lambda data: data[:2000], id="segment-runs-past-end"),
        pytest.param(lambda data: data[: -32 - 16], id="no-checksum"),
        pytest.param(lambda data: data[:-32], id="no-digest"),
        pytest.param(lambda data: data[:-1], id="short-digest"),
    ],
)
def test_truncated(tmp_path: Path, cut: object) -> None:
    data = cut(build_image())  # type: ignore[operator]
    assert_invalid(write(tmp_path, data), INVALID, "truncated")


def test_wrong_checksum(tmp_path: Path) -> None:
    data = bytearray(build_image())
    data[code_offset(bytes(data)) + 10] ^= 0x01
    # Re-append a matching digest so that only the checksum is wrong.
    data[-32:] = hashlib.sha256(data[:-32]).digest()
    assert_invalid(write(tmp_path, bytes(data)), INVALID, "checksum mismatch")


def test_wrong_appended_digest(tmp_path: Path) -> None:
    data = bytearray(build_image())
    offset = code_offset(bytes(data))
    # The same change to two bytes leaves the XOR checksum intact.
    data[offset] ^= 0x5A
    data[offset + 1] ^= 0x5A
    assert_invalid(write(tmp_path, bytes(data)), INVALID, "SHA-256 digest does not match")


def test_image_without_appended_digest_is_accepted(tmp_path: Path) -> None:
    # Built with --dont-append-digest: only the checksum protects it.
    data = bytearray(build_image())
    data[23] = 0
    data = data[:-32]
    result = inspect_firmware(write(tmp_path, bytes(data)))
    assert result.size == len(data)


def test_unknown_chip_id(tmp_path: Path) -> None:
    data = bytearray(build_image())
    struct.pack_into("<H", data, 12, 0x00FF)
    assert_invalid(write(tmp_path, bytes(data)), INVALID, "unknown chip id 255", "ESP8266")


def test_esp8266_image(tmp_path: Path) -> None:
    image = ESP8266ROMFirmwareImage()
    image.entrypoint = 0x40100000
    image.segments = [ImageSegment(0x40100000, b"\x01" * 64)]
    _, data = image.save(None)
    assert_invalid(write(tmp_path, data), INVALID, "ESP8266")


def test_too_many_segments(tmp_path: Path) -> None:
    image = ESP32FirmwareImage()
    image.segments = [
        ELFSection(b".dram0.data", 0x3FFB0000 + i * 0x100, b"\x00" * 16, flags=0) for i in range(17)
    ]
    assert_invalid(write(tmp_path, image.save(None)), INVALID, "segment count 17")


def test_segment_length_not_multiple_of_four(tmp_path: Path) -> None:
    # esptool refuses to write such a segment, so it is packed by hand: header,
    # one 6-byte RAM segment, checksum in the last byte of the 16-byte block.
    header = struct.pack("<BBBBI", 0xE9, 1, 2, 0x20, 0x40080000)
    extended = struct.pack("<BBBBHBHH4BB", 0xEE, 0, 0, 0, 0, 0, 0, 0xFFFF, 0, 0, 0, 0, 0)
    body = header + extended + struct.pack("<II", 0x3FFB0000, 6) + b"abcdef"
    checksum = ESPLoader.checksum(b"abcdef\x00\x00")
    body += b"\x00" * (15 - len(body) % 16) + bytes([checksum])
    assert_invalid(write(tmp_path, body), INVALID, "segment 0", "not a multiple of 4")


def test_trailing_garbage(tmp_path: Path) -> None:
    data = build_image() + b"\xff" * 100 + b"partition table"
    assert_invalid(write(tmp_path, data), INVALID, "115 unexpected bytes after the end of the image")


def test_app_descriptor_text_that_is_not_utf8(tmp_path: Path) -> None:
    data = bytearray(build_image())
    version_offset = 0x20 + 16  # first segment's data, then esp_app_desc_t.version
    data[version_offset : version_offset + 2] = b"\xff\xfe"
    assert_invalid(write(tmp_path, reseal(data)), INVALID, "not UTF-8")


# --- chip of the group ----------------------------------------------------


def test_chip_matches_group(tmp_path: Path) -> None:
    assert inspect_firmware(write(tmp_path, build_image()), expected_chip="esp32").chip == "esp32"


def test_chip_differs_from_group(tmp_path: Path) -> None:
    path = write(tmp_path, build_image(chip="esp32s3"))
    message = assert_invalid(path, expected_chip="esp32")
    assert message == "Firmware is built for esp32s3, but this group runs esp32"


def test_unknown_expected_chip_is_a_value_error(tmp_path: Path) -> None:
    path = write(tmp_path, build_image())
    for chip in ("esp32x9", "esp8266", "ESP32"):
        with pytest.raises(ValueError, match="Unknown chip") as caught:
            inspect_firmware(path, expected_chip=chip)
        assert not isinstance(caught.value, InvalidFirmware)


# --- the test image builder -----------------------------------------------


def test_builder_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two real builds in different folders, bypassing both caches.
    from tests import esp_image

    builds = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.setattr("tempfile.gettempdir", lambda name=name: str(tmp_path / name))
        esp_image._build_cached.cache_clear()
        builds.append(build_image("9.9.9", seed=42))
    esp_image._build_cached.cache_clear()
    assert builds[0] == builds[1]
    assert build_image("9.9.9", seed=42) == builds[0]


def test_builder_varies_with_seed_and_version() -> None:
    base = build_image("1.0.0", seed=0)
    assert build_image("1.0.0", seed=1) != base
    assert build_image("1.0.1", seed=0) != base
    assert len(build_image("1.0.0", seed=1)) == len(base)


def test_builder_places_descriptor_first() -> None:
    data = build_image("7.1.0", project_name="lamp")
    descriptor = data[0x20 : 0x20 + 256]
    expected = app_descriptor("7.1.0", project_name="lamp")
    # Equal apart from the ELF SHA-256 that esptool wrote at 0x90.
    assert descriptor[:0x90] == expected[:0x90]
    assert descriptor[0xB0:] == expected[0xB0:]
    assert descriptor[0x90:0xB0] != bytes(32)


def test_esptool_image_info_reports_the_version(tmp_path: Path) -> None:
    path = write_image(tmp_path / "app.bin", "2.5.0", project_name="weather-station")
    info = subprocess.run(
        [sys.executable, "-m", "esptool", "image-info", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "App version: 2.5.0" in info
    assert "Project name: weather-station" in info
    assert "Checksum: " in info and "(valid)" in info
    assert "invalid" not in info


def test_builder_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_image("x" * 32)
    with pytest.raises(ValueError):
        build_image(chip="esp8266")
    with pytest.raises(ValueError):
        build_image(code_size=0)


def test_facts_taken_while_streaming_are_used_as_given(tmp_path: Path) -> None:
    data = build_image("1.0.0")
    path = write(tmp_path, data)
    given = dataclasses.replace(tallied(data), sha256="a" * 64, md5="b" * 32)
    image = inspect_firmware(path, facts=given)
    assert (image.sha256, image.md5) == ("a" * 64, "b" * 32)
    assert image.app is not None and image.app.version == "1.0.0"
    # The image is still validated in full, its checksum from the streamed XOR.
    path.write_bytes(b"\x00" + data[1:])
    with pytest.raises(InvalidFirmware, match="magic"):
        inspect_firmware(path, facts=tallied(path.read_bytes()))
    flipped = bytearray(data)
    flipped[code_offset(data) + 5] ^= 0x10
    path.write_bytes(bytes(flipped))
    with pytest.raises(InvalidFirmware, match="checksum mismatch"):
        inspect_firmware(path, facts=tallied(bytes(flipped)))
    # Facts of another file are a caller's bug, not a bad upload.
    path.write_bytes(data)
    with pytest.raises(ValueError, match="facts are of a"):
        inspect_firmware(path, facts=tallied(data + b"\xff" * 16))


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 64, 1000, 70_001])
def test_the_tally_of_any_chunking_is_the_tally_of_the_whole(size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    xor = 0
    for byte in data:
        xor ^= byte
    expected = ImageFacts(
        size=size,
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
        xor=xor,
        head_sha256=hashlib.sha256(data[:-32]).digest() if size >= 32 else None,
    )
    for _ in range(20):
        tally = ImageTally()
        position = 0
        while position < size:
            step = rng.choice([1, 2, 31, 32, 33, rng.randrange(1, 5000)])
            tally.update(memoryview(data)[position : position + step])
            position += step
        assert tally.facts() == expected


def test_fold_xor() -> None:
    assert fold_xor(0) == 0
    assert fold_xor(0xAB) == 0xAB
    assert fold_xor(0x1234) == 0x12 ^ 0x34
    assert fold_xor(int.from_bytes(bytes(range(256)), "little")) == 0
    assert fold_xor(int.from_bytes(bytes(range(1, 256)) + b"\x00" * 9, "big")) == 0


def _parsed_both_ways(data: bytes, chip: str) -> tuple[dict[str, object], dict[str, object]]:
    image_class = CHIP_DEFS[chip].BOOTLOADER_IMAGE
    view = memoryview(data)

    def described(image: ESP32FirmwareImage) -> dict[str, object]:
        attributes = dict(vars(image))
        attributes["segments"] = [(s.addr, bytes(s.data), s.file_offs) for s in image.segments]
        return attributes

    own = described(image_class(firmware._MappedReader(view)))
    head = hashlib.sha256(data[:-32]).digest()
    stepwise = described(
        firmware._parse_with_known_digest(image_class, view, firmware._MappedReader(view), head)
    )
    return own, stepwise


@pytest.mark.parametrize("chip", SUPPORTED_CHIPS)
def test_parsing_with_the_streamed_digest_is_esptools_own_parse(chip: str) -> None:
    data = build_image("2.0.0", chip=chip, code_size=50_000)
    own, stepwise = _parsed_both_ways(data, chip)
    assert stepwise == own
    assert own["calc_digest"] == hashlib.sha256(data[:-32]).digest()


def test_parsing_with_padding_after_the_digest_hashes_the_image_itself() -> None:
    data = build_image("2.0.0") + b"\xff" * 48
    own, stepwise = _parsed_both_ways(data, "esp32")
    assert stepwise == own
    assert own["calc_digest"] == hashlib.sha256(data[:-80]).digest()
