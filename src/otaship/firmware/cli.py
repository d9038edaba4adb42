"""`otaship firmware`: make an example image, and see what the receiver would say of an image.

Needs only the core install (esptool and click): `otaship` dispatches here before
it looks for the receiver, and the receiver's command line mounts the same group.
Errors are one line on stderr and exit 1; a usage error exits 2.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from otaship.firmware.example import example_image
from otaship.firmware.image import (
    SECTOR_SIZE,
    SUPPORTED_CHIPS,
    FirmwareImage,
    InvalidFirmware,
    inspect_firmware,
)
from otaship.firmware.signatures import SignatureBlock

EXIT_OK = 0
EXIT_ERROR = 1
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "show_default": True}


class FirmwareError(click.ClickException):
    """One line for the user on stderr; exit 1."""

    exit_code = EXIT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"otaship: error: {self.message}", file=file, err=file is None)


@click.group(
    name="firmware",
    context_settings=CONTEXT_SETTINGS,
    short_help="make and check application images (needs no receiver)",
    help="Make and check ESP32-family application images (needs no receiver).",
)
def firmware() -> None:
    pass


@firmware.command(
    "example",
    short_help="write a small, valid application image to deploy",
    help="Write a small application image that the receiver accepts: real headers, checksum, "
    "SHA-256 and app descriptor (project otaship-example, this version, the build time), "
    "built with esptool alone. It is for trying the receiver; it does nothing on a device.",
)
@click.option("--version", "version", required=True, metavar="X", help="the version in the app descriptor")
@click.option("--chip", type=click.Choice(SUPPORTED_CHIPS), default="esp32", help="the chip to build for")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("firmware.bin"),
    help="where to write the image",
)
def example(version: str, chip: str, output: Path) -> None:
    try:
        data = example_image(version, chip=chip, built=build_time(os.environ))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--version'") from None
    try:
        _write_atomically(output, data)
    except OSError as exc:
        raise FirmwareError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output}: {chip} application image, version {version}, {len(data)} bytes")


@firmware.command(
    "inspect",
    short_help="validate an image as the receiver does and describe it",
    help="Validate an application image as the receiver does on upload and print what it found: "
    "chip, size, SHA-256, MD5, segments and the app descriptor. An image the receiver would "
    "refuse prints the receiver's message and exits 1.",
)
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--chip",
    type=click.Choice(SUPPORTED_CHIPS),
    show_default="any",
    help="the chip the group runs; an image for another chip is refused",
)
def inspect(image: Path, chip: str | None) -> None:
    try:
        described = inspect_firmware(image, expected_chip=chip)
    except InvalidFirmware as exc:
        raise FirmwareError(str(exc)) from None
    except OSError as exc:
        raise FirmwareError(f"cannot read {image}: {exc.strerror or exc}") from None
    click.echo(describe(described, signature_blocks(image, described)), nl=False)


def signature_blocks(path: Path, image: FirmwareImage) -> list[SignatureBlock]:
    """The valid Secure Boot V2 signature blocks that end the image, if any."""
    from otaship.firmware.signatures import read_sector

    if image.signature_sector is None:
        return []
    with path.open("rb") as file:
        file.seek(image.signature_sector)
        return list(read_sector(file.read(SECTOR_SIZE)).blocks)


def describe(image: FirmwareImage, signatures: Sequence[SignatureBlock] = ()) -> str:
    """The report `firmware inspect` prints, one `name value` line each."""
    lines = [
        ("chip", image.chip),
        ("size", f"{image.size} bytes"),
        ("sha256", image.sha256),
        ("md5", image.md5),
        ("segments", str(len(image.segments))),
    ]
    lines += [
        (f"  {index}", f"0x{segment.addr:08x} {segment.length:>8} bytes  {'/'.join(segment.memory) or '-'}")
        for index, segment in enumerate(image.segments)
    ]
    if image.app is None:
        lines.append(("app", "no app descriptor"))
    else:
        app = image.app
        lines += [
            ("project", app.project_name),
            ("version", app.version),
            ("idf_ver", app.idf_ver),
            ("built", f"{app.date} {app.time}"),
            ("secure_version", str(app.secure_version)),
        ]
    if image.signature_sector is not None:
        lines.append(("signatures", f"{len(signatures)} valid block(s) at 0x{image.signature_sector:x}"))
        lines += [(f"  {block.index}", f"{block.scheme}  key {block.key_digest}") for block in signatures]
    return "".join(f"{name:<16}{value}\n" for name, value in lines)


def build_time(environ: Mapping[str, str]) -> datetime:
    """Now, or SOURCE_DATE_EPOCH when set, as reproducible builds expect (UTC either way)."""
    epoch = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        if not epoch.isdigit():
            raise FirmwareError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970, not {epoch!r}")
        return datetime.fromtimestamp(int(epoch), UTC)
    return datetime.now(UTC)


def _write_atomically(path: Path, data: bytes) -> None:
    # A file next to the target, renamed over it: never a half-written image.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private; the image is not, so it gets the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run `otaship firmware ARGV`; the exit code it would end the process with."""
    try:
        firmware.main(args=None if argv is None else list(argv), prog_name="otaship firmware")
    except SystemExit as exc:
        # Click ends every run, even a successful one, with SystemExit.
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
