from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from otaship.action.build import (
    BuildConfigError,
    ProjectConfig,
    ProjectEnv,
    build_dir,
    find_firmware,
    parse_project_config,
    select_env,
)


def config_json(*sections: tuple[str, list[tuple[str, object]]]) -> str:
    return json.dumps([[name, [list(item) for item in items]] for name, items in sections])


def test_pio_project_config_output_is_parsed_into_envs() -> None:
    text = config_json(
        ("platformio", [("default_envs", ["esp32dev"]), ("build_dir", "/tmp/b")]),
        ("env", [("framework", "arduino")]),
        ("env:esp32dev", [("platform", "espressif32"), ("board", "esp32dev")]),
        ("env:s3", [("board", "esp32-s3-devkitc-1"), ("lib_deps", ["a", "b"])]),
    )
    config = parse_project_config(text)
    assert config.env_names == ["esp32dev", "s3"]
    assert config.default_envs == ("esp32dev",)
    assert config.env("s3").options["lib_deps"] == ["a", "b"]
    assert config.platformio["build_dir"] == "/tmp/b"


@pytest.mark.parametrize("value", ["a, b", "a\nb", ["a", "b"], "a,\n b,"])
def test_default_envs_may_be_text_or_a_list(value: object) -> None:
    config = parse_project_config(
        config_json(("platformio", [("default_envs", value)]), ("env:a", []), ("env:b", []))
    )
    assert config.default_envs == ("a", "b")


@pytest.mark.parametrize("text", ["", "not json", "{}", "[1, 2]", '[["env:a", 5]]'])
def test_unreadable_config_output_is_a_config_error(text: str) -> None:
    with pytest.raises(BuildConfigError, match="pio project config"):
        parse_project_config(text)


def project(*envs: str, default: tuple[str, ...] = ()) -> ProjectConfig:
    return ProjectConfig(envs=tuple(ProjectEnv(name) for name in envs), default_envs=default)


@pytest.mark.parametrize(
    ("config", "requested", "chosen"),
    [
        (project("a"), None, "a"),
        (project("a", "b", default=("b",)), None, "b"),
        (project("a", "b", default=("a",)), "b", "b"),
        (project("a", "b"), "a", "a"),
        (project("a", default=("a",)), None, "a"),
    ],
)
def test_env_selection(config: ProjectConfig, requested: str | None, chosen: str) -> None:
    assert select_env(config, requested).name == chosen


@pytest.mark.parametrize(
    ("config", "requested", "message"),
    [
        (project("a", "b"), None, r"several envs \(a, b\).*environment input.*job matrix"),
        (
            project("a", "b", "c", default=("a", "c")),
            None,
            r"default_envs lists several envs \(a, c\).*environment input",
        ),
        (project("a", "b"), "c", r"'c' is not in platformio.ini; its envs are: a, b"),
        (project(), None, "no \\[env:NAME\\] section"),
        (project(), "a", "its envs are: none"),
        (project("a", "b", default=("z",)), None, r"default_envs names 'z'.*a, b"),
    ],
)
def test_env_selection_errors_list_the_envs(
    config: ProjectConfig, requested: str | None, message: str
) -> None:
    with pytest.raises(BuildConfigError, match=message):
        select_env(config, requested)


def test_build_dir_follows_platformio_precedence(tmp_path: Path) -> None:
    empty = project("a")
    with_option = ProjectConfig(envs=(), platformio={"build_dir": "out/build"})
    with_workspace = ProjectConfig(envs=(), platformio={"workspace_dir": "/ws"})
    assert build_dir(tmp_path, empty, {}) == tmp_path / ".pio" / "build"
    assert build_dir(tmp_path, with_option, {}) == tmp_path / "out" / "build"
    assert build_dir(tmp_path, with_option, {"PLATFORMIO_BUILD_DIR": "/abs/b"}) == Path("/abs/b")
    assert build_dir(tmp_path, empty, {"PLATFORMIO_BUILD_DIR": "rel"}) == tmp_path / "rel"
    assert build_dir(tmp_path, with_workspace, {}) == Path("/ws/build")
    assert build_dir(tmp_path, empty, {"PLATFORMIO_WORKSPACE_DIR": "/w2"}) == Path("/w2/build")
    assert build_dir(tmp_path, empty, {"PLATFORMIO_BUILD_DIR": "~/b"}) == Path(os.path.expanduser("~/b"))


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_the_default_firmware_bin_is_found(tmp_path: Path) -> None:
    touch(tmp_path, "bootloader.bin", "partitions.bin", "firmware.elf", "firmware.bin", "firmware.map")
    assert find_firmware(tmp_path, {}) == tmp_path / "firmware.bin"


def test_a_custom_progname_is_found_beside_its_elf(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "bootloader.bin",
        "bootloader.elf",
        "partitions.bin",
        "littlefs.bin",
        "app_1.2.3.elf",
        "app_1.2.3.bin",
    )
    assert find_firmware(tmp_path, {}) == tmp_path / "app_1.2.3.bin"


def test_of_several_images_the_newest_is_the_one_just_built(tmp_path: Path) -> None:
    touch(tmp_path, "firmware.elf", "firmware.bin", "custom.elf", "custom.bin")
    os.utime(tmp_path / "firmware.bin", ns=(1_000_000_000, 1_000_000_000))
    assert find_firmware(tmp_path, {}) == tmp_path / "custom.bin"


def test_custom_prog_name_option_names_the_image(tmp_path: Path) -> None:
    touch(tmp_path, "firmware.elf", "firmware.bin", "named.bin")
    assert find_firmware(tmp_path, {"custom_prog_name": "named"}) == tmp_path / "named.bin"
    with pytest.raises(BuildConfigError, match="custom_prog_name is 'other'"):
        find_firmware(tmp_path, {"custom_prog_name": "other"})


def test_firmware_bin_without_elf_is_still_found(tmp_path: Path) -> None:
    touch(tmp_path, "firmware.bin", "partitions.bin")
    assert find_firmware(tmp_path, {}) == tmp_path / "firmware.bin"


def test_no_app_image_fails_listing_what_is_there(tmp_path: Path) -> None:
    touch(tmp_path, "bootloader.bin", "partitions.bin", "other.bin")
    with pytest.raises(
        BuildConfigError,
        match=r"no app image in .*found: bootloader.bin, other.bin, partitions.bin.*firmware input",
    ):
        find_firmware(tmp_path, {})


def test_a_missing_build_folder_points_at_the_build_dir_settings(tmp_path: Path) -> None:
    with pytest.raises(BuildConfigError, match=r"does not exist.*PLATFORMIO_BUILD_DIR"):
        find_firmware(tmp_path / "nope", {})
