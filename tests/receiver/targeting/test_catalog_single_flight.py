"""The device catalog's single flight: concurrent lookups of one group share one database read.

The read is held open (a wrapper around `load_entry` waits in its thread) until
every lookup has started, so the lookups really overlap; the statements the
reads ran are counted with a SQLAlchemy event, on both databases.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from otaship.receiver.services import Services
from otaship.receiver.targeting import catalog as catalog_module
from otaship.receiver.targeting.catalog import DatabaseUnavailable, FirmwareCatalog, GroupEntry, load_entry
from tests.conftest import Fleet
from tests.receiver.http.management.test_ota import deploy

LOOKUPS = 50
TIMEOUT = 10.0


# Set on a thread while it runs a catalog read: the app's own background work
# uses the same engine, and its statements do not count.
_reading = threading.local()


class HeldReads:
    """Counts `load_entry` calls, and holds each until released."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, engine: Engine, group_id: str) -> GroupEntry | None:
        self.calls.append(group_id)
        self.entered.set()
        assert self.release.wait(TIMEOUT), "the test never released the read"
        if self.fail:
            raise ConnectionError("connection refused (the database is down)")
        _reading.active = True
        try:
            return load_entry(engine, group_id)
        finally:
            _reading.active = False


@pytest.fixture
def statements(services: Services) -> Iterator[list[str]]:
    """Every SQL statement a catalog read runs from now on."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if getattr(_reading, "active", False):
            seen.append(statement)

    event.listen(services.engine, "before_cursor_execute", record)
    yield seen
    event.remove(services.engine, "before_cursor_execute", record)


async def overlapping(catalog: FirmwareCatalog, reads: HeldReads, group_ids: list[str]) -> list[Any]:
    """Look every id up at once while the first read is held; the results, or the exceptions."""
    first = asyncio.create_task(catalog.lookup(group_ids[0]))
    # The first lookup's read is under way in its thread...
    assert await asyncio.to_thread(reads.entered.wait, TIMEOUT)
    rest = [asyncio.create_task(catalog.lookup(group_id)) for group_id in group_ids[1:]]
    # ...and every other lookup runs up to its first wait before the read may end:
    # callbacks run in the order they were scheduled, the tasks' first steps first.
    asyncio.get_running_loop().call_soon(reads.release.set)
    return await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), TIMEOUT)


def catalog_of(services: Services, monkeypatch: pytest.MonkeyPatch, reads: HeldReads) -> FirmwareCatalog:
    monkeypatch.setattr(catalog_module, "load_entry", reads)
    # No freshness window: every answer here comes from a read or from the one in flight.
    return FirmwareCatalog(services.engine, ttl=0)


def test_concurrent_lookups_of_one_group_make_one_read(
    client: TestClient,
    services: Services,
    fleet: Fleet,
    statements: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = fleet.owner()
    parent = fleet.group(owner, name="fleet")
    group = fleet.group(owner, name="kitchen", parent=parent)
    deploy(client, owner, parent, "1.4.0")
    reads = HeldReads()
    catalog = catalog_of(services, monkeypatch, reads)
    statements.clear()

    answers = asyncio.run(overlapping(catalog, reads, [group.id] * LOOKUPS))

    assert reads.calls == [group.id]
    assert len(answers) == LOOKUPS and all(answer is answers[0] for answer in answers)
    entry = answers[0]
    assert isinstance(entry, GroupEntry)
    assert (entry.group_id, entry.token) == (group.id, group.token)
    assert entry.firmware is not None and entry.firmware.version == "1.4.0"
    assert entry.firmware.latest_body == b'{"ver":"1.4.0"}'
    # Exactly the statements of one lookup on its own.
    shared = list(statements)
    statements.clear()
    reads.entered.clear()
    assert asyncio.run(catalog.lookup(group.id)) == entry
    assert shared == statements
    assert len(shared) >= 2 and any("group_otas" in statement for statement in shared)
    assert reads.calls == [group.id, group.id]


def test_lookups_of_different_groups_read_each_once(
    services: Services, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = fleet.owner()
    groups = [fleet.group(owner, name=f"g{n}") for n in range(3)]
    reads = HeldReads()
    catalog = catalog_of(services, monkeypatch, reads)
    ids = [groups[n % 3].id for n in range(30)]

    answers = asyncio.run(overlapping(catalog, reads, ids))

    assert sorted(reads.calls) == sorted(g.id for g in groups)
    assert [a.group_id for a in answers] == ids
    assert all(a.firmware is None for a in answers)


def test_a_failed_read_fails_every_waiter_and_is_not_repeated(
    services: Services, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = fleet.group(fleet.owner())
    reads = HeldReads(fail=True)
    catalog = catalog_of(services, monkeypatch, reads)

    answers = asyncio.run(overlapping(catalog, reads, [group.id] * LOOKUPS))

    assert reads.calls == [group.id]
    assert [type(a) for a in answers] == [DatabaseUnavailable] * LOOKUPS
    assert str(answers[0]) == "ConnectionError: connection refused (the database is down)"
