"""Repeated failed sign-ins are slowed down, per email and per client address.

The first few failures cost nothing; after them each further attempt must
wait, twice as long after each failure, up to a cap. A wait is told as a 429
with Retry-After, before the password is checked, so a guesser gets no answer
at all during it. A success clears the email's count. Kept in memory, per
replica: a restart forgets, which only lets a guesser start over slowly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FREE_FAILURES = 3
MAX_WAIT = 300.0
# A count is forgotten this long after its last failure.
FORGET_AFTER = 900.0
MAX_ENTRIES = 100_000


def wait_after(failures: int) -> float:
    """Seconds to wait after `failures` failures in a row before the next attempt."""
    if failures < FREE_FAILURES:
        return 0.0
    return min(2.0 ** (failures - FREE_FAILURES), MAX_WAIT)


@dataclass(frozen=True)
class Failures:
    count: int
    last: float


def remaining_wait(entry: Failures | None, now: float) -> float:
    """Seconds left before another attempt is heard; 0 when it is now."""
    if entry is None or now - entry.last >= FORGET_AFTER:
        return 0.0
    return max(0.0, entry.last + wait_after(entry.count) - now)


def after_failure(entry: Failures | None, now: float) -> Failures:
    if entry is None or now - entry.last >= FORGET_AFTER:
        return Failures(1, now)
    return Failures(entry.count + 1, now)


class SignInThrottle:
    def __init__(self) -> None:
        self._failures: dict[str, Failures] = {}

    @staticmethod
    def keys(email: str, address: str) -> tuple[str, str]:
        return f"email:{email.strip().lower()}", f"address:{address}"

    def retry_after(self, email: str, address: str, now: float) -> int:
        """Whole seconds to wait (0: go ahead)."""
        wait = max(remaining_wait(self._failures.get(key), now) for key in self.keys(email, address))
        return math.ceil(wait)

    def failed(self, email: str, address: str, now: float) -> None:
        if len(self._failures) >= MAX_ENTRIES:
            self._failures = {k: v for k, v in self._failures.items() if now - v.last < FORGET_AFTER}
            if len(self._failures) >= MAX_ENTRIES:
                self._failures.clear()
        for key in self.keys(email, address):
            self._failures[key] = after_failure(self._failures.get(key), now)

    def succeeded(self, email: str) -> None:
        self._failures.pop(self.keys(email, "")[0], None)
