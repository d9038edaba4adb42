"""A reader that leaves early (`| head`): every command line ends without a traceback.

These run real processes: what is tested is what Python does with a stdout
whose reader has gone, at the write and at the exit's flush.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from otaship.closed_pipe import EXIT_CLOSED_PIPE
from tests.receiver_process import migrated_env, otaship

ENTRY = {
    "otaship": "import sys; from otaship.console import main; sys.exit(main())",
    "otaship-deploy": "import sys; from otaship.action.__main__ import main; sys.exit(main())",
}


def run_into_closed_pipe(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `python -c code args` with a stdout whose reading end is already closed."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            stdout=write,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    return done.returncode, done.stderr


def test_a_write_that_fails_at_the_exit_flush_is_quiet() -> None:
    # Less than the buffer: print succeeds, and only Python's flush at exit
    # would meet the closed pipe, after every handler of click's has returned.
    code = (
        "import sys; from otaship.closed_pipe import quiet_on_closed_pipe\n"
        "sys.exit(quiet_on_closed_pipe(lambda: print('x' * 100) or 0))"
    )
    assert run_into_closed_pipe(code) == (EXIT_CLOSED_PIPE, "")
    # The same without it: the noise this module exists to prevent.
    _, stderr = run_into_closed_pipe("print('x' * 100)")
    assert "BrokenPipeError" in stderr


def test_a_write_that_fails_at_once_is_quiet() -> None:
    code = (
        "import sys; from otaship.closed_pipe import quiet_on_closed_pipe\n"
        "sys.exit(quiet_on_closed_pipe(lambda: print('x' * 1_000_000) or 0))"
    )
    assert run_into_closed_pipe(code) == (EXIT_CLOSED_PIPE, "")


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """A database with rows to list, and an image to inspect."""
    data = tmp_path_factory.mktemp("closed-pipe")
    env = migrated_env(data / "data")
    for n in range(3):
        otaship(env, "user", "create", f"user{n}@example.com")
    image = data / "firmware.bin"
    otaship(env, "firmware", "example", "--version", "1.0.0", "-o", str(image))
    return env, image


@pytest.mark.parametrize(
    ("entry", "args"),
    [
        ("otaship", ("user", "list")),
        ("otaship", ("device", "list")),
        ("otaship", ("--help",)),
        ("otaship", ("firmware", "inspect", "{image}")),
        ("otaship-deploy", ("--help",)),
        ("otaship-deploy", ("version", "--version", "v1.2.3")),
    ],
)
def test_every_command_line_ends_quietly_when_its_reader_leaves(
    filled: tuple[dict[str, str], Path], entry: str, args: tuple[str, ...]
) -> None:
    env, image = filled
    argv = [arg.format(image=image) for arg in args]
    assert run_into_closed_pipe(ENTRY[entry], *argv, env=env) == (EXIT_CLOSED_PIPE, "")
