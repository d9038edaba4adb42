"""`otaship simulate`: the command line of the device simulator (the fleet itself is in fleet.py)."""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from otaship.simulator.config import SimulationConfig, SimulationError
from otaship.simulator.fleet import FleetProgress, FleetSummary, register_devices, simulate

if TYPE_CHECKING:
    from otaship.receiver.settings import Settings

EXIT_OK = 0
EXIT_NOT_REACHED = 1  # --until-version was not reached before the stop
EXIT_USAGE = 2


# -- command line ----------------------------------------------------------------


def _fail_rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from exc
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return rate


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from exc
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from exc
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `simulate` to the otaship command line."""
    p = subparsers.add_parser(
        "simulate",
        help="run simulated IoTaaP OS devices (a test fleet, or a load generator)",
        description=(
            "Run N simulated IoTaaP OS devices in one process. Each logs in to MQTT with the "
            "owner's credentials, reports its status, and on an update trigger checks latest, "
            "downloads and verifies the image, and reboots into the new version."
        ),
    )
    p.add_argument("--group", required=True, metavar="ID", help="the group the devices belong to")
    p.add_argument("--token", required=True, help="the group's token (used to download)")
    p.add_argument("--mqtt-url", required=True, metavar="URL",
                   help="mqtt://MQTT_USER:MQTT_PASSWORD@HOST:PORT (or mqtts://) with the owner's credentials")
    p.add_argument("--server", required=True, metavar="URL", help="the receiver, e.g. http://127.0.0.1:8080")
    p.add_argument("--devices", type=_positive_int, default=10, metavar="N", help="how many devices (default 10)")
    p.add_argument("--version", default="0.0.0", metavar="X", help="the version the devices run at start")
    p.add_argument("--fail-rate", type=_fail_rate, default=0.0, metavar="F",
                   help="share of devices that come back on their old version after an update (0-1)")
    p.add_argument("--register", action="store_true",
                   help="create the devices in the receiver's database first (OTASHIP_* settings)")
    p.add_argument("--status-interval", type=_seconds, default=5.0, metavar="S",
                   help="seconds between status reports (default 5; 0: on boot only)")
    p.add_argument("--id-prefix", metavar="P", help="device ids are P-00001, P-00002... (default sim-<group[:8]>)")
    p.add_argument("--until-version", metavar="V",
                   help="stop when every device runs V (exit 1 if the run stops before)")
    p.add_argument("--duration", type=_seconds, metavar="S",
                   help="stop after S seconds (with --until-version: whichever comes first)")
    p.add_argument("--seed", type=int, default=0, help="fixes which devices fail (default 0)")
    p.add_argument("--http-connections", type=_positive_int, default=16, metavar="N",
                   help="concurrent HTTP connections to the receiver (default 16)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(run=run_command)


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(
        server=args.server, mqtt_url=args.mqtt_url, group_id=args.group, token=args.token,
        devices=args.devices, version=args.version, fail_rate=args.fail_rate,
        status_interval=args.status_interval, id_prefix=args.id_prefix,
        until_version=args.until_version, duration=args.duration or None, seed=args.seed,
        http_connections=args.http_connections,
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


async def _run_until_signal(config: SimulationConfig, progress: ProgressLine) -> FleetSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C ends the run with a summary instead of a traceback.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    last: list[FleetProgress] = []

    def on_progress(update: FleetProgress) -> None:
        last[:] = [update]
        progress(update)

    try:
        return await simulate(config, stop=stop, on_progress=on_progress)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        progress.close(last[0] if last else None)


def run_command(settings: Settings, args: argparse.Namespace) -> None:
    """`otaship simulate`: exits 1 when --until-version was not reached, 2 on bad input."""
    try:
        config = config_from_args(args)
        config.check()
        if args.register:
            created, existing = register_devices(settings, config)
            print(f"registered {created} devices ({existing} already there)", file=sys.stderr)
        summary = asyncio.run(_run_until_signal(config, ProgressLine(sys.stderr)))
    except SimulationError as exc:
        from otaship.receiver.logs import redact

        # The message can quote the MQTT URL, password and all.
        print(redact(f"otaship: error: {exc}"), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from exc
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        print(summary.table())
    sys.stdout.flush()
    if config.until_version is not None and not summary.reached_until_version:
        raise SystemExit(EXIT_NOT_REACHED)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `simulate` on its own (`python -m otaship.simulator.cli ...`), before it is wired into otaship."""
    from otaship.receiver.settings import Settings

    parser = argparse.ArgumentParser(prog="otaship")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    from otaship.receiver.logs import redact_unconfigured_logs

    redact_unconfigured_logs()
    args.run(Settings.from_env(), args)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
