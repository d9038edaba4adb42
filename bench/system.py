"""The machine under the benchmarks: tools it needs, free ports, and what a process uses."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Debian packages the HTTP benchmarks load and compare with.
APT_PACKAGES = ("wrk", "nginx")


class ToolMissing(RuntimeError):
    """A binary the benchmark needs is absent and could not be installed; says how to fix it."""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).is_file()), None
    )


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/sbin/mosquitto") if Path(p).is_file()), None
    )


def _missing() -> list[str]:
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk")
    if nginx_binary() is None:
        missing.append("nginx")
    return missing


def ensure_http_tools(*, install: bool = True) -> None:
    """Make sure wrk and nginx are there, installing Debian's packages if they are not.

    A clean machine needs this once; it runs `apt-get install` (after
    `apt-get update` when the first attempt fails) and needs root.
    """
    missing = _missing()
    if not missing:
        return
    hint = f"install them with: apt-get update && apt-get install -y {' '.join(missing)}"
    if not install:
        raise ToolMissing(f"{', '.join(missing)} not found; {hint}")
    if shutil.which("apt-get") is None:
        raise ToolMissing(f"{', '.join(missing)} not found and there is no apt-get here; {hint}")
    if os.geteuid() != 0:
        raise ToolMissing(f"{', '.join(missing)} not found and installing needs root; {hint}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    print(f"bench: installing {' '.join(missing)} from Debian's packages", flush=True)
    result = subprocess.run(install_cmd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
        result = subprocess.run(install_cmd, env=env, capture_output=True, text=True, timeout=600)
    still = _missing()
    if still:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ToolMissing(f"could not install {', '.join(still)} ({' / '.join(tail)}); {hint}")


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes
    peak: int  # VmHWM: the resident peak since the last reset (or the start)


def memory(pid: int) -> Memory:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return Memory(values["VmRSS"], values["VmHWM"])


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0, clear_refs 5); False where refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakGrowth:
    """Peak RSS growth of a process over a stretch of work: `with PeakGrowth(pid, idle) as g: ...; g.bytes`.

    Measured from `idle`, the RSS of the server before any load, not from the RSS
    when the stretch starts: an allocator keeps what an earlier repetition took,
    and growth from there would look flat when it is not.
    """

    def __init__(self, pid: int, idle: int | None = None) -> None:
        self.pid = pid
        self.idle = idle
        self.bytes = 0

    def __enter__(self) -> PeakGrowth:
        self.reset = reset_peak(self.pid)
        self.before = memory(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        after = memory(self.pid)
        # Without a reset, the peak before the stretch bounds what we can tell.
        start = self.idle if self.idle is not None else self.before.rss if self.reset else self.before.peak
        self.bytes = max(0, after.peak - start)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (its children, theirs, ...)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            pending += children
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by `pid` and every process under it (a server and its workers)."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += cpu_seconds(each)
    return total


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, loopback, Linux {os.uname().release}"
