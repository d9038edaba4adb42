"""A stand-in for PlatformIO's `pio`, for tests of the action.

PlatformIO cannot download toolchains here (no network beyond package
registries), so it cannot compile. This answers the two commands the action
runs, from the project's real platformio.ini:

- `pio project config -d DIR --json-output` prints the sections the way
  PlatformIO does: `[[section, [[key, value], ...]], ...]`, multi-value options
  as lists;
- `pio run -d DIR -e ENV` prints a build log and writes a REAL ESP32 app image
  (made by esptool through tests/esp_image.py) to `<build_dir>/<ENV>/<PROGNAME>.bin`,
  beside a `<PROGNAME>.elf`, a bootloader and a partition table, as a real build does.

Knobs, as env options in platformio.ini (PlatformIO allows `custom_*` options):
`custom_app_version` (the app descriptor's version, default 1.0.0),
`custom_image_seed` (changes the bytes), `custom_fail` (the build fails). The
environment variable FAKE_PIO_PROGNAME plays an extra script's
`env.Replace(PROGNAME=...)`. Each call is appended to FAKE_PIO_LOG when set.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MULTI_VALUE = {"default_envs", "lib_deps", "build_flags", "extra_scripts"}


def read_ini(project_dir: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    ini = project_dir / "platformio.ini"
    if not ini.is_file():
        print(
            f"Error: Not a PlatformIO project. `platformio.ini` file has not been found in {project_dir}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    parser.read(ini)
    return parser


def value(key: str, text: str) -> object:
    if key in MULTI_VALUE:
        return [item.strip() for item in text.replace(",", "\n").splitlines() if item.strip()]
    return text.strip()


def project_config(project_dir: Path) -> int:
    ini = read_ini(project_dir)
    sections = [
        [name, [[key, value(key, text)] for key, text in ini.items(name, raw=True)]]
        for name in ini.sections()
    ]
    print(json.dumps(sections))
    return 0


def run(project_dir: Path, env_name: str) -> int:
    ini = read_ini(project_dir)
    section = f"env:{env_name}"
    if not ini.has_section(section):
        print(f"Error: Unknown environment names '{env_name}'.", file=sys.stderr)
        return 1
    options = dict(ini.items(section, raw=True))
    print(
        f"Processing {env_name} (platform: {options.get('platform', '?')}; board: {options.get('board', '?')})"
    )
    print("-" * 40)
    if options.get("custom_fail"):
        print("src/main.cpp:3:1: error: 'oops' was not declared in this scope")
        print(f"*** [.pio/build/{env_name}/src/main.cpp.o] Error 1")
        print("========== [FAILED] Took 1.00 seconds ==========")
        return 1
    build = os.environ.get("PLATFORMIO_BUILD_DIR") or (
        ini.get("platformio", "build_dir", fallback="") if ini.has_section("platformio") else ""
    )
    base = Path(build) if build else Path(".pio/build")
    out = (base if base.is_absolute() else project_dir / base) / env_name
    out.mkdir(parents=True, exist_ok=True)
    progname = os.environ.get("FAKE_PIO_PROGNAME") or options.get("custom_prog_name") or "firmware"

    sys.path.insert(0, str(REPO))
    from tests.esp_image import build_image

    image = build_image(
        options.get("custom_app_version", "1.0.0"), seed=int(options.get("custom_image_seed", "0"))
    )
    (out / f"{progname}.elf").write_bytes(b"\x7fELF stand-in")
    (out / "bootloader.bin").write_bytes(b"\xe9 stand-in bootloader")
    (out / "partitions.bin").write_bytes(b"\xaa\x50 stand-in partitions")
    (out / f"{progname}.bin").write_bytes(image)
    print(f"Building {out / (progname + '.bin')}")
    print("========== [SUCCESS] Took 1.00 seconds ==========")
    return 0


def main() -> int:
    log = os.environ.get("FAKE_PIO_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(sys.argv[1:]) + "\n")
    parser = argparse.ArgumentParser(prog="pio")
    commands = parser.add_subparsers(dest="command", required=True)
    project = commands.add_parser("project")
    project.add_argument("subcommand", choices=["config"])
    project.add_argument("-d", "--project-dir", default=".")
    project.add_argument("--json-output", action="store_true", required=True)
    run_command = commands.add_parser("run")
    run_command.add_argument("-d", "--project-dir", default=".")
    run_command.add_argument("-e", "--environment", required=True)
    args = parser.parse_args()
    project_dir = Path(args.project_dir).resolve()
    if args.command == "project":
        return project_config(project_dir)
    return run(project_dir, args.environment)


if __name__ == "__main__":
    sys.exit(main())
