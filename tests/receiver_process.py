"""`otaship serve` as a real subprocess, and the `otaship` CLI against the same data."""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

from tests.services import free_port, stop_process

OTASHIP = [sys.executable, "-m", "otaship.receiver.cli"]

# Every server `otaship serve` can run on: the tests of the device path and the
# lifespan run on each (`@pytest.mark.parametrize("server", SERVERS)`).
SERVERS = ("granian", "uvicorn")


def cli_env(data_dir: Path, *, server: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTASHIP_")}
    env.update(
        {
            "OTASHIP_DATA_DIR": str(data_dir),
            "OTASHIP_MQTT_URL": "none",
            # On a shared broker the default id, otaship-<hostname>, is every test
            # receiver's: each would take the others' connection and session.
            # One id per tenant keeps its session across a restart of its receiver.
            "OTASHIP_MQTT_CLIENT_ID": f"otaship-test-{secrets.token_hex(6)}",
            **extra,
        }
    )
    if server is not None:
        env["OTASHIP_SERVER"] = server
    return env


def migrated_env(data_dir: Path, *, server: str | None = None, **extra: str) -> dict[str, str]:
    """`cli_env` with its database created, as `otaship serve` or `otaship migrate`
    creates it: the admin commands only use a database that exists."""
    env = cli_env(data_dir, server=server, **extra)
    otaship(env, "migrate")
    return env


def otaship(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*OTASHIP, *args], env=env, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"otaship {' '.join(args)} failed: {result.stderr}")
    return result


def otaship_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(otaship(env, *args).stdout)


class PortTaken(AssertionError):
    pass


class ReceiverProcess:
    def __init__(
        self, env: dict[str, str], port: int | None = None, *, max_file_bytes: int | None = None
    ) -> None:
        # A real "file too large" from the kernel (RLIMIT_FSIZE) for every
        # file the server writes beyond this size: a disk that refuses bytes.
        self.max_file_bytes = max_file_bytes
        self.port = port or free_port()
        self.env = {**env, "OTASHIP_PORT": str(self.port)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    # A ceiling, not a wait: a start on a loaded 2-core machine, with its
    # workers importing the app side by side, has taken over 30 s.
    def start(self, timeout: float = 60, attempts: int = 3) -> ReceiverProcess:
        for attempt in range(attempts):
            try:
                return self._start(timeout)
            except PortTaken:
                # free_port() only found a port that was free a moment ago;
                # another process may have taken it since. Pick again.
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.env["OTASHIP_PORT"] = str(self.port)
                self.url = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> ReceiverProcess:
        # A file, not a pipe: nobody reads a pipe while the server runs, and a
        # full one (64 KiB of access log) would block the server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (open while the server runs)
        self.process = subprocess.Popen(
            [*OTASHIP, "serve"],
            # A session of its own: kill() reaches granian's worker processes too.
            start_new_session=True,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._limit_files if self.max_file_bytes is not None else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self._read_log()
                code = self.process.returncode
                self.process = None
                # The check before serving, or the server's own bind after it.
                if (
                    f"Cannot serve HTTP on 127.0.0.1:{self.port}: it is already in use" in output
                    or f"('127.0.0.1', {self.port}): address already in use" in output
                ):
                    raise PortTaken(output)
                raise AssertionError(f"otaship serve exited with {code}: {output}")
            try:
                httpx.get(f"{self.url}/v1/ota/group", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        output = self.stop()
        raise AssertionError(f"otaship serve did not answer within {timeout:g} s; its log so far:\n{output}")

    def _limit_files(self) -> None:
        assert self.max_file_bytes is not None
        # Ignored, the signal turns into EFBIG from write(): an error, not a kill.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))

    def kill(self) -> None:
        """SIGKILL the server and its worker processes at once, as a crash or an
        OOM kill of its container would; stop() then collects what it wrote."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> str:
        # A test that killed the process itself still has the log to close.
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        return self._read_log()

    def peek(self) -> str:
        """What the server has written so far, for an assertion's message when
        it answered 5xx. The log is read through a description of its own: the
        server shares this one's offset, and moving it would move its writes."""
        if self.log is None:
            return ""
        with open(f"/proc/self/fd/{self.log.fileno()}", "rb") as log:
            return log.read().decode(errors="replace")

    def _read_log(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        output = self.log.read().decode(errors="replace")
        self.log.close()
        self.log = None
        return output
