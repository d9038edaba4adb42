"""`pip install otaship` is the action alone: it runs without any receiver package.

Each test runs a fresh interpreter in which an import hook refuses the
receiver's third-party packages, as if only the core dependencies were installed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

from otaship.action import exit_codes
from tests.action_runner import parse_file_commands
from tests.esp_image import write_image

# The receiver extra's packages, by the names they are imported as.
RECEIVER_PACKAGES = (
    "starlette",
    "uvicorn",
    "granian",
    "sqlmodel",
    "sqlalchemy",
    "alembic",
    "multipart",
    "python_multipart",
    "paho",
    "amqtt",
    "google.cloud",
    "psycopg",
    "prometheus_client",
    "limits",
    "sniffio",
)

WITHOUT_RECEIVER = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    BLOCKED = {RECEIVER_PACKAGES!r}

    def blocked(name):
        return any(name == package or name.startswith(package + ".") for package in BLOCKED)

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    assert not [name for name in sys.modules if blocked(name)], "imported before the hook"
    sys.meta_path.insert(0, NotInstalled())
    """
)

# After the code, which leaves its exit code in `status`: nothing of the receiver was imported.
NOTHING_LEAKED = textwrap.dedent(
    """
    leaked = sorted(name for name in sys.modules if name.startswith("otaship.receiver") or blocked(name))
    assert not leaked, leaked
    sys.exit(status)
    """
)


def run_without_receiver(
    code: str, *args: str, cwd: Path | None = None, check_imports: bool = True
) -> subprocess.CompletedProcess[str]:
    script = WITHOUT_RECEIVER + textwrap.dedent(code) + (NOTHING_LEAKED if check_imports else "")
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_the_hook_refuses_a_receiver_package() -> None:
    result = run_without_receiver("import starlette", check_imports=False)
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'starlette'" in result.stderr


def test_otaship_deploy_help_needs_no_receiver_package() -> None:
    result = run_without_receiver(
        """
        from otaship.action.__main__ import main
        status = main(sys.argv[1:])
        """,
        "--help",
    )
    assert result.returncode == 0, result.stderr
    assert "deploy" in result.stdout and "follow" in result.stdout
    assert result.stderr == ""


def test_otaship_deploy_build_checks_an_image_without_the_receiver(tmp_path: Path) -> None:
    image = write_image(tmp_path / "firmware.bin", "1.2.3")
    outputs = tmp_path / "outputs"
    outputs.write_text("")
    result = run_without_receiver(
        f"""
        from otaship.action.__main__ import main
        status = main(sys.argv[1:], {{"GITHUB_OUTPUT": {str(outputs)!r}}})
        """,
        "build",
        "--firmware",
        str(image),
        "--version",
        "v1.2.3",
        cwd=tmp_path,
    )
    assert result.returncode == exit_codes.OK, result.stdout + result.stderr
    assert parse_file_commands(outputs.read_text()) == {
        "version": "1.2.3",
        "firmware-path": str(image),
        "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
        "size": str(image.stat().st_size),
    }


def test_the_firmware_check_needs_no_receiver_package(tmp_path: Path) -> None:
    image = write_image(tmp_path / "firmware.bin", "2.0.0")
    result = run_without_receiver(
        """
        from otaship.firmware.image import inspect_firmware
        described = inspect_firmware(sys.argv[1], expected_chip="esp32")
        print(described.chip, described.size, described.sha256, described.app.version)
        status = 0
        """,
        str(image),
    )
    assert result.returncode == 0, result.stderr
    data = image.read_bytes()
    assert result.stdout == f"esp32 {len(data)} {hashlib.sha256(data).hexdigest()} 2.0.0\n"


def test_otaship_without_the_receiver_says_how_to_install_it() -> None:
    result = run_without_receiver(
        """
        from otaship.console import main
        sys.exit(main(sys.argv[1:]))
        """,
        "user",
        "list",
        check_imports=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "otaship: the receiver is not installed (no module sqlalchemy): pip install 'otaship[receiver]'\n"
    )
