"""Running the README's ```bash blocks as a reader pastes them.

A section marks the blocks a test runs with `<!-- NAME: begin -->` and
`<!-- NAME: end -->`. They run verbatim and in order, in one bash with
`set -euo pipefail` (stricter than a terminal: a variable no earlier block set,
or a failing command, ends the run), in a scratch folder where `.venv` is this
Python's environment, against `otaship serve` started there as `make run`
starts it, with the embedded defaults: SQLite and objects under
./otaship-data, and the embedded broker. The only settings given are the ones
the README tells a reader with taken ports to export in both terminals:
OTASHIP_PORT and OTASHIP_MQTT_URL, free ports here, since 8080 and 1883 may be
in use on a shared machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(heading: str) -> str:
    """From `heading` (a whole line) to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    start = README.index(f"\n{heading}\n")
    rest = README[start + len(heading) + 2 :]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def marked_blocks(heading: str, name: str) -> list[str]:
    """The ```bash blocks between the section's `name` markers, in order."""
    text = section(heading)
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, f"the {name} markers in {heading!r}"
    return BASH_BLOCK.findall(text.split(begin, 1)[1].split(end, 1)[0])


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


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def scratch_folder(tmp_path: Path) -> Iterator[Path]:
    """A clone's folder after `make install` (`.venv` is this test's Python
    environment), and, after the test, none of the processes it left there."""
    work = tmp_path.resolve()
    venv = Path(sys.prefix)
    for script in ("otaship", "otaship-deploy", "espsecure"):
        assert (venv / "bin" / script).exists(), f"{venv}/bin/{script}: install the package first"
    (work / ".venv").symlink_to(venv)
    try:
        yield work
    finally:
        # Whatever a failed run left behind: the server and detached simulators work here.
        for pid in processes_in(work):
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not processes_in(work), 20, "the processes to stop")


def reader_env() -> dict[str, str]:
    """The environment of a reader's terminals: none of this machine's OTASHIP_
    settings, and the two ports the README says to export when 8080 or 1883 is taken."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTASHIP_")}
    env.update(OTASHIP_PORT=str(free_port()), OTASHIP_MQTT_URL=f"embedded://127.0.0.1:{free_port()}")
    return env


@dataclass(frozen=True)
class Served:
    server: subprocess.Popen[bytes]
    url: str


@contextmanager
def serving(folder: Path, env: dict[str, str]) -> Iterator[Served]:
    """`otaship serve` in `folder`, as `make run` starts it, once it answers; stopped after."""
    url = f"http://127.0.0.1:{env['OTASHIP_PORT']}"
    with (folder / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [".venv/bin/otaship", "serve"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:

        def up() -> bool:
            assert server.poll() is None, (folder / "serve.log").read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 60, "otaship serve")
        yield Served(server=server, url=url)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


def run_blocks(folder: Path, env: dict[str, str], blocks: list[str], timeout: float) -> str:
    """The blocks in one bash with `set -euo pipefail`; its output, once it exited 0."""
    script = "\n".join(["set -euo pipefail", *blocks])
    run = subprocess.run(
        ["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return output
