"""Building a PlatformIO project and finding the app image it produced.

The decisions (which env, which folder, which file) are pure functions over
`pio project config --json-output` and the environment; only `read_project_config`
and `run_build` run PlatformIO.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from otaship.action.workflow import Workflow

# Images that sit next to the app in an ESP32 build folder but are not the app.
NOT_APP_IMAGES = frozenset(
    {"bootloader", "partitions", "boot_app0", "ota_data_initial", "spiffs", "littlefs", "fatfs"}
)
# How many lines of a failed build go into the error annotation; the rest is in the log.
FAILED_BUILD_TAIL = 15


class BuildConfigError(ValueError):
    """The project or the inputs are wrong; the message says how to fix them."""


class BuildFailed(RuntimeError):
    """PlatformIO ran and failed."""


@dataclass(frozen=True)
class ProjectEnv:
    name: str
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ProjectConfig:
    envs: tuple[ProjectEnv, ...]
    default_envs: tuple[str, ...] = ()
    platformio: Mapping[str, object] = field(default_factory=dict)

    def env(self, name: str) -> ProjectEnv:
        for env in self.envs:
            if env.name == name:
                return env
        raise KeyError(name)

    @property
    def env_names(self) -> list[str]:
        return [env.name for env in self.envs]


def split_multi_value(value: object) -> list[str]:
    """PlatformIO's multi-value options: a JSON list, or text split on commas and newlines."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).replace(",", "\n").splitlines()
    return [str(item).strip() for item in items if str(item).strip()]


def parse_project_config(text: str) -> ProjectConfig:
    """Parse `pio project config --json-output`: `[[section, [[key, value], …]], …]`."""
    try:
        sections = json.loads(text)
        if not isinstance(sections, list):
            raise TypeError("expected a list of sections")
        parsed = [(str(name), {str(key): value for key, value in items}) for name, items in sections]
    except (ValueError, TypeError) as exc:
        raise BuildConfigError(f"could not read `pio project config --json-output`: {exc}") from exc
    envs: list[ProjectEnv] = []
    platformio: dict[str, object] = {}
    for name, options in parsed:
        if name.startswith("env:"):
            envs.append(ProjectEnv(name[len("env:") :], options))
        elif name == "platformio":
            platformio = options
    return ProjectConfig(
        envs=tuple(envs),
        default_envs=tuple(split_multi_value(platformio.get("default_envs"))),
        platformio=platformio,
    )


def select_env(config: ProjectConfig, requested: str | None) -> ProjectEnv:
    """The one env to build: the requested one, the single default, or the only one.

    One group runs one image, so several candidates are an error rather than a
    guess; a job matrix deploys several envs to several groups.
    """
    names = config.env_names
    listed = ", ".join(names) if names else "none"
    if requested:
        if requested not in names:
            raise BuildConfigError(
                f"environment {requested!r} is not in platformio.ini; its envs are: {listed}"
            )
        return config.env(requested)
    if not names:
        raise BuildConfigError("platformio.ini defines no [env:NAME] section, so there is nothing to build")
    if len(config.default_envs) == 1:
        default = config.default_envs[0]
        if default not in names:
            raise BuildConfigError(
                f"default_envs names {default!r}, which is not an env; the envs are: {listed}"
            )
        return config.env(default)
    if len(config.default_envs) > 1:
        raise BuildConfigError(
            f"default_envs lists several envs ({', '.join(config.default_envs)}): set the environment input "
            "to the one to deploy (one group runs one image; use a job matrix for several)"
        )
    if len(names) == 1:
        return config.envs[0]
    raise BuildConfigError(
        f"platformio.ini has several envs ({listed}) and no single default_envs: set the environment input "
        "to the one to deploy (one group runs one image; use a job matrix for several)"
    )


def _resolve(path_text: str, project_dir: Path) -> Path:
    path = Path(os.path.expanduser(path_text))
    return path if path.is_absolute() else project_dir / path


def build_dir(project_dir: Path, config: ProjectConfig, environ: Mapping[str, str]) -> Path:
    """Where PlatformIO puts env build folders, with its own precedence.

    Environment variables override platformio.ini, and `build_dir` defaults to
    `<workspace_dir>/build`, which defaults to `.pio`.
    """
    explicit = environ.get("PLATFORMIO_BUILD_DIR") or str(config.platformio.get("build_dir") or "")
    if explicit:
        return _resolve(explicit, project_dir)
    workspace = environ.get("PLATFORMIO_WORKSPACE_DIR") or str(config.platformio.get("workspace_dir") or "")
    return _resolve(workspace or ".pio", project_dir) / "build"


def find_firmware(env_build_dir: Path, options: Mapping[str, object]) -> Path:
    """The app image in an env's build folder.

    The image is `${PROGNAME}.bin`, and PROGNAME is often changed by an extra
    script, so `firmware.bin` cannot be assumed. The linker always leaves
    `${PROGNAME}.elf` beside it, which tells the app apart from the bootloader,
    the partition table and filesystem images. `custom_prog_name` in the env,
    the option PlatformIO's own example reads, names it outright.
    """
    if not env_build_dir.is_dir():
        raise BuildConfigError(
            f"the build folder {env_build_dir} does not exist: did the build run, and do PLATFORMIO_BUILD_DIR "
            "and build_dir point where PlatformIO writes?"
        )
    custom = str(options.get("custom_prog_name") or "").strip()
    if custom:
        image = env_build_dir / f"{custom}.bin"
        if image.is_file():
            return image
        raise BuildConfigError(f"custom_prog_name is {custom!r} but {image} does not exist")
    paired = [
        elf.with_suffix(".bin")
        for elf in sorted(env_build_dir.glob("*.elf"))
        if elf.stem not in NOT_APP_IMAGES and elf.with_suffix(".bin").is_file()
    ]
    if paired:
        # Several pairs means a stale image from an earlier PROGNAME: take what was just built.
        return max(paired, key=lambda path: (path.stat().st_mtime_ns, path.name))
    default = env_build_dir / "firmware.bin"
    if default.is_file():
        return default
    found = sorted(path.name for path in env_build_dir.glob("*.bin"))
    raise BuildConfigError(
        f"no app image in {env_build_dir} (found: {', '.join(found) or 'no .bin files'}); "
        "expected <PROGNAME>.bin beside <PROGNAME>.elf. Set the firmware input to the image's path"
    )


def _env(environ: Mapping[str, str] | None) -> dict[str, str] | None:
    # PlatformIO sees the same variables (PLATFORMIO_BUILD_DIR, PATH) that the decisions above read.
    return None if environ is None else dict(environ)


def read_project_config(project_dir: Path, environ: Mapping[str, str] | None = None) -> ProjectConfig:
    command = ["pio", "project", "config", "-d", str(project_dir), "--json-output"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=_env(environ))
    except FileNotFoundError:
        raise BuildConfigError(
            "`pio` is not on PATH: install PlatformIO (pip install platformio), or set the firmware input "
            "to a prebuilt image"
        ) from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise BuildConfigError(f"`pio project config` failed in {project_dir}: {detail}")
    return parse_project_config(result.stdout)


def run_build(
    project_dir: Path, env: str, workflow: Workflow, environ: Mapping[str, str] | None = None
) -> None:
    """`pio run -e ENV`, its log folded in a group; BuildFailed with the log's tail."""
    command: Sequence[str] = ["pio", "run", "-d", str(project_dir), "-e", env]
    tail: collections.deque[str] = collections.deque(maxlen=FAILED_BUILD_TAIL)
    with workflow.group(f"PlatformIO build ({env})"):
        workflow.info("$ " + " ".join(command))
        try:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                env=_env(environ),
            )
        except FileNotFoundError:
            raise BuildConfigError(
                "`pio` is not on PATH: install PlatformIO (pip install platformio)"
            ) from None
        assert process.stdout is not None
        with process:
            for line in process.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                workflow.info(line)
        code = process.wait()
    if code != 0:
        raise BuildFailed(
            f"`pio run -e {env}` failed with exit code {code}; the full log is in the folded group above. "
            "Last lines:\n" + "\n".join(tail)
        )
