"""Device reports: status and update-response messages, taken in by the batch.

paho hands messages over from its own thread; they are checked there (cheap,
receiver/mqtt/report_payload.py), queued, and written in batches: one
transaction per batch, not per message. Devices send status every few seconds,
so a device row is written only when its version or code changed, or its
last_seen is getting stale. Every report still counts for a rollout in progress.

A batch mixes every owner's reports, so one bad report must not cost the others
theirs. Malformed ones never enter the queue. A batch the database refuses
anyway is stored again in halves, down to the single report it refuses, which
alone is dropped. While the database cannot be reached at all, batches go back
to the front of the queue and wait for it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from otaship.protocol import RESPONSE, STATUS
from otaship.receiver.db.engine import database_reachable, write_session
from otaship.receiver.db.enums import Outcome, Stage
from otaship.receiver.db.models import (
    DeployDevice,
    Device,
    PlainDeploy,
    Rollout,
    RolloutDevice,
    RolloutWave,
    User,
)
from otaship.receiver.fields import quoted
from otaship.receiver.ids import utcnow
from otaship.receiver.log_summary import Tally, counts_text, seconds_text
from otaship.receiver.logs import short_error
from otaship.receiver.mqtt.report_payload import BadReport, Report, parse_report
from otaship.receiver.outage import OutageLog
from otaship.receiver.rollouts.plain import followed_plain_deploys
from otaship.receiver.rollouts.policy import (
    REVERTED,
    DeviceProgress,
    after_response,
    after_stage_closed,
    after_status,
    boot_time,
    booted_since,
    stage_is_open,
)
from otaship.receiver.rollouts.store import followed_by_reports
from otaship.receiver.settings import DEFAULT_REBOOT_LOOP_BOOTS
from otaship.receiver.threads import in_thread

if TYPE_CHECKING:
    from otaship.receiver.metrics import Metrics

log = logging.getLogger("otaship.reports")

__all__ = ["RESPONSE", "STATUS", "BadReport", "Report", "ReportIngester", "parse_report"]

LAST_SEEN_RESOLUTION = timedelta(seconds=60)
MAX_QUEUE = 200_000
CHUNK = 500
# Reports worth a transaction of their own without waiting.
FULL_BATCH = 2000
# Seconds between attempts while the database cannot be reached.
RETRY_INTERVAL = 1.0

INVALID = "invalid"
NOT_OWNED = "not_owned"
QUEUE_FULL = "queue_full"
STORE_FAILED = "store_failed"

# Why a report was not the reporter's to make (see ReportIngester._owns).
UNREGISTERED = "unregistered"  # no device with this id
FOREIGN = "foreign"  # the device belongs to another owner
UNKNOWN_USER = "unknown_user"  # no owner has this MQTT user (an outside broker)
# Device ids a summary names, those with the most reports first.
NAMED_DEVICES = 5


def not_owned_summary(seconds: float, by_reason: dict[str, int], by_device: dict[str, int]) -> str:
    """The summary line of the reports dropped as not the reporter's (pure)."""
    total = sum(by_reason.values())
    busiest = sorted(by_device.items(), key=lambda item: (-item[1], item[0]))[:NAMED_DEVICES]
    named = " ".join(f"{device}={count}" for device, count in busiest)
    more = f" and {len(by_device) - NAMED_DEVICES} more" if len(by_device) > NAMED_DEVICES else ""
    return (
        f"dropped {total} report(s) of unregistered or foreign devices in the last {seconds_text(seconds)} "
        f"({counts_text(by_reason)}) from {len(by_device)} device(s): {named}{more}"
    )


def split_on_failure(part: list[Report], database_up: bool) -> list[list[Report]] | None:
    """What to store next after `part` failed: its halves, [] to drop its one
    report, or None to keep it all for when the database is back."""
    if not database_up:
        return None
    if len(part) == 1:
        return []
    middle = len(part) // 2
    return [part[:middle], part[middle:]]


@dataclass
class _Known:
    """A device's row as this batch found it, so unchanged reports cost no write."""

    owner_id: str
    fw_version: str | None
    last_code: int | None
    last_seen: datetime | None
    uptime: float | None = None
    # When it booted, by its last status (report time minus uptime), or by
    # its row when another worker saw a later boot.
    booted_at: datetime | None = None
    # The boot its row holds.
    stored_boot: datetime | None = None


class ReportIngester:
    def __init__(
        self,
        engine: Engine,
        *,
        flush_interval: float = 0.1,
        metrics: Metrics | None = None,
        reboot_loop_boots: int = DEFAULT_REBOOT_LOOP_BOOTS,
    ) -> None:
        self.engine = engine
        # Boots on the new version beyond the first before a reboot loop (a setting).
        self.reboot_loop_boots = reboot_loop_boots
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
        self._outage = OutageLog(log, "device reports wait in memory")
        # Reports dropped as not the reporter's, since the last summary line.
        self._not_owned = Tally()
        self._not_owned_devices = Tally()

    def submit(self, topic: str, payload: bytes) -> None:
        """Called from paho's thread for every report message."""
        try:
            report = parse_report(topic, payload)
        except BadReport as exc:
            kind = topic.rsplit("/", 1)[-1]
            self._drop(INVALID, kind if kind in (STATUS, RESPONSE) else "unknown")
            # The topic names the owner's MQTT user and the device: no secret.
            log.info("dropped a report on %s: %s", quoted(topic[:200]), exc)
            return
        with self._lock:
            full = len(self._queue) >= MAX_QUEUE
            if not full:
                self._queue.append(report)
        if full:
            self._drop(QUEUE_FULL, report.kind)
            log.warning("report queue full; dropping a report from %s", report.device_id)

    def _drop(self, reason: str, kind: str, count: int = 1) -> None:
        self.dropped += count
        self._count(kind, "dropped", count)
        if self.metrics is not None and count:
            self.metrics.report_dropped(reason, count)

    def _count(self, kind: str, result: str, count: int = 1) -> None:
        if self.metrics is not None and count:
            self.metrics.report(kind, result, count)

    def _take(self) -> list[Report]:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
        return batch

    def _put_back(self, reports: list[Report]) -> None:
        """Reports the database could not take, back at the front of the queue, in order.

        Over the bound, the newest go, as `submit` drops the newest when full.
        """
        with self._lock:
            self._queue.extendleft(reversed(reports))
            lost = [self._queue.pop() for _ in range(len(self._queue) - MAX_QUEUE)]
        for report in lost:
            self._drop(QUEUE_FULL, report.kind)
        if lost:
            log.warning(
                "report queue full while the database is unavailable; dropped %d report(s)", len(lost)
            )

    async def run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                stored = await in_thread(functools.partial(self.store, batch))
                if not stored:
                    await asyncio.sleep(RETRY_INTERVAL)
                elif len(batch) < FULL_BATCH:
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

    def ingest_messages(self, messages: Iterable[tuple[str, bytes]]) -> bool:
        """Parse and store raw (topic, payload) pairs at once (blocking); see `store`."""
        for topic, payload in messages:
            self.submit(topic, payload)
        return self.store(self._take())

    def store(self, batch: list[Report]) -> bool:
        """Store a batch; False when the database could not be reached and the
        reports not yet stored went back to the queue.

        A failing batch is stored again in halves, so that the reports the
        database takes are stored and the one it refuses is dropped alone: a
        few more transactions, only when something failed.
        """
        parts = [batch]
        while parts:
            part = parts.pop(0)
            try:
                self.ingest(part)
            except Exception as exc:
                # What was applied in memory for these devices never reached the database.
                for report in part:
                    self._devices.pop(report.device_id, None)
                halves = split_on_failure(part, database_reachable(self.engine))
                if halves is None:
                    self._outage.failed(exc)
                    self._put_back([r for p in (part, *parts) for r in p])
                    return False
                if not halves:
                    self._refused(part[0], exc)
                parts[:0] = halves
        self._outage.recovered()
        return True

    def _refused(self, report: Report, exc: BaseException) -> None:
        self._drop(STORE_FAILED, report.kind)
        log.warning(
            "dropped a %s report of device %s: the database refused it (%s)",
            report.kind,
            report.device_id,
            short_error(exc),
        )

    def ingest(self, batch: list[Report]) -> None:
        """Store a batch in one transaction (blocking); raises if the transaction fails."""
        refused: list[tuple[Report, str]] = []
        with write_session(self.engine) as session:
            self._load(session, batch)
            accepted = [r for r in batch if self._owns(r, refused)]
            changed: dict[str, _Known] = {}
            if accepted:
                # Uptimes as they were before this batch: a 201 is judged against the
                # uptime the device had just before it, not after a later reboot.
                uptimes = {
                    r.device_id: (self._devices[r.device_id].uptime, self._devices[r.device_id].booted_at)
                    for r in accepted
                }
                changed = self._apply_to_devices(accepted)
                if changed:
                    session.connection().execute(
                        update(Device)
                        .where(col(Device.id) == bindparam("device_id"))
                        .values(
                            firmware_version=bindparam("fw"),
                            last_code=bindparam("code"),
                            last_seen=bindparam("seen"),
                            booted_at=bindparam("boot"),
                        ),
                        [
                            {
                                "device_id": d,
                                "fw": k.fw_version,
                                "code": k.last_code,
                                "seen": k.last_seen,
                                "boot": k.stored_boot,
                            }
                            for d, k in changed.items()
                        ],
                    )
                self._apply_to_rollouts(session, accepted, uptimes)
        # Counted once committed: a batch that failed is counted when it is stored again.
        self.writes += len(changed)
        self.accepted += len(accepted)
        for kind in (STATUS, RESPONSE):
            taken = sum(1 for r in accepted if r.kind == kind)
            self._count(kind, "accepted", taken)
            not_taken = sum(1 for r in batch if r.kind == kind) - taken
            if not_taken:
                self._drop(NOT_OWNED, kind, not_taken)
        for report, reason in refused:
            self._not_owned.add(reason)
            self._not_owned_devices.add(report.device_id)

    def write_summary(self, seconds: float) -> None:
        """Log the reports dropped as not the reporter's since the last call, in one line."""
        by_reason = self._not_owned.take()
        by_device = self._not_owned_devices.take()
        if by_reason:
            log.info(
                not_owned_summary(seconds, by_reason, by_device),
                extra={"event": "reports_not_owned", "by_reason": by_reason, "devices": len(by_device)},
            )

    def _load(self, session: Session, batch: Iterable[Report]) -> None:
        users = {r.mqtt_user for r in batch} - self._owners.keys()
        for chunk in _chunks(sorted(users)):
            for mqtt_user, owner_id in session.exec(
                select(User.mqtt_user, User.id).where(col(User.mqtt_user).in_(chunk))
            ):
                self._owners[mqtt_user] = owner_id
        # Every device of the batch, not only the ones never seen: other workers
        # and replicas take this device's other reports (a shared subscription
        # splits them) and write its row. A version remembered from an earlier
        # report here may be stale, and a report agreeing with it would then
        # be skipped as unchanged while the row says otherwise.
        for chunk in _chunks(sorted({r.device_id for r in batch})):
            found: set[str] = set()
            for device in session.exec(select(Device).where(col(Device.id).in_(chunk))):
                found.add(device.id)
                known = self._devices.get(device.id)
                if known is None:
                    self._devices[device.id] = _Known(
                        device.owner_id,
                        device.firmware_version,
                        device.last_code,
                        device.last_seen,
                        booted_at=device.booted_at,
                        stored_boot=device.booted_at,
                    )
                else:
                    known.owner_id, known.fw_version = device.owner_id, device.firmware_version
                    known.last_code, known.last_seen = device.last_code, device.last_seen
                    known.stored_boot = device.booted_at
                    # This worker's own view of its boot stays, unless another worker
                    # saw it boot since: then the uptime here was of the boot before.
                    if device.booted_at is not None and (
                        known.booted_at is None or booted_since(device.booted_at, known.booted_at)
                    ):
                        known.booted_at, known.uptime = device.booted_at, None
            # One deleted since is forgotten: its reports are an unregistered device's.
            for device_id in set(chunk) - found:
                self._devices.pop(device_id, None)

    def _owns(self, report: Report, refused: list[tuple[Report, str]]) -> bool:
        """Only the owner's MQTT user may speak for a device; why not goes to `refused`.

        Counted, and summarised once a minute (write_summary): a device left
        unregistered reports every few seconds, forever."""
        known = self._devices.get(report.device_id)
        owner_id = self._owners.get(report.mqtt_user)
        if known is None or owner_id is None or known.owner_id != owner_id:
            reason = UNKNOWN_USER if owner_id is None else UNREGISTERED if known is None else FOREIGN
            log.debug("dropped a report of %s device %s", reason, report.device_id)
            refused.append((report, reason))
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
                known.booted_at = boot_time(report.at, report.uptime)
                if known.booted_at is not None:
                    # A new boot is written at once, for the worker that takes the
                    # device's next 201; the same boot only with the row's other
                    # writes, which keep it fresh against the drift of its clock.
                    moved = known.stored_boot is None or booted_since(known.booted_at, known.stored_boot)
                    dirty = dirty or moved
                    if dirty:
                        known.stored_boot = known.booted_at
            else:
                dirty = dirty or report.code != known.last_code
                known.last_code = report.code
            if dirty:
                known.last_seen = report.at
                changed[report.device_id] = known
        return changed

    def _apply_to_rollouts(
        self,
        session: Session,
        reports: list[Report],
        uptimes: dict[str, tuple[float | None, datetime | None]],
    ) -> None:
        """Move the outcomes of the reporting devices in the rollouts and plain
        deploys that follow them (rollouts/plain.py)."""
        now = utcnow()
        followed = followed_by_reports(now)
        followed_plain = followed_plain_deploys()
        # Most of the time no rollout or plain deploy is followed: one probe of
        # each ended_at index then spares looking up every reporting device.
        any_rollout = session.exec(select(Rollout.id).where(followed).limit(1)).first() is not None
        any_plain = (
            session.exec(select(PlainDeploy.deployment_id).where(followed_plain).limit(1)).first() is not None
        )
        if not any_rollout and not any_plain:
            return
        device_ids = sorted({r.device_id for r in reports})
        # Each device's rows: (row, the version deployed, whether its stage is still open).
        rows: dict[str, list[tuple[RolloutDevice | DeployDevice, str, bool]]] = {}
        # A rollback row's version rolled back from, by the row's id().
        rolled_from: dict[int, str] = {}
        for chunk in _chunks(device_ids):
            if any_rollout:
                for stage_row, version, state, wave in session.exec(
                    select(RolloutDevice, Rollout.version, col(Rollout.state), col(Rollout.wave))
                    .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
                    .where(col(RolloutDevice.device_id).in_(chunk), followed)
                ):
                    if stage_row.stage == Stage.ROLLBACK:
                        # A rollback's device succeeds on the version it goes back to
                        # (rollouts/rollback.py); rare, and its wave is read once a session.
                        rolled = session.get(RolloutWave, (stage_row.rollout_id, stage_row.wave))
                        if rolled is not None and rolled.previous_version is not None:
                            rolled_from[id(stage_row)] = version
                            version = rolled.previous_version
                    is_open = stage_is_open(state, stage_row.stage, wave=stage_row.wave, current_wave=wave)
                    rows.setdefault(stage_row.device_id, []).append((stage_row, version, is_open))
            if any_plain:
                for plain_row, version, ended_at in session.exec(
                    select(DeployDevice, PlainDeploy.version, PlainDeploy.ended_at)
                    .join(PlainDeploy, col(PlainDeploy.deployment_id) == col(DeployDevice.deployment_id))
                    .where(col(DeployDevice.device_id).in_(chunk), followed_plain)
                ):
                    rows.setdefault(plain_row.device_id, []).append((plain_row, version, ended_at is None))
        if not rows:
            return
        for report in reports:
            if report.kind == STATUS:
                uptimes[report.device_id] = (report.uptime, boot_time(report.at, report.uptime))
            for row, deployed, is_open in rows.get(report.device_id, ()):
                tracked = isinstance(row, RolloutDevice)
                before = DeviceProgress(
                    row.outcome,
                    row.started_update,
                    row.uptime_at_start,
                    row.fw_version,
                    row.code,
                    reason=row.reason if isinstance(row, RolloutDevice) else None,
                    boot_at_start=row.boot_at_start,
                    booted_at=row.booted_at if isinstance(row, RolloutDevice) else None,
                    reboots=row.reboots if isinstance(row, RolloutDevice) else 0,
                )
                if not is_open:
                    after = after_stage_closed(before, fw_version=report.fw_version, code=report.code)
                elif report.kind == STATUS:
                    assert report.fw_version is not None
                    after = after_status(
                        before,
                        fw_version=report.fw_version,
                        uptime=report.uptime,
                        deployed=deployed,
                        at=report.at,
                        reboot_loop_boots=self.reboot_loop_boots,
                    )
                    if not tracked:
                        # A plain deploy follows its devices until they answer: no reboot loop.
                        after = replace(after, booted_at=None, reboots=0)
                    elif after.outcome == Outcome.SUCCEEDED and report.fw_version == rolled_from.get(id(row)):
                        # Counted back at the rollback from its row's version, it was still
                        # flashing the version rolled back from, missed its wave's trigger
                        # (a device does while it updates), and has booted into that version.
                        after = replace(after, outcome=Outcome.FAILED, reason=REVERTED)
                else:
                    assert report.code is not None
                    last_uptime, last_boot = uptimes.get(report.device_id, (None, None))
                    after = after_response(
                        before, code=report.code, last_uptime=last_uptime, last_boot=last_boot, at=report.at
                    )
                # A device updating is heard from: its row's time says when
                # last, so that only real silence makes it dark.
                heard = is_open and after.outcome == Outcome.PENDING and after.started_update
                if after != before or heard:
                    row.outcome = after.outcome
                    row.started_update = after.started_update
                    row.uptime_at_start = after.uptime_at_start
                    row.fw_version = after.fw_version
                    row.code = after.code
                    row.boot_at_start = after.boot_at_start
                    if isinstance(row, RolloutDevice):
                        row.reason = after.reason
                        row.booted_at = after.booted_at
                        row.reboots = after.reboots
                    row.updated_at = now
                    session.add(row)


def _chunks(items: list[str], size: int = CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
