"""The trigger outbox publisher.

Deploys write their triggers to the `trigger_outbox` table in the deploy's own
transaction; this loop publishes them at QoS 1 and marks each one published
only once the broker acknowledged it. A broker outage or a restart therefore
delays a trigger but never loses it. Rows are claimed with a lease before
publishing, so several replicas never publish the same row at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio.to_thread
import paho.mqtt.client as mqtt
from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from otaship.receiver.db.engine import database_unavailable, write_session
from otaship.receiver.db.models import TriggerMessage
from otaship.receiver.ids import utcnow
from otaship.receiver.mqtt.link import MqttLink
from otaship.receiver.outage import OutageLog
from otaship.receiver.wakeup import sleep_until_woken

if TYPE_CHECKING:
    from otaship.receiver.metrics import Metrics

log = logging.getLogger("otaship.triggers")

BATCH = 500
LEASE = timedelta(seconds=30)
ACK_TIMEOUT = 10.0


class TriggerPublisher:
    def __init__(
        self, engine: Engine, link: MqttLink, *, idle_interval: float = 1.0, metrics: Metrics | None = None
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.link = link
        self.idle_interval = idle_interval
        self.published = 0
        self._wake = asyncio.Event()
        self._inflight: dict[int, mqtt.MQTTMessageInfo] = {}
        self._outage = OutageLog(log, "triggers wait in the outbox")

    def wake(self) -> None:
        """Publish now rather than at the next idle tick (call from the event loop)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                busy = await anyio.to_thread.run_sync(self.publish_pending)
                self._outage.recovered()
            except Exception as exc:
                if database_unavailable(exc):
                    self._outage.failed(exc)
                else:
                    log.exception("trigger publishing failed; retrying")
                busy = False
            if busy:
                continue
            await sleep_until_woken(self._wake, self.idle_interval)

    def _claim(self, now: datetime) -> list[TriggerMessage]:
        with write_session(self.engine) as session:
            if self._inflight:
                # Still queued in paho, which resends them itself after a
                # reconnect: keep our claim, and never publish them a second time.
                session.execute(
                    update(TriggerMessage)
                    .where(col(TriggerMessage.id).in_(list(self._inflight)))
                    .values(claimed_until=now + LEASE)
                )
            query = (
                select(TriggerMessage)
                .where(
                    col(TriggerMessage.published_at).is_(None),
                    or_(
                        col(TriggerMessage.claimed_until).is_(None),
                        col(TriggerMessage.claimed_until) < now,
                    ),
                )
                .order_by(col(TriggerMessage.id))
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
            if self._inflight:
                query = query.where(col(TriggerMessage.id).not_in(list(self._inflight)))
            rows = list(session.exec(query))
            for row in rows:
                row.claimed_until = now + LEASE
                row.attempts += 1
                session.add(row)
        return rows

    def publish_pending(self) -> bool:
        """Publish one batch; True when a full batch went out and more may wait."""
        if not self.link.connected:
            return False
        rows = self._claim(utcnow())
        for row in rows:
            assert row.id is not None
            self._inflight[row.id] = self.link.publish(row.topic, row.payload)
        deadline = time.monotonic() + ACK_TIMEOUT
        for info in list(self._inflight.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.link.connected:
                break
            try:
                info.wait_for_publish(timeout=remaining)
            except (RuntimeError, ValueError):
                # Queued while the link was down: paho sends it after reconnecting.
                continue
        acked = [row_id for row_id, info in self._inflight.items() if info.is_published()]
        if acked:
            with write_session(self.engine) as session:
                session.execute(
                    update(TriggerMessage)
                    .where(col(TriggerMessage.id).in_(acked))
                    .values(published_at=utcnow(), claimed_until=None)
                )
            for row_id in acked:
                del self._inflight[row_id]
            self.published += len(acked)
            if self.metrics is not None:
                self.metrics.triggers_published.inc(len(acked))
            log.debug("published %d trigger(s)", len(acked))
        return len(rows) == BATCH and not self._inflight
