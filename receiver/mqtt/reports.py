"""Device reports: status and update-response messages, taken in by the batch.

paho hands messages over from its own thread; they are checked there (cheap,
receiver/mqtt/report_payload.py: a malformed one never joins a batch),
queued, and written in batches: one transaction per batch, not per message.
Devices send status every few seconds, so a device row is written only when
its version or code changed, or its last_seen is getting stale. Every report
still counts for a rollout in progress.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio.to_thread
from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from receiver.db import write_session
from receiver.fields import quoted
from receiver.ids import utcnow
from receiver.models import Device, Rollout, RolloutDevice, User
from receiver.mqtt.report_payload import RESPONSE, STATUS, BadReport, Report, parse_report
from receiver.rollout import (
    DeviceProgress,
    after_response,
    after_stage_closed,
    after_status,
    stage_is_open,
)
from receiver.rollouts import followed_by_reports

if TYPE_CHECKING:
    from receiver.metrics import Metrics

log = logging.getLogger("otaship.reports")

__all__ = ["RESPONSE", "STATUS", "BadReport", "Report", "ReportIngester", "parse_report"]

LAST_SEEN_RESOLUTION = timedelta(seconds=60)
MAX_QUEUE = 200_000
CHUNK = 500
# Reports worth a transaction of their own without waiting.
FULL_BATCH = 2000


@dataclass
class _Known:
    """What we last wrote for a device, so unchanged reports cost no write."""

    owner_id: str
    fw_version: str | None
    last_code: int | None
    last_seen: datetime | None
    uptime: float | None = None


class ReportIngester:
    def __init__(self, engine: Engine, *, flush_interval: float = 0.1, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.flush_interval = flush_interval
        self._queue: deque[Report] = deque()
        self._lock = threading.Lock()
        self._devices: dict[str, _Known] = {}
        self._owners: dict[str, str] = {}  # mqtt_user -> owner id
        self.accepted = 0
        self.dropped = 0
        self.writes = 0
        self._idle = asyncio.Event()

    def submit(self, topic: str, payload: bytes) -> None:
        """Called from paho's thread for every report message."""
        try:
            report = parse_report(topic, payload)
        except BadReport as exc:
            self.dropped += 1
            self._count(topic.rsplit("/", 1)[-1], "dropped")
            # The topic names the owner's MQTT user and the device: no secret.
            log.info("dropped a report on %s: %s", quoted(topic[:200]), exc)
            return
        with self._lock:
            if len(self._queue) >= MAX_QUEUE:
                self.dropped += 1
                self._count(report.kind, "dropped")
                log.warning("report queue full; dropping a report from %s", report.device_id)
                return
            self._queue.append(report)

    def _count(self, kind: str, result: str, count: int = 1) -> None:
        if self.metrics is not None and count:
            self.metrics.report(kind, result, count)

    def _take(self) -> list[Report]:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
        return batch

    async def run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                try:
                    await anyio.to_thread.run_sync(self.ingest, batch)
                except Exception:
                    # The batch is lost, but the next status (a few seconds
                    # away) carries the same facts; the subscriber goes on.
                    log.exception("could not store %d report(s)", len(batch))
                    self._devices.clear()
                if len(batch) < FULL_BATCH:
                    # A transaction costs about as much as a few hundred reports
                    # in it: under load, let the next batch fill up for a moment.
                    await asyncio.sleep(self.flush_interval)
            else:
                self._idle.set()
                await asyncio.sleep(self.flush_interval)
                self._idle.clear()

    async def drained(self) -> None:
        """Wait until everything submitted so far is stored (for tests and shutdown)."""
        while True:
            with self._lock:
                empty = not self._queue
            if empty and self._idle.is_set():
                return
            await asyncio.sleep(self.flush_interval / 2)

    # --- blocking part, in a worker thread ----------------------------------------

    def ingest_messages(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """Parse and store raw (topic, payload) pairs at once (blocking)."""
        for topic, payload in messages:
            self.submit(topic, payload)
        self.ingest(self._take())

    def ingest(self, batch: list[Report]) -> None:
        with write_session(self.engine) as session:
            self._load(session, batch)
            accepted = [r for r in batch if self._owns(r)]
            self.dropped += len(batch) - len(accepted)
            self.accepted += len(accepted)
            if self.metrics is not None:
                for kind in (STATUS, RESPONSE):
                    taken = sum(1 for r in accepted if r.kind == kind)
                    self._count(kind, "accepted", taken)
                    self._count(kind, "dropped", sum(1 for r in batch if r.kind == kind) - taken)
            if not accepted:
                return
            # Uptimes as they were before this batch: a 201 is judged against the
            # uptime the device had just before it, not after a later reboot.
            uptimes = {r.device_id: self._devices[r.device_id].uptime for r in accepted}
            changed = self._apply_to_devices(accepted)
            if changed:
                session.connection().execute(
                    update(Device)
                    .where(col(Device.id) == bindparam("device_id"))
                    .values(
                        firmware_version=bindparam("fw"),
                        last_code=bindparam("code"),
                        last_seen=bindparam("seen"),
                    ),
                    [
                        {"device_id": d, "fw": k.fw_version, "code": k.last_code, "seen": k.last_seen}
                        for d, k in changed.items()
                    ],
                )
                self.writes += len(changed)
            self._apply_to_rollouts(session, accepted, uptimes)

    def _load(self, session: Session, batch: Iterable[Report]) -> None:
        users = {r.mqtt_user for r in batch} - self._owners.keys()
        for chunk in _chunks(sorted(users)):
            for mqtt_user, owner_id in session.exec(
                select(User.mqtt_user, User.id).where(col(User.mqtt_user).in_(chunk))
            ):
                self._owners[mqtt_user] = owner_id
        missing = {r.device_id for r in batch} - self._devices.keys()
        for chunk in _chunks(sorted(missing)):
            for device in session.exec(select(Device).where(col(Device.id).in_(chunk))):
                self._devices[device.id] = _Known(
                    device.owner_id, device.firmware_version, device.last_code, device.last_seen
                )

    def _owns(self, report: Report) -> bool:
        """Only the owner's MQTT user may speak for a device."""
        known = self._devices.get(report.device_id)
        owner_id = self._owners.get(report.mqtt_user)
        if known is None or owner_id is None or known.owner_id != owner_id:
            log.debug("dropped a report for unknown or foreign device %s", report.device_id)
            return False
        return True

    def _apply_to_devices(self, reports: list[Report]) -> dict[str, _Known]:
        changed: dict[str, _Known] = {}
        for report in reports:
            known = self._devices[report.device_id]
            dirty = known.last_seen is None or report.at - known.last_seen >= LAST_SEEN_RESOLUTION
            if report.kind == STATUS:
                dirty = dirty or report.fw_version != known.fw_version
                known.fw_version = report.fw_version
                known.uptime = report.uptime
            else:
                dirty = dirty or report.code != known.last_code
                known.last_code = report.code
            if dirty:
                known.last_seen = report.at
                changed[report.device_id] = known
        return changed

    def _apply_to_rollouts(
        self, session: Session, reports: list[Report], uptimes: dict[str, float | None]
    ) -> None:
        now = utcnow()
        followed = followed_by_reports(now)
        # Most of the time no rollout is running or just ended: one probe of
        # the state and ended_at indexes then spares looking up every reporting
        # device among rollout devices.
        if session.exec(select(Rollout.id).where(followed).limit(1)).first() is None:
            return
        device_ids = sorted({r.device_id for r in reports})
        rows: dict[str, list[tuple[RolloutDevice, str, str]]] = {}
        for chunk in _chunks(device_ids):
            for row, version, state in session.exec(
                select(RolloutDevice, Rollout.version, Rollout.state)
                .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
                .where(col(RolloutDevice.device_id).in_(chunk), followed)
            ):
                rows.setdefault(row.device_id, []).append((row, version, state))
        if not rows:
            return
        for report in reports:
            if report.kind == STATUS:
                uptimes[report.device_id] = report.uptime
            for row, deployed, state in rows.get(report.device_id, ()):
                before = DeviceProgress(
                    row.outcome, row.started_update, row.uptime_at_start, row.fw_version, row.code
                )
                if not stage_is_open(state, row.stage):
                    after = after_stage_closed(before, fw_version=report.fw_version, code=report.code)
                elif report.kind == STATUS:
                    assert report.fw_version is not None
                    after = after_status(before, fw_version=report.fw_version, uptime=report.uptime, deployed=deployed)
                else:
                    assert report.code is not None
                    after = after_response(before, code=report.code, last_uptime=uptimes.get(report.device_id))
                if after != before:
                    row.outcome = after.outcome
                    row.started_update = after.started_update
                    row.uptime_at_start = after.uptime_at_start
                    row.fw_version = after.fw_version
                    row.code = after.code
                    row.updated_at = now
                    session.add(row)


def _chunks(items: list[str], size: int = CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
