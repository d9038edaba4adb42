"""The README's "Signed firmware" section, run as a reader pastes it.

Its ```bash blocks run verbatim and in order, in one bash with `set -euo
pipefail`, after the Quick start's two blocks that create the user and the
groups (the section continues the Quick start, and needs nothing else of it:
its deploys are plain ones), against `otaship serve` started as `make run`
starts it (tests/readme_run.py). The outcome is read back from the receiver:
the unsigned image was refused with the documented message, and the signed
ones were deployed, recorded as signed by the registered key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from otaship.firmware.signing_keys import load_public_key
from tests.readme_run import (
    BASH_BLOCK,
    marked_blocks,
    reader_env,
    run_blocks,
    scratch_folder,
    section,
    serving,
)

REPORT = 'echo "signed-report $OTASHIP_API_KEY $OTASHIP_GROUP $OTASHIP_GROUP_TOKEN"'
SCRIPT_TIMEOUT = 300

# The clean-up finds the processes the run left in its folder through /proc.
pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux's /proc")


def signed_blocks() -> list[str]:
    return BASH_BLOCK.findall(section("## Signed firmware"))


def prelude() -> list[str]:
    """The Quick start's blocks that make the user and the groups, which the section uses."""
    user, groups = marked_blocks("## Quick start", "quickstart")[:2]
    assert "otaship user create" in user and "otaship group create thermostats" in groups
    return [user, groups]


def test_the_section_generates_a_key_registers_it_signs_and_deploys() -> None:
    script = "\n".join(signed_blocks())
    for step in (
        "espsecure generate-signing-key --version 2",
        "otaship group key add",
        "espsecure sign-data --version 2",
        "otaship-deploy deploy --firmware firmware-1.3.0-signed.bin",
        'OTASHIP_SIGNING_KEY="$(cat signing-key.pem)"',
    ):
        assert step in script, step
    # Only the blocks run are ```bash; the rest of the section is output.
    assert "```sh" not in section("## Signed firmware")


@pytest.fixture
def readme_folder(tmp_path: Path) -> Iterator[Path]:
    yield from scratch_folder(tmp_path)


def test_the_signed_firmware_section_runs_as_pasted(readme_folder: Path) -> None:
    env = reader_env()
    with serving(readme_folder, env) as served:
        output = run_blocks(readme_folder, env, [*prelude(), *signed_blocks(), REPORT], SCRIPT_TIMEOUT)
        report = re.search(r"^signed-report (\S+) (\S+) (\S+)$", output, re.MULTILINE)
        assert report is not None, output
        api_key, group, group_token = report.groups()
        digest = load_public_key((readme_folder / "pub.pem").read_bytes()).digest

        # The unsigned image: refused with the documented message, and the exit code.
        refusal = (
            "error: Receiver rejected the deploy: the receiver answered 400: Firmware is not signed: this "
            "group accepts only images with a Secure Boot V2 signature block by one of its keys "
            f"({digest}); sign it with espsecure sign-data --version 2"
        )
        assert refusal in output.splitlines(), output
        assert "otaship-deploy exited with 2 (2: the receiver refused the image)" in output, output
        # The README shows the same line, with its own key's digest cut short.
        shown = [
            re.sub(r"\([0-9a-f]{8}…\)", "(<digest>)", line)
            for line in section("## Signed firmware").splitlines()
        ]
        assert refusal.replace(digest, "<digest>") in shown

        # The signed 1.3.0, then 1.3.1 signed by otaship-deploy itself, were deployed.
        assert f"notice: Deployed: 1.3.0 deployed to group {group}" in output, output
        assert f"notice: Deployed: 1.3.1 deployed to group {group}" in output, output
        assert output.count(f"signature blocks by key digest {digest}") == 2, output
        assert "BEGIN PRIVATE KEY" not in output
        headers = {"Authorization": f"Bearer {api_key}"}
        otas = httpx.get(f"{served.url}/v1/ota/group", headers=headers).json()["otas"]
        (ota,) = [o for o in otas if o["group"] == group]
        assert (ota["version"], ota["signed"], ota["signed_by"], ota["__v"]) == ("1.3.1", True, digest, 1)
        assert httpx.get(f"{served.url}/v1/ota/group/latest/{group}").json() == {"ver": "1.3.1"}
        # Devices download the signed file: the image, padded, and its signature sector.
        download = httpx.get(f"{served.url}/v1/ota/group/download/{group}{group_token}")
        assert download.status_code == 200, download.text
        assert download.content == (readme_folder / "firmware-1.3.1-signed.bin").read_bytes()
        assert len(download.content) % 4096 == 0
