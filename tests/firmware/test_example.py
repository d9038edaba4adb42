"""`otaship firmware example` and `inspect`: an image the receiver takes, made without a toolchain."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from otaship.firmware.cli import build_time, firmware
from otaship.firmware.example import example_image
from otaship.firmware.image import SUPPORTED_CHIPS, InvalidFirmware, inspect_firmware
from otaship.receiver.cli import cli as otaship_cli
from tests.conftest import Fleet
from tests.test_slim_install import run_without_receiver

BUILT = datetime(2024, 3, 7, 9, 5, 1, tzinfo=UTC)
EPOCH = str(int(BUILT.timestamp()))


def write(path: Path, version: str = "1.0.0", chip: str = "esp32") -> bytes:
    data = example_image(version, chip=chip, built=BUILT)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("chip", SUPPORTED_CHIPS)
def test_every_chip_gets_an_image_the_receiver_accepts(tmp_path: Path, chip: str) -> None:
    data = write(tmp_path / "firmware.bin", "2.3.4", chip)
    described = inspect_firmware(tmp_path / "firmware.bin", expected_chip=chip)
    assert (described.chip, described.size) == (chip, len(data))
    assert described.sha256 == hashlib.sha256(data).hexdigest()
    assert described.app is not None
    assert (described.app.project_name, described.app.version, described.app.idf_ver) == (
        "otaship-example",
        "2.3.4",
        "otaship example",
    )
    assert (described.app.date, described.app.time, described.app.secure_version) == (
        "Mar  7 2024",
        "09:05:01",
        0,
    )
    # The descriptor, then the code, each in its own flash page: no padding segment.
    assert [segment.length for segment in described.segments] == [256, 4096]
    assert "DROM" in described.segments[0].memory and "IROM" in described.segments[1].memory
    other = "esp32c3" if chip != "esp32c3" else "esp32"
    with pytest.raises(InvalidFirmware, match=f"^Firmware is built for {chip}, but this group runs {other}$"):
        inspect_firmware(tmp_path / "firmware.bin", expected_chip=other)


def test_the_same_arguments_give_the_same_bytes() -> None:
    assert example_image("1.0.0", built=BUILT) == example_image("1.0.0", built=BUILT)
    assert example_image("1.0.0", built=BUILT) != example_image("1.0.1", built=BUILT)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("x" * 32, f"version is longer than 31 bytes: {'x' * 32!r}"),
        ("", "version must be printable text, not ''"),
        ("1.0\n", "version must be printable text, not '1.0\\n'"),
    ],
)
def test_a_version_that_does_not_fit_is_refused(version: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        example_image(version, built=BUILT)
    assert str(raised.value) == message


@pytest.mark.parametrize("chip", ["esp32", "esp32c3"])
def test_the_example_round_trips_through_the_receiver(client: TestClient, fleet: Fleet, chip: str) -> None:
    owner = fleet.owner()
    group = fleet.group(owner, chip=chip)
    data = example_image("1.0.0", chip=chip, built=BUILT)
    response = client.post(
        "/v1/ota/group",
        headers=owner.headers,
        data={"group": group.id, "token": group.token, "version": "1.0.0"},
        files={"firmware": ("firmware.bin", data, "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    assert response.json()["deployed"] is True
    download = client.get(f"/v1/ota/group/download/{group.id}{group.token}")
    assert download.status_code == 200
    assert download.content == data


def test_inspect_prints_what_the_receiver_validated(tmp_path: Path) -> None:
    data = write(tmp_path / "firmware.bin")
    result = CliRunner().invoke(firmware, ["inspect", str(tmp_path / "firmware.bin"), "--chip", "esp32"])
    assert result.exit_code == 0, result.output
    assert len(data) == 4432
    assert result.stdout == (
        "chip            esp32\n"
        "size            4432 bytes\n"
        f"sha256          {hashlib.sha256(data).hexdigest()}\n"
        f"md5             {hashlib.md5(data).hexdigest()}\n"
        "segments        2\n"
        "  0             0x3f400020      256 bytes  DROM\n"
        "  1             0x400d0128     4096 bytes  IROM\n"
        "project         otaship-example\n"
        "version         1.0.0\n"
        "idf_ver         otaship example\n"
        "built           Mar  7 2024 09:05:01\n"
        "secure_version  0\n"
    )


def test_inspect_names_the_key_of_each_signature_block(tmp_path: Path) -> None:
    from otaship.firmware.signing_keys import Scheme, load_public_key
    from tests.signing import private_pem, public_pem, sign

    data = write(tmp_path / "firmware.bin")
    keys = [private_pem(Scheme.RSA_3072), private_pem(Scheme.RSA_3072, "b")]
    (tmp_path / "signed.bin").write_bytes(sign(data, *keys))
    result = CliRunner().invoke(firmware, ["inspect", str(tmp_path / "signed.bin")])
    assert result.exit_code == 0, result.output
    digests = [load_public_key(public_pem(key)).digest for key in keys]
    assert result.stdout.endswith(
        "secure_version  0\n"
        "signatures      2 valid block(s) at 0x2000\n"
        f"  0             rsa-3072  key {digests[0]}\n"
        f"  1             rsa-3072  key {digests[1]}\n"
    )


@pytest.mark.parametrize(
    ("damage", "chip", "message"),
    [
        (
            lambda data: data[:100],
            None,
            "Firmware is not a valid ESP application image: truncated, the file ends at byte 100 "
            "but the image continues to byte 288",
        ),
        (
            lambda data: b"\x00" + data[1:],
            None,
            "Firmware is not a valid ESP application image: bad magic byte 0x00 (expected 0xE9)",
        ),
        (lambda data: data, "esp32s3", "Firmware is built for esp32, but this group runs esp32s3"),
    ],
)
def test_inspect_of_a_refused_image_prints_the_refusal_and_exits_1(
    tmp_path: Path, damage: Callable[[bytes], bytes], chip: str | None, message: str
) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(damage(example_image("1.0.0", built=BUILT)))
    args = ["inspect", str(bad), *(["--chip", chip] if chip else [])]
    result = CliRunner().invoke(firmware, args)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"otaship: error: {message}\n"


def test_example_writes_the_image_and_says_so_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "app.bin"
    result = CliRunner().invoke(
        firmware,
        ["example", "--version", "1.4.0", "--chip", "esp32s3", "-o", str(out)],
        env={"SOURCE_DATE_EPOCH": EPOCH},
    )
    assert result.exit_code == 0, result.output
    expected = example_image("1.4.0", chip="esp32s3", built=BUILT)
    assert out.read_bytes() == expected
    assert result.stdout == f"wrote {out}: esp32s3 application image, version 1.4.0, {len(expected)} bytes\n"
    assert [p.name for p in tmp_path.iterdir()] == ["app.bin"]


def test_example_usage_errors_exit_2_naming_the_option(tmp_path: Path) -> None:
    out = tmp_path / "app.bin"
    result = CliRunner().invoke(firmware, ["example", "--version", "v" * 40, "-o", str(out)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--version': version is longer than 31 bytes: {'v' * 40!r}"
    )
    assert not out.exists()
    missing = CliRunner().invoke(firmware, ["example", "-o", str(out)])
    assert missing.exit_code == 2
    assert missing.stderr.splitlines()[-1] == "Error: Missing option '--version'."


def test_example_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "nowhere" / "app.bin"
    result = CliRunner().invoke(firmware, ["example", "--version", "1.0.0", "-o", str(out)])
    assert result.exit_code == 1
    assert result.stderr == f"otaship: error: cannot write {out}: No such file or directory\n"


def test_the_full_cli_has_the_same_firmware_group(tmp_path: Path) -> None:
    out = tmp_path / "firmware.bin"
    made = CliRunner().invoke(
        otaship_cli, ["firmware", "example", "--version", "1.0.0", "-o", str(out)], prog_name="otaship"
    )
    assert made.exit_code == 0, made.output
    shown = CliRunner().invoke(otaship_cli, ["firmware", "inspect", str(out)], prog_name="otaship")
    assert shown.exit_code == 0, shown.output
    assert "version         1.0.0\n" in shown.stdout


def test_build_time_is_now_or_source_date_epoch() -> None:
    assert build_time({"SOURCE_DATE_EPOCH": EPOCH}) == BUILT
    before = datetime.now(UTC)
    assert before <= build_time({}) <= datetime.now(UTC)


def test_the_otaship_script_runs_firmware_without_the_receiver(tmp_path: Path) -> None:
    result = run_without_receiver(
        """
        from otaship.console import main
        status = main(sys.argv[1:])
        """,
        "firmware",
        "example",
        "--version",
        "1.0.0",
        "-o",
        "firmware.bin",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "firmware.bin").read_bytes()
    assert result.stdout == f"wrote firmware.bin: esp32 application image, version 1.0.0, {len(data)} bytes\n"
    assert inspect_firmware(tmp_path / "firmware.bin", expected_chip="esp32").app is not None

    inspected = run_without_receiver(
        """
        from otaship.console import main
        status = main(sys.argv[1:])
        """,
        "firmware",
        "inspect",
        "firmware.bin",
        "--chip",
        "esp32c3",
        cwd=tmp_path,
    )
    assert inspected.returncode == 1
    assert inspected.stdout == ""
    assert inspected.stderr == "otaship: error: Firmware is built for esp32, but this group runs esp32c3\n"


def test_the_installed_script_dispatches_firmware(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "otaship"
    result = subprocess.run(
        [str(script), "firmware", "example", "--version", "0.9.0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert inspect_firmware(tmp_path / "firmware.bin").app is not None
