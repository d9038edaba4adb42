"""Firmware objects being stored right now, between their write and their record.

A deploy writes its object first and commits the record that references it
after. Until that commit the object looks like an orphan. Two things keep the
orphan sweep (receiver/sweep.py) away from it:

- this process's own sweep skips every key held here;
- any sweep, in any process, removes only objects older than its grace period,
  and a deploy refuses to commit a reference more than half that period after
  it stored or refreshed the object (`Hold.check`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from otaship.receiver.storage import StorageError


class ObjectNotStored(Exception):
    """The deploy would reference an object it did not store: store it, then try again.

    A deploy skips storing when the group already runs the same version (the
    answer is then a no-op or a 409). If another deploy changed the group's
    version meanwhile, the transaction would deploy after all.
    """


class StoreExpired(StorageError):
    """Too long passed between storing the object and committing its record."""


class _Outcome(Protocol):
    @property
    def deployed(self) -> bool: ...


R = TypeVar("R", bound=_Outcome)


class Hold:
    """One deploy's claim on its object key, from before it is stored until its commit."""

    def __init__(self, key: str, commit_within: float) -> None:
        self.key = key
        self.commit_within = commit_within
        self.stored_at: float | None = None

    def storing(self) -> None:
        """Call just before storing or refreshing the object: its age starts here at the latest."""
        self.stored_at = time.monotonic()

    def checked(self, outcome: R) -> R:
        """Inside the deploy's transaction, before it commits: may it reference the object?"""
        if not outcome.deployed:
            return outcome  # nothing new references the object
        if self.stored_at is None:
            raise ObjectNotStored(self.key)
        waited = time.monotonic() - self.stored_at
        if waited > self.commit_within:
            # The sweep may already count the object as an old orphan.
            raise StoreExpired(
                f"the deploy took {waited:.0f} s to commit after storing the firmware, more than "
                f"{self.commit_within:.0f} s (half of OTASHIP_GC_GRACE); nothing was deployed, try again"
            )
        return outcome


class ObjectsInFlight:
    """The keys this process is storing; several deploys may hold one key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    @contextmanager
    def hold(self, key: str, *, commit_within: float) -> Iterator[Hold]:
        with self._lock:
            self._held[key] += 1
        try:
            yield Hold(key, commit_within)
        finally:
            with self._lock:
                self._held[key] -= 1
                if self._held[key] <= 0:
                    del self._held[key]

    def keys(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)
