"""wrk (Debian's) as the load generator: a second process, its summary read as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# wrk calls done() once at the end with its totals; we print them as one JSON line.
_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {"requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


class LoadFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadResult:
    requests: int
    bytes: int
    seconds: float
    errors: int  # connect, read, write and timeout errors, and non-2xx/3xx answers
    p50_ms: float
    p99_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def mib_per_second(self) -> float:
        return self.bytes / self.seconds / (1024 * 1024)


def run(url: str, *, connections: int, seconds: float, threads: int = 2, work_dir: Path) -> LoadResult:
    binary = shutil.which("wrk")
    if binary is None:
        raise LoadFailed("wrk is not installed")
    script = work_dir / "wrk-report.lua"
    script.write_text(_REPORT)
    threads = max(1, min(threads, connections))
    argv = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    line = next((out for out in result.stdout.splitlines() if out.startswith("WRK-JSON ")), None)
    if result.returncode != 0 or line is None:
        raise LoadFailed(
            f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )
    data = json.loads(line.removeprefix("WRK-JSON "))
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    return LoadResult(
        requests=data["requests"],
        bytes=data["bytes"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )
