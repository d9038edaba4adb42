"""`otaship simulate`: the command line of the device simulator (the fleet itself is in fleet.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from otaship.simulator.config import FAIL_MODES, FAIL_REVERT, SimulationConfig, SimulationError
from otaship.simulator.fleet import FleetProgress, FleetSummary, register_devices
from otaship.simulator.processes import run_fleet

if TYPE_CHECKING:
    from otaship.receiver.settings import Settings

EXIT_OK = 0
EXIT_NOT_REACHED = 1  # --until-version was not reached before the stop
EXIT_USAGE = 2


# -- command line ----------------------------------------------------------------


@click.command(
    "simulate",
    short_help="run simulated IoTaaP OS devices (a test fleet, or a load generator)",
    help=(
        "Run N simulated IoTaaP OS devices in one process (or over --processes). Each logs in to MQTT with the "
        "owner's credentials, reports its status, and on an update trigger checks latest, "
        "downloads and verifies the image, and reboots into the new version."
    ),
)
@click.option("--group", required=True, metavar="ID", help="the group the devices belong to")
@click.option("--token", required=True, help="the group's token (used to download)")
@click.option(
    "--mqtt-url",
    required=True,
    metavar="URL",
    help="mqtt://MQTT_USER:MQTT_PASSWORD@HOST:PORT (or mqtts://) with the owner's credentials",
)
@click.option("--server", required=True, metavar="URL", help="the receiver, e.g. http://127.0.0.1:8080")
@click.option("--devices", type=click.IntRange(min=1), default=10, metavar="N", help="how many devices")
@click.option("--version", default="0.0.0", metavar="X", help="the version the devices run at start")
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    metavar="F",
    help="share of devices whose update fails (how: --fail-mode)",
)
@click.option(
    "--fail-mode",
    type=click.Choice(FAIL_MODES),
    default=FAIL_REVERT,
    show_default=True,
    help="how the --fail-rate devices fail: revert (back on the old version after the reboot), "
    "dark (answer 201, then send nothing), reboot-loop (boot the new version, then reboot every "
    "few seconds), 203 (the download fails)",
)
@click.option(
    "--register",
    is_flag=True,
    help="create the devices in the receiver's database first (OTASHIP_* settings)",
)
@click.option(
    "--status-interval",
    type=click.FloatRange(min=0),
    default=5.0,
    metavar="S",
    help="seconds between status reports (0: on boot only)",
)
@click.option(
    "--id-prefix", metavar="P", show_default="sim-<group[:8]>", help="device ids are P-00001, P-00002..."
)
@click.option(
    "--until-version", metavar="V", help="stop when every device runs V (exit 1 if the run stops before)"
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    metavar="S",
    help="stop after S seconds (with --until-version: whichever comes first)",
)
@click.option("--seed", type=int, default=0, help="fixes which devices fail")
@click.option(
    "--http-connections",
    type=click.IntRange(min=1),
    default=16,
    metavar="N",
    help="concurrent HTTP connections to the receiver",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    metavar="N",
    help="spread the devices over N processes (about one per core for thousands of devices)",
)
@click.option("--json", is_flag=True, help="print the summary as one JSON object")
@click.option(
    "--detach",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="LOG",
    help="once every device is online, go on in the background (progress and summary to LOG) "
    "and print its process id; `kill PID` stops it",
)
def simulate_command(**params: Any) -> None:
    """`otaship simulate`; its options' values are `params`, by option name."""
    from otaship.receiver.settings import Settings

    run_command(Settings.from_env(), params)


def config_from_args(params: Mapping[str, Any]) -> SimulationConfig:
    return SimulationConfig(
        server=params["server"],
        mqtt_url=params["mqtt_url"],
        group_id=params["group"],
        token=params["token"],
        devices=params["devices"],
        version=params["version"],
        fail_rate=params["fail_rate"],
        fail_mode=params["fail_mode"],
        status_interval=params["status_interval"],
        id_prefix=params["id_prefix"],
        until_version=params["until_version"],
        duration=params["duration"] or None,
        seed=params["seed"],
        http_connections=params["http_connections"],
        processes=params["processes"],
    )


class ProgressLine:
    """One line rewritten in place on a terminal; a line every few seconds in a log."""

    def __init__(self, stream: IO[str], *, log_every: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.log_every = log_every
        self._last_logged = 0.0
        self._width = 0

    def __call__(self, progress: FleetProgress) -> None:
        text = progress.line()
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            now = time.monotonic()
            if now - self._last_logged < self.log_every:
                return
            self._last_logged = now
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, progress: FleetProgress | None = None) -> None:
        if progress is not None and not self.tty:
            self.stream.write(progress.line() + "\n")
        elif self.tty and self._width:
            self.stream.write("\n")
        self.stream.flush()


async def run_until_signal(
    config: SimulationConfig, progress: ProgressLine, *, on_ready: Callable[[], None] | None = None
) -> FleetSummary:
    """Run until a signal, --until-version or --duration; `on_ready` once when every device is online."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C ends the run with a summary instead of a traceback.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    last: list[FleetProgress] = []

    waiting = [on_ready] if on_ready is not None else []

    def on_progress(update: FleetProgress) -> None:
        last[:] = [update]
        progress(update)
        if waiting and update.online == update.devices:
            waiting.pop()()

    try:
        return await run_fleet(config, stop=stop, on_progress=on_progress)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        progress.close(last[0] if last else None)


def run_command(settings: Settings, params: Mapping[str, Any]) -> None:
    """`otaship simulate`: exits 1 when --until-version was not reached, 2 on bad input."""
    try:
        config = config_from_args(params)
        config.check()
        if params["register"]:
            created, existing = register_devices(settings, config)
            print(f"registered {created} devices ({existing} already there)", file=sys.stderr)
        if params["detach"] is not None:
            from otaship.simulator.detach import start

            pid = start(config, params["detach"], json_summary=params["json"])
            print(
                f"{config.devices} devices online in group {config.group_id}, running in the background "
                f"(process {pid}, log {params['detach']}); `kill {pid}` stops them",
                file=sys.stderr,
            )
            print(pid)
            return
        summary = asyncio.run(run_until_signal(config, ProgressLine(sys.stderr)))
    except SimulationError as exc:
        from otaship.receiver.logs import redact

        # The message can quote the MQTT URL, password and all.
        print(redact(f"otaship: error: {exc}"), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from exc
    print_summary(summary, as_json=params["json"])
    if config.until_version is not None and not summary.reached_until_version:
        raise SystemExit(EXIT_NOT_REACHED)


def print_summary(summary: FleetSummary, *, as_json: bool) -> None:
    print(json.dumps(summary.to_json()) if as_json else summary.table())
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run `simulate` on its own (`python -m otaship.simulator.cli ...`): `otaship simulate ...`."""
    from otaship.receiver.cli import main as otaship_main

    return otaship_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
