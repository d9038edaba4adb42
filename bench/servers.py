"""Servers the benchmarks start as subprocesses on free loopback ports, and stop again."""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench.system import mosquitto_binary, nginx_binary
from tests.services import free_port, port_open, stop_process

ROOT = Path(__file__).resolve().parent.parent
OTASHIP = [sys.executable, "-m", "otaship.receiver.cli"]


class ServerFailed(RuntimeError):
    pass


class Server:
    """A subprocess listening on a loopback port; `command(port)` builds its argv.

    free_port() only finds a port that was free a moment ago: if the server
    exits at once (another process took the port meanwhile), it is started
    again on another one.
    """

    def __init__(
        self,
        name: str,
        command: Any,
        *,
        env: dict[str, str] | None = None,
        log_dir: Path,
        startup: float = 30.0,
    ) -> None:
        self.name = name
        self._command = command
        self.env = env if env is not None else dict(os.environ)
        self.log_path = log_dir / f"{name}-{secrets.token_hex(3)}.log"
        self.startup = startup
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process that runs the app: granian's one worker, not its supervisor;
        the process itself when it has no single child (uvicorn, nginx's master)."""
        assert self.process is not None
        children = _children(self.process.pid)
        return children[0] if len(children) == 1 else self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 3) -> Server:
        for _ in range(attempts):
            self.port = free_port()
            if self._start_once():
                return self
        raise ServerFailed(f"{self.name} did not start; its log:\n{self.log_tail()}")

    def _start_once(self) -> bool:
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (open while the server runs)
        argv, env = self._command(self.port), {**self.env}
        if isinstance(argv, tuple):
            argv, extra = argv
            env.update(extra)
        self.process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.startup
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                self.process = None
                return False
            if port_open("127.0.0.1", self.port):
                return True
            time.sleep(0.05)
        self.stop()
        raise ServerFailed(f"{self.name} did not listen within {self.startup:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None
        self._close_log()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


# --- the receiver, and its admin CLI on the same data -----------------------------


def receiver_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTASHIP_")}
    env.update(
        {
            "OTASHIP_DATA_DIR": str(data_dir),
            "OTASHIP_MQTT_URL": "none",
            # Access lines at info level would cost the receiver a log write per request;
            # the baselines run at the same level. The check benchmark also runs the
            # receiver with the defaults (bench/check_burst.py).
            "OTASHIP_LOG_LEVEL": "warning",
            # A client id of its own: the default (otaship-<hostname>) would take over
            # the session of any other receiver on the same broker.
            "OTASHIP_MQTT_CLIENT_ID": f"otaship-bench-{secrets.token_hex(4)}",
            # One worker, as the baselines have; the server is `serve`'s default
            # unless the run names one (OTASHIP_SERVER=uvicorn make bench).
            "OTASHIP_WORKERS": "1",
            **({"OTASHIP_SERVER": os.environ["OTASHIP_SERVER"]} if os.environ.get("OTASHIP_SERVER") else {}),
            **extra,
        }
    )
    return env


def otaship_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*OTASHIP, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise ServerFailed(f"otaship {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def otaship_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(otaship_cli(env, *args).stdout)


# Several `otaship` commands in one interpreter: each prints one JSON object (or
# text, kept as None), and an argument may name an earlier result, "{0[id]}"
# being the first one's id.
_BATCH = """
import contextlib, io, json, sys
from otaship.receiver.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    argv = [arg.format(*results) for arg in argv]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code:
        sys.exit(f"otaship {' '.join(argv)} exited with {code}")
    try:
        results.append(json.loads(out.getvalue()))
    except ValueError:
        results.append(None)
print(json.dumps(results))
"""


def otaship_batch(env: dict[str, str], *commands: Sequence[str]) -> list[Any]:
    """Run `otaship` admin commands in order, in one process (an interpreter start costs ~1 s)."""
    result = subprocess.run(
        [sys.executable, "-c", _BATCH, json.dumps([list(c) for c in commands])],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise ServerFailed(f"otaship commands failed: {result.stderr.strip()[-500:]}")
    results: list[Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return results


@functools.lru_cache(maxsize=1)
def has_migrate() -> bool:
    """Whether this receiver has `otaship migrate` (Alembic schema for PostgreSQL)."""
    from otaship.receiver.cli import cli

    return "migrate" in cli.commands


def receiver(env: dict[str, str], log_dir: Path) -> Server:
    """`otaship serve` with one worker, on the server it runs on by default (or OTASHIP_SERVER)."""
    return Server(
        "receiver",
        lambda port: ([*OTASHIP, "serve"], {"OTASHIP_PORT": str(port)}),
        env=env,
        log_dir=log_dir,
        startup=60,
    )


def baseline(
    log_dir: Path, *, file: Path | None = None, upload_dir: Path | None = None, server: str = "uvicorn"
) -> Server:
    """The bare Starlette app of bench/baseline_app.py, with one worker on `server`
    (uvicorn or granian, its ASGI interface)."""
    env = dict(os.environ)
    if file is not None:
        env["BENCH_FILE"] = str(file)
    if upload_dir is not None:
        env["BENCH_UPLOAD_DIR"] = str(upload_dir)
    options = ["--host", "127.0.0.1", "--workers", "1", "--log-level", "warning"]
    target = "bench.baseline_app:create_app"

    def command(port: int) -> list[str]:
        if server == "granian":
            return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", target]
        return [sys.executable, "-m", "uvicorn", "--factory", target]

    return Server(
        f"starlette-{server}",
        lambda port: [*command(port), *options, "--port", str(port)],
        env=env,
        log_dir=log_dir,
    )


def nginx(root: Path, log_dir: Path) -> Server:
    """Debian's nginx serving `root` statically: one worker, sendfile, no access log."""
    binary = nginx_binary()
    if binary is None:
        raise ServerFailed("nginx is not installed")
    prefix = log_dir / f"nginx-{secrets.token_hex(3)}"
    prefix.mkdir(parents=True)

    def command(port: int) -> Sequence[str]:
        conf = prefix / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
        return [binary, "-p", str(prefix), "-c", str(conf)]

    return Server("nginx", command, log_dir=log_dir)


def mosquitto(log_dir: Path) -> Server:
    """A private Mosquitto (Debian's binary) for the run, anonymous, on a free port.

    Private rather than the machine's broker on 1883: the receiver subscribes
    with the shared group `$share/otaship/…` and a 24-hour persistent session,
    so any other receiver on 1883 (another engineer's tests) would split the
    reports with ours, and a queue limit of 1,000 per client (Mosquitto's
    default) would drop reports when a subscriber falls behind.
    """
    binary = mosquitto_binary()
    if binary is None:
        raise ServerFailed("mosquitto is not installed (apt-get install mosquitto)")
    folder = log_dir / f"mosquitto-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)

    def command(port: int) -> Sequence[str]:
        conf = folder / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "log_type error\nlog_type warning\n"
        )
        return [binary, "-c", str(conf)]

    return Server("mosquitto", command, log_dir=log_dir)
