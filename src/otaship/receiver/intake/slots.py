"""How many uploads each owner has in flight on this replica, within a cap.

An upload holds a connection, a spool file and up to the firmware limit of
disk until it ends: without a cap, one owner's stalled or slow uploads could
fill the disk the other owners' uploads need. The count lives in memory, so
the cap is per replica, like the connections it protects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UploadSlots:
    def __init__(self, per_owner: int) -> None:
        self.per_owner = per_owner
        self._in_flight: dict[str, int] = {}

    def in_flight(self, owner_id: str) -> int:
        return self._in_flight.get(owner_id, 0)

    @contextlib.contextmanager
    def hold(self, owner_id: str) -> Iterator[bool]:
        """One slot of `owner_id` for the block; yields False (and holds none) when all are taken.

        Only the event loop calls this, so the check and the count need no lock.
        """
        if self.in_flight(owner_id) >= self.per_owner:
            yield False
            return
        self._in_flight[owner_id] = self.in_flight(owner_id) + 1
        try:
            yield True
        finally:
            left = self._in_flight[owner_id] - 1
            if left:
                self._in_flight[owner_id] = left
            else:
                del self._in_flight[owner_id]
