"""What devices ask for, answered from memory.

Every device of a fleet checks `latest` at once after a trigger, so the answer
must not cost a database round trip per request. Entries live for `ttl`
seconds: a deploy on another replica, or a group the CLI just created, is seen
within that time; a deploy on this replica invalidates at once. Concurrent
misses for one group share a single database read.

Devices must not notice a database outage. Each group's last answer the
database gave is kept (deploys do not clear it) and served while the database
fails; the database is then asked again at most once every `retry_interval`
seconds, so an outage costs devices no wait. Only a group this replica has
never found fails, with DatabaseUnavailable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import anyio.to_thread
from sqlalchemy.engine import Engine
from sqlmodel import select

from otaship.receiver.db.engine import read_session
from otaship.receiver.db.models import Group, GroupOta
from otaship.receiver.ids import is_id
from otaship.receiver.logs import short_error
from otaship.receiver.outage import OutageLog
from otaship.receiver.targeting.effective import resolve_effective

log = logging.getLogger("otaship.catalog")

DEFAULT_TTL = 0.5
# While the database fails: seconds between attempts to read it again.
DEFAULT_RETRY_INTERVAL = 1.0
MAX_ENTRIES = 200_000


class DatabaseUnavailable(Exception):
    """The database failed, and this replica has never read the group."""


@dataclass(frozen=True)
class ServedFirmware:
    version: str
    object_key: str
    sha256: str
    md5: str
    size: int

    @cached_property
    def latest_body(self) -> bytes:
        """The `latest` answer, serialised once per deploy rather than per device."""
        return json.dumps({"ver": self.version}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class GroupEntry:
    group_id: str
    token: str
    firmware: ServedFirmware | None


def load_entry(engine: Engine, group_id: str) -> GroupEntry | None:
    """Read a group and its effective firmware (blocking)."""
    with read_session(engine) as session:
        group = session.get(Group, group_id)
        if group is None:
            return None
        parents: dict[str, str | None] = {group.id: group.parent_id}
        current = group.parent_id
        while current is not None and current not in parents:
            parent = session.get(Group, current)
            if parent is None:
                break
            parents[parent.id] = parent.parent_id
            current = parent.parent_id
        otas = {
            ota.group_id: ota
            for ota in session.exec(
                select(GroupOta).where(GroupOta.group_id.in_(list(parents)))  # type: ignore[attr-defined]
            )
        }
        ota = resolve_effective(parents, otas)[group.id]
        firmware = (
            None
            if ota is None
            else ServedFirmware(ota.version, ota.image.object_key, ota.sha256, ota.image.md5, ota.image.size)
        )
        return GroupEntry(group.id, group.token, firmware)


class FirmwareCatalog:
    def __init__(
        self, engine: Engine, *, ttl: float = DEFAULT_TTL, retry_interval: float = DEFAULT_RETRY_INTERVAL
    ) -> None:
        self.engine = engine
        self.ttl = ttl
        self.retry_interval = retry_interval
        self._entries: dict[str, tuple[float, GroupEntry | None]] = {}
        self._loading: dict[str, asyncio.Future[GroupEntry | None]] = {}
        # Each existing group's last answer from the database, oldest read first.
        self._known: OrderedDict[str, GroupEntry] = OrderedDict()
        # While the database fails: not before this (monotonic) time again.
        self._retry_at = 0.0
        self._outage = OutageLog(log, "device routes answer from memory")

    async def lookup(self, group_id: str) -> GroupEntry | None:
        if not is_id(group_id):
            return None
        now = time.monotonic()
        cached = self._entries.get(group_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if now < self._retry_at and group_id in self._known:
            return self._known[group_id]
        pending = self._loading.get(group_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[GroupEntry | None] = asyncio.get_running_loop().create_future()
        self._loading[group_id] = future
        try:
            entry = await self._load(group_id)
        except BaseException as exc:
            future.set_exception(exc)
            # Mark it retrieved: the waiters (if any) get it; nobody else must.
            future.exception()
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            del self._loading[group_id]

    async def _load(self, group_id: str) -> GroupEntry | None:
        try:
            entry = await anyio.to_thread.run_sync(load_entry, self.engine, group_id)
        except Exception as exc:
            self._retry_at = time.monotonic() + self.retry_interval
            self._outage.failed(exc)
            if group_id in self._known:
                return self._known[group_id]
            raise DatabaseUnavailable(short_error(exc)) from exc
        self._retry_at = 0.0
        self._outage.recovered()
        now = time.monotonic()
        if len(self._entries) >= MAX_ENTRIES:
            self._evict(now)
        self._entries[group_id] = (now + self.ttl, entry)
        # Only groups that exist: ids somebody made up must not push real ones out.
        if entry is not None:
            self._known[group_id] = entry
            self._known.move_to_end(group_id)
            if len(self._known) > MAX_ENTRIES:
                self._known.popitem(last=False)
        return entry

    def invalidate(self) -> None:
        """Forget the fresh answers: a deploy can change any subgroup's answer.

        The last known ones stay for an outage: until the database answers
        again, the answer from before the deploy beats none.
        """
        self._entries.clear()

    def _evict(self, now: float) -> None:
        expired = [key for key, (deadline, _) in self._entries.items() if deadline <= now]
        for key in expired:
            del self._entries[key]
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
