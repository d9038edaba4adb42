"""The README's Quick start, run as a newcomer pastes it, so that it cannot drift from the code.

The blocks it runs are the ```bash blocks between `<!-- quickstart: begin -->` and
`<!-- quickstart: end -->` in README.md, verbatim and in order, in one bash with
`set -euo pipefail` (stricter than a terminal: a variable no earlier block set, or
a failing command, ends the run). They run in a scratch folder where `.venv` is
this Python's environment, against `otaship serve` started there as `make run`
starts it (the Makefile's recipe is checked), with the embedded defaults: SQLite
and objects under ./otaship-data, and the embedded broker. The only setting given
is the one the README tells a reader with taken ports to export in both
terminals: OTASHIP_PORT and OTASHIP_MQTT_URL, free ports here, since 8080 and
1883 may be in use on a shared machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BEGIN, END = "<!-- quickstart: begin -->", "<!-- quickstart: end -->"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# The harness's own line after the README's blocks: what the assertions need to know.
REPORT = 'echo "quickstart-report $OTASHIP_API_KEY $OTASHIP_GROUP $OTASHIP_CANARY"'
SCRIPT_TIMEOUT = 300

# The clean-up finds the processes the Quick start left in its folder through /proc.
pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux's /proc")


def quickstart_blocks() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    assert section.count(BEGIN) == 1 and section.count(END) == 1, "the Quick start's markers"
    return BASH_BLOCK.findall(section.split(BEGIN, 1)[1].split(END, 1)[0])


def test_the_blocks_are_found_and_make_run_is_otaship_serve() -> None:
    blocks = quickstart_blocks()
    assert len(blocks) >= 6
    # Whatever the blocks use comes from an earlier block: none names a port.
    assert not re.search(r"8080|1883|1884", "".join(blocks))
    before = README.split("## Quick start", 1)[1].split(BEGIN, 1)[0]
    assert "```sh\nmake run\n```" in before
    recipe = re.search(r"^run: .*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None and recipe.group(1) == "$(BIN)/otaship serve"


def processes_in(folder: Path) -> list[int]:
    """Our processes working in `folder` (the server, detached simulators): /proc, Linux only."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == folder:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])


def outside(server: int, pids: list[int]) -> list[int]:
    """`pids` without the server and its own processes (granian's workers)."""
    kept = []
    for pid in pids:
        ancestor = pid
        while ancestor > 1 and ancestor != server:
            ancestor = _parent(ancestor)
        if ancestor != server:
            kept.append(pid)
    return kept


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A clone's folder after `make install`: `.venv` is this test's Python environment."""
    work = tmp_path.resolve()
    venv = Path(sys.prefix)
    for script in ("otaship", "otaship-deploy"):
        assert (venv / "bin" / script).exists(), f"{venv}/bin/{script}: install the package first"
    (work / ".venv").symlink_to(venv)
    try:
        yield work
    finally:
        # Whatever a failed run left behind: the server and detached simulators work here.
        for pid in processes_in(work):
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not processes_in(work), 20, "the processes to stop")


def test_the_quick_start_runs_as_pasted(folder: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTASHIP_")}
    http_port, mqtt_port = free_port(), free_port()
    env.update(OTASHIP_PORT=str(http_port), OTASHIP_MQTT_URL=f"embedded://127.0.0.1:{mqtt_port}")

    with (folder / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [".venv/bin/otaship", "serve"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        run_and_check(folder, env, server, f"http://127.0.0.1:{http_port}")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


def run_and_check(folder: Path, env: dict[str, str], server: subprocess.Popen[bytes], receiver: str) -> None:

    def serving() -> bool:
        assert server.poll() is None, (folder / "serve.log").read_text()
        try:
            return httpx.get(f"{receiver}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(serving, 60, "otaship serve")

    script = "\n".join(["set -euo pipefail", *quickstart_blocks(), REPORT])
    run = subprocess.run(
        ["bash", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output

    # The canary rollout completed, and the failing one halted, saying why.
    assert re.search(r"rollout \w+: complete, fleet stage 23/23 succeeded", output), output
    assert "otaship-deploy exited with 3 (3: the rollout halted)" in output, output
    report = re.search(r"^quickstart-report (\S+) (\S+) (\S+)$", run.stdout, re.MULTILINE)
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
    wait_until(lambda: outside(server.pid, processes_in(folder)) == [], 30, "the simulators to stop")
    assert re.search(r"^running versions +1\.1\.0: 20$", (folder / "fleet.log").read_text(), re.MULTILINE)
    canary_log = (folder / "canary.log").read_text()
    assert re.search(r"^failed \(back on old version\) +3$", canary_log, re.MULTILINE), canary_log
