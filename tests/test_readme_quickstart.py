"""The README's Quick start, run as a newcomer pastes it, so that it cannot drift from the code.

The blocks it runs are the ```bash blocks between `<!-- quickstart: begin -->` and
`<!-- quickstart: end -->` in README.md, run as `tests/readme_run.py` says: verbatim
and in order, in one bash with `set -euo pipefail`, in a scratch folder, against
`otaship serve` started there as `make run` starts it, with free ports exported as
the README tells a reader with taken ports to.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.readme_run import (
    README,
    ROOT,
    Served,
    marked_blocks,
    outside,
    processes_in,
    reader_env,
    run_blocks,
    scratch_folder,
    serving,
    wait_until,
)

# The harness's own line after the README's blocks: what the assertions need to know.
REPORT = 'echo "quickstart-report $OTASHIP_API_KEY $OTASHIP_GROUP $OTASHIP_CANARY"'
SCRIPT_TIMEOUT = 300

# The clean-up finds the processes the Quick start left in its folder through /proc.
pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux's /proc")


def quickstart_blocks() -> list[str]:
    return marked_blocks("## Quick start", "quickstart")


def test_the_blocks_are_found_and_make_run_is_otaship_serve() -> None:
    blocks = quickstart_blocks()
    assert len(blocks) >= 6
    # Whatever the blocks use comes from an earlier block: none names a port.
    assert not re.search(r"8080|1883|1884", "".join(blocks))
    before = README.split("## Quick start", 1)[1].split("<!-- quickstart: begin -->", 1)[0]
    assert "```sh\nmake run\n```" in before
    recipe = re.search(r"^run: .*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None and recipe.group(1) == "$(BIN)/otaship serve"


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield from scratch_folder(tmp_path)


def test_the_quick_start_runs_as_pasted(folder: Path) -> None:
    env = reader_env()
    with serving(folder, env) as served:
        run_and_check(folder, env, served)


def run_and_check(folder: Path, env: dict[str, str], served: Served) -> None:
    receiver = served.url
    output = run_blocks(folder, env, [*quickstart_blocks(), REPORT], SCRIPT_TIMEOUT)

    # The canary rollout completed, and the failing one halted, saying why.
    assert re.search(r"rollout \w+: complete, fleet stage 23/23 succeeded", output), output
    assert "otaship-deploy exited with 3 (3: the rollout halted)" in output, output
    report = re.search(r"^quickstart-report (\S+) (\S+) (\S+)$", output, re.MULTILINE)
    assert report is not None, output
    api_key, group, canary = report.groups()
    headers = {"Authorization": f"Bearer {api_key}"}
    listed = httpx.get(f"{receiver}/v1/rollouts", params={"group": group}, headers=headers).json()
    rollouts = {r["version"]: r for r in listed["rollouts"]}
    assert set(rollouts) == {"1.1.0", "1.2.0"}
    assert rollouts["1.1.0"]["state"] == "complete"
    assert rollouts["1.2.0"]["state"] == "halted"
    # The clock halts at its first tick after a failure: by then one to three had failed.
    assert re.fullmatch(
        r"[123] canary device\(s\) failed; error_threshold tolerates 0", rollouts["1.2.0"]["reason"]
    )
    # The fleet kept 1.1.0; the canary was told 1.2.0 and came back on 1.1.0.
    assert httpx.get(f"{receiver}/v1/ota/group/latest/{group}").json() == {"ver": "1.1.0"}
    assert httpx.get(f"{receiver}/v1/ota/group/latest/{canary}").json() == {"ver": "1.2.0"}

    # The last block stopped the simulators; each wrote its summary as it went.
    wait_until(lambda: outside(served.server.pid, processes_in(folder)) == [], 30, "the simulators to stop")
    assert re.search(r"^running versions +1\.1\.0: 20$", (folder / "fleet.log").read_text(), re.MULTILINE)
    canary_log = (folder / "canary.log").read_text()
    assert re.search(r"^failed \(back on old version\) +3$", canary_log, re.MULTILINE), canary_log
