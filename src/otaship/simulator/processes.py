"""`otaship simulate --processes N`: one fleet spread over N processes, reported as one.

A core carries a few thousand simulated devices (fleet.py); past that the
simulator, not the receiver, sets every figure. With N processes, each runs
fleet.py's asyncio Fleet on its share of the devices and this process runs none:

- the processes are started with multiprocessing's spawn (a fresh
  interpreter: forking a process that has threads, paho's or a caller's, is
  unsafe);
- each gets its share: a run of the device ids, the devices among them that
  fail (the whole fleet's choice, so a seed picks the same devices whatever
  N), and its part of the HTTP connections and of the connection attempts, so
  the receiver and the broker see what one process would open;
- their progress reports merge into one line and their summaries into one
  (merge.py);
- --until-version and --duration are decided here for the whole fleet: a
  process whose share is on the version keeps its devices online (reporting
  status like the rest) until every share is;
- a stop stops them all, and so does the first failure of any: a process
  that dies without a word is a failure that names its exit code.

A process reads its parent on a pipe: "stop", or the end of the pipe when the
parent died, which stops it too, so a killed parent leaves no devices behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import signal
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from otaship.simulator.config import SimulationConfig, SimulationError
from otaship.simulator.connection import DISCONNECT_GRACE
from otaship.simulator.fleet import FleetProgress, FleetSummary, simulate
from otaship.simulator.merge import merge_progress, merge_summaries

_STOP = "stop"
# A stopped process says goodbye (DISCONNECT_GRACE), waits for its connector
# threads (connect_timeout) and sends its summary; this bounds the wait for it.
_STOP_MARGIN = 20.0


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` near-equal whole shares (the first ones larger), none below 1."""
    base, extra = divmod(total, parts)
    return [max(1, base + (1 if k < extra else 0)) for k in range(parts)]


def shares(config: SimulationConfig) -> list[SimulationConfig]:
    """The configuration of each process: its devices, its failing devices, its limits."""
    ids = config.resolved_device_ids()
    count = min(config.processes, len(ids))
    failing = config.failing_indexes()
    http = split(config.http_connections, count)
    connects = split(config.connect_concurrency, count)
    result = []
    start = 0
    for k, size in enumerate(split(len(ids), count)):
        result.append(
            dataclasses.replace(
                config,
                devices=size,
                device_ids=ids[start : start + size],
                failing_ids=[ids[i] for i in range(start, start + size) if i in failing],
                # Decided by the parent for the whole fleet.
                duration=None,
                processes=1,
                # Its own random uptimes, batteries and reboot delays.
                seed=config.seed * 65537 + k,
                http_connections=http[k],
                connect_concurrency=connects[k],
            )
        )
        start += size
    return result


async def run_fleet(
    config: SimulationConfig,
    *,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[FleetProgress], None] | None = None,
) -> FleetSummary:
    """fleet.simulate() in this process, or spread over config.processes processes."""
    if config.processes > 1 and config.devices > 1:
        return await simulate_in_processes(config, stop=stop, on_progress=on_progress)
    return await simulate(config, stop=stop, on_progress=on_progress)


@dataclasses.dataclass
class _Process:
    number: int  # from 1, as messages name it
    process: BaseProcess
    pipe: Connection
    progress: FleetProgress | None = None
    summary: FleetSummary | None = None
    failure: str | None = None
    ended: bool = False  # its end of the pipe closed

    @property
    def done(self) -> bool:
        return self.ended or self.summary is not None or self.failure is not None


async def simulate_in_processes(
    config: SimulationConfig,
    *,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[FleetProgress], None] | None = None,
) -> FleetSummary:
    """Run the fleet over config.processes processes until `stop`, `until_version` or `duration`."""
    config.check()
    loop = asyncio.get_running_loop()
    started, cpu_started = time.monotonic(), time.process_time()
    changed = asyncio.Event()
    context = multiprocessing.get_context("spawn")
    processes: list[_Process] = []

    def merged() -> FleetProgress:
        return merge_progress(
            [p.progress for p in processes if p.progress is not None],
            devices=config.devices,
            elapsed=time.monotonic() - started,
            until_version=config.until_version,
        )

    def reached() -> bool:
        return config.until_version is not None and merged().on_target == config.devices

    def readable(child: _Process) -> None:
        try:
            message = child.pipe.recv()
        except (EOFError, OSError):
            loop.remove_reader(child.pipe.fileno())
            child.ended = True
        else:
            kind = message[0]
            if kind == "progress":
                child.progress = message[1]
            elif kind == "summary":
                child.summary = message[1]
            else:
                child.failure = message[1]
        changed.set()

    async def report() -> None:
        assert on_progress is not None
        while True:
            on_progress(merged())
            await asyncio.sleep(config.progress_interval)

    reporter: asyncio.Task[None] | None = None
    try:
        for number, share in enumerate(shares(config), start=1):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_process_main, args=(share, theirs), name=f"otaship-simulate-{number}", daemon=True
            )
            process.start()
            theirs.close()
            child = _Process(number, process, ours)
            processes.append(child)
            loop.add_reader(ours.fileno(), readable, child)
        if on_progress is not None:
            reporter = asyncio.create_task(report())
        stopped = stop if stop is not None else asyncio.Event()
        try:
            async with asyncio.timeout(config.duration):
                # Any process ending (with or without its summary) ends the run.
                while not (stopped.is_set() or any(p.done for p in processes) or reached()):
                    changed.clear()
                    waiter = asyncio.create_task(changed.wait())
                    stopping = asyncio.create_task(stopped.wait())
                    try:
                        await asyncio.wait([waiter, stopping], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                        stopping.cancel()
        except TimeoutError:
            pass
        await _stop_all(processes, changed, config)
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        for child in processes:
            if not child.ended:
                loop.remove_reader(child.pipe.fileno())
            child.pipe.close()
            _reap(child.process)
    failures = [p for p in processes if p.summary is None]
    if failures:
        raise SimulationError(_failure_message(failures, len(processes)))
    if on_progress is not None:
        # The last word: every process's last report, sent before its devices went offline.
        on_progress(merged())
    return merge_summaries(
        [p.summary for p in processes if p.summary is not None],
        started=started,
        ended=time.monotonic(),
        until_version=config.until_version,
        cpu_seconds=time.process_time() - cpu_started,
    )


async def _stop_all(processes: list[_Process], changed: asyncio.Event, config: SimulationConfig) -> None:
    for child in processes:
        with contextlib.suppress(OSError):
            child.pipe.send(_STOP)
    try:
        async with asyncio.timeout(DISCONNECT_GRACE + config.connect_timeout + _STOP_MARGIN):
            while not all(p.done for p in processes):
                changed.clear()
                await changed.wait()
    except TimeoutError:
        for child in processes:
            if not child.done:
                child.failure = "did not stop in time"


def _reap(process: BaseProcess) -> None:
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


def _failure_message(failures: list[_Process], count: int) -> str:
    first = failures[0]
    if first.failure is not None:
        why = first.failure
    else:
        why = f"ended without a summary (exit code {first.process.exitcode})"
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return f"simulation process {first.number} of {count}: {why}{more}"


# -- one process of the fleet ------------------------------------------------------------


def _send(pipe: Connection, message: tuple[Any, ...]) -> None:
    # A parent that is gone cannot be told; the end of the pipe stops us anyway.
    with contextlib.suppress(OSError):
        pipe.send(message)


def _process_main(config: SimulationConfig, pipe: Connection) -> None:
    """One process: run the share until the parent says stop (or is gone), then send the summary."""
    # Ctrl-C reaches the terminal's whole process group: the parent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        summary = asyncio.run(_run_share(config, pipe))
    except SimulationError as exc:
        _send(pipe, ("failed", str(exc)))
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        _send(pipe, ("failed", repr(exc)))
    else:
        _send(pipe, ("summary", summary))
    finally:
        pipe.close()


async def _run_share(config: SimulationConfig, pipe: Connection) -> FleetSummary:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # `kill` of the whole process group (a detached fleet's) stops each one cleanly.
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def from_parent() -> None:
        with contextlib.suppress(EOFError, OSError):
            pipe.recv()  # the one word is "stop"; the end of the pipe means the same
        loop.remove_reader(pipe.fileno())
        stop.set()

    loop.add_reader(pipe.fileno(), from_parent)
    try:
        return await simulate(
            config,
            stop=stop,
            on_progress=lambda progress: _send(pipe, ("progress", progress)),
            until_stops=False,
        )
    finally:
        loop.remove_reader(pipe.fileno())
        loop.remove_signal_handler(signal.SIGTERM)
