"""`otaship simulate --detach LOG`: a fleet that runs in the background once every device is online.

A script (the README's Quick start) must not deploy before the simulated devices
have subscribed to their group's trigger: a device that is not listening misses
it, and a rollout would wait for it until its timeout. So the command returns
only when the whole fleet is online, and leaves it running in a process of its
own session (a closed terminal does not stop it), whose id it prints.

The background process is this module run by the same Python. Its configuration,
the owner's MQTT password included, arrives on its stdin rather than its command
line, which any user of the machine can read. It says "online" on a pipe the
parent waits on; its progress lines and final summary go to the log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

from otaship.simulator.config import SimulationConfig, SimulationError

# The descriptor the background process writes READY to.
READY_FD = 3
READY = b"online\n"
# Connecting is capped (connect_concurrency), so a big fleet needs longer.
_BASE_WAIT = 60.0
_WAIT_PER_DEVICE = 0.05
_LOG_TAIL = 2000


def online_deadline(devices: int) -> float:
    """Seconds to wait for `devices` to come online before giving up."""
    return _BASE_WAIT + devices * _WAIT_PER_DEVICE


def start(config: SimulationConfig, log_path: Path, *, json_summary: bool) -> int:
    """Start the fleet in the background; return its process id once every device is online."""
    config_read, config_write = os.pipe()
    ready_read, ready_write = os.pipe()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    start_offset = os.fstat(log_fd).st_size
    argv = [sys.executable, "-m", "otaship.simulator.detach", *(["--json"] if json_summary else [])]
    try:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, config_read, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
                (os.POSIX_SPAWN_DUP2, ready_write, READY_FD),
            ],
            setsid=True,
        )
    finally:
        for fd in (config_read, ready_write, log_fd):
            os.close(fd)
    # A process that died at once closed its end: the wait below then says so, with its log.
    with contextlib.suppress(BrokenPipeError), os.fdopen(config_write, "w") as config_pipe:
        json.dump(dataclasses.asdict(config), config_pipe)
    try:
        said = _wait_ready(ready_read, online_deadline(config.devices))
    finally:
        os.close(ready_read)
    if said == READY:
        return pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    why = "did not get every device online in time" if said is None else "stopped"
    raise SimulationError(f"the background simulation {why}; its log says:\n{_tail(log_path, start_offset)}")


def _wait_ready(fd: int, timeout: float) -> bytes | None:
    """What the background process said: READY, b"" when it ended first, None at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            return os.read(fd, len(READY))
    return None


def _tail(log_path: Path, offset: int) -> str:
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace").strip()
    return text[-_LOG_TAIL:] or "(nothing)"


def config_from_json(data: dict[str, Any]) -> SimulationConfig:
    data["reboot_delay"] = tuple(data["reboot_delay"])
    return SimulationConfig(**data)


def main() -> int:
    """The background process: run the fleet, say READY once it is online, then run until stopped."""
    from otaship.simulator.cli import ProgressLine, print_summary, run_until_signal

    config = config_from_json(json.load(sys.stdin))
    sys.stdin.close()
    ready = os.fdopen(READY_FD, "wb")

    def on_ready() -> None:
        ready.write(READY)
        ready.close()

    try:
        summary = asyncio.run(run_until_signal(config, ProgressLine(sys.stderr), on_ready=on_ready))
    except SimulationError as exc:
        from otaship.receiver.logs import redact

        print(redact(f"otaship: error: {exc}"), file=sys.stderr)
        return 2
    finally:
        if not ready.closed:
            ready.close()
    print_summary(summary, as_json="--json" in sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
