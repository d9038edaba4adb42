"""Lines that stand for many events: counts per minute, and a cap on repeated lines.

A fleet can cause the same event thousands of times a minute (every device
asking `latest`, a device of another owner reporting every second, a flood
of bad MQTT logins). One line per event would fill the disk and bury the
lines that matter, so these events are counted, and `Summaries` writes the
counts once a window from the event loop.

The counters are called from the event loop and from worker threads (report
ingestion, the broker's credential checks): each holds a lock for the few
instructions of an update.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping

WINDOW = 60.0  # seconds: "per minute"

log = logging.getLogger("otaship")


class Tally:
    """Counts by key since the last `take`."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, key: str, count: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + count

    def take(self) -> dict[str, int]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts


class Throttle:
    """Lets at most `limit` lines through per window, and counts the others."""

    def __init__(
        self, limit: int, *, window: float = WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._started = clock()
        self._passed = 0
        self._held = 0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether this occurrence gets its own line; if not, it is counted."""
        with self._lock:
            now = self._clock()
            if now - self._started >= self.window:
                self._started, self._passed = now, 0
            if self._passed < self.limit:
                self._passed += 1
                return True
            self._held += 1
            return False

    def take_held(self) -> int:
        """How many were held back since the last call."""
        with self._lock:
            held, self._held = self._held, 0
        return held


def counts_text(counts: Mapping[str, int]) -> str:
    """`{"200": 7, "404": 2}` as "200=7 404=2", keys in order: the same counts, the same text."""
    return " ".join(f"{key}={counts[key]}" for key in sorted(counts))


def seconds_text(seconds: float) -> str:
    return f"{max(1, round(seconds))} s"


class Summaries:
    """Calls each registered writer once a window, on the event loop, and once at
    the end, with the seconds its counts cover."""

    def __init__(self, window: float = WINDOW, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._since = clock()
        self._writers: list[Callable[[float], None]] = []

    def add(self, writer: Callable[[float], None]) -> None:
        self._writers.append(writer)

    def write(self) -> None:
        now = self._clock()
        covered, self._since = now - self._since, now
        for writer in self._writers:
            try:
                writer(covered)
            except Exception:
                log.exception("could not write a log summary")

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.window)
                self.write()
        finally:
            # Stopping: what was counted since the last line is still told.
            self.write()
