"""One warning when a dependency starts failing, one line when it is back.

The background loops (the rollout clock, report ingestion, trigger publishing)
and the device routes' catalog try the database again every second or so
while it is down: a traceback for each attempt would bury the log. The first
failure says what is affected, with the error's first line (no statement, no
parameters); the rest stay quiet until an attempt succeeds.
"""

from __future__ import annotations

import logging
import threading

from otaship.receiver.logs import short_error


class OutageLog:
    def __init__(self, logger: logging.Logger, meanwhile: str, *, what: str = "the database") -> None:
        self.logger = logger
        # What carries on, and how, while `what` is away: "device reports wait in memory".
        self.meanwhile = meanwhile
        self.what = what
        self._down = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._down

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            first, self._down = not self._down, True
        if first:
            self.logger.warning("%s is unavailable (%s); %s", self.what, short_error(exc), self.meanwhile)

    def recovered(self) -> None:
        with self._lock:
            was, self._down = self._down, False
        if was:
            self.logger.info("%s is available again", self.what)
