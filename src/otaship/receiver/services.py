"""The receiver's long-lived parts, built once when the app starts and never
reassigned: what changes inside them (caches, counters, listeners) is each
part's own business."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.requests import HTTPConnection

from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.intake.in_flight import ObjectsInFlight
from otaship.receiver.intake.slots import UploadSlots
from otaship.receiver.settings import Settings
from otaship.receiver.storage import Storage
from otaship.receiver.targeting.catalog import FirmwareCatalog
from otaship.receiver.threads import in_thread
from otaship.receiver.ttl_map import TtlMap

T = TypeVar("T")


class DeployListeners:
    """What runs after anything that changes what devices should run: the
    background's wake-ups (trigger publisher, rollout clock) while it runs."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def clear(self) -> None:
        self._callbacks.clear()

    def __call__(self) -> None:
        for callback in self._callbacks:
            callback()


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    storage: Storage
    catalog: FirmwareCatalog
    # Whether deploys write triggers (MQTT is not `none`).
    notify: bool = False
    # Each owner's number of OTAs for the listing's recordsTotal: counting 100k
    # rows per page request is the listing's main cost. Another replica's
    # deploy shows within the TTL; this replica's at once.
    listing_totals: TtlMap[str, int] = field(default_factory=lambda: TtlMap(1.0))
    on_deploy: DeployListeners = field(default_factory=DeployListeners)
    # Objects being stored whose records are not committed yet: the sweep keeps them.
    objects_in_flight: ObjectsInFlight = field(default_factory=ObjectsInFlight)
    # Each owner's uploads in flight on this replica.
    upload_slots: UploadSlots = field(init=False)

    def __post_init__(self) -> None:
        # Derived from the settings: the one field a frozen dataclass sets itself.
        object.__setattr__(self, "upload_slots", UploadSlots(self.settings.max_uploads_per_owner))

    @staticmethod
    def of(conn: HTTPConnection) -> Services:
        services: Services = conn.app.state.services
        return services

    async def run_db(self, work: Callable[[Session], T]) -> T:
        """Run blocking database work off the event loop, in a read session."""

        def call() -> T:
            with read_session(self.engine) as session:
                return work(session)

        return await in_thread(call)

    async def run_write(self, work: Callable[[Session], T]) -> T:
        """Run blocking work in one write transaction, committed when it returns."""

        def call() -> T:
            with write_session(self.engine) as session:
                return work(session)

        return await in_thread(call)

    def deployed(self) -> None:
        """Something was deployed: forget cached answers and publish triggers now."""
        self.catalog.invalidate()
        self.listing_totals.clear()
        self.on_deploy()

    async def run_blocking(self, work: Callable[[], T]) -> T:
        return await in_thread(work)
