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

import paho.mqtt.client as mqtt
from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from otaship.receiver.db.engine import database_unavailable, write_session
from otaship.receiver.db.models import TriggerMessage
from otaship.receiver.ids import utcnow
from otaship.receiver.mqtt.link import MqttLink
from otaship.receiver.outage import OutageLog
from otaship.receiver.threads import in_thread
from otaship.receiver.wakeup import sleep_until_woken

if TYPE_CHECKING:
    from otaship.receiver.metrics import Metrics

log = logging.getLogger("otaship.triggers")

BATCH = 500
LEASE = timedelta(seconds=30)
ACK_TIMEOUT = 10.0
# Groups a line names; the count says how many more there were.
NAMED_GROUPS = 10


def held_triggers_line(count: int, waited: float, group_ids: list[str]) -> str:
    """The line of the triggers published once the broker was back (pure)."""
    named = sorted(set(group_ids))
    shown = " ".join(named[:NAMED_GROUPS])
    more = f" and {len(named) - NAMED_GROUPS} more" if len(named) > NAMED_GROUPS else ""
    return (
        f"published {count} trigger(s) that waited for the MQTT broker "
        f"({waited:.0f} s without it): groups {shown}{more}"
    )


def group_of(topic: str) -> str:
    """The group id in a trigger topic, /<mqtt_user>/groups/<group_id>/update-trigger."""
    parts = topic.split("/")
    return parts[3] if len(parts) > 3 else topic


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
        self._topics: dict[int, str] = {}  # of the triggers in flight
        self._outage = OutageLog(log, "triggers wait in the outbox")
        # Since when the broker has been unreachable (monotonic), until the
        # triggers that waited for it are published.
        self._broker_away_since: float | None = None

    def wake(self) -> None:
        """Publish now rather than at the next idle tick (call from the event loop)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                busy = await in_thread(self.publish_pending)
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
            if self._broker_away_since is None:
                self._broker_away_since = time.monotonic()
            return False
        # Reconnected: the first pass publishes what waited, and says so.
        away_since, self._broker_away_since = self._broker_away_since, None
        rows = self._claim(utcnow())
        for row in rows:
            assert row.id is not None
            self._inflight[row.id] = self.link.publish(row.topic, row.payload)
            self._topics[row.id] = row.topic
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
            groups = [group_of(self._topics.pop(row_id, "")) for row_id in acked]
            for row_id in acked:
                del self._inflight[row_id]
            self.published += len(acked)
            if self.metrics is not None:
                self.metrics.triggers_published.inc(len(acked))
            if away_since is not None:
                # Each deploy's own line counts its triggers; only these waited.
                log.info(
                    held_triggers_line(len(acked), time.monotonic() - away_since, groups),
                    extra={
                        "event": "triggers_after_outage",
                        "count": len(acked),
                        "groups": sorted(set(groups)),
                    },
                )
            else:
                log.debug("published %d trigger(s)", len(acked))
        if away_since is not None and self._inflight:
            # Not all acknowledged yet: the next pass still counts them as held.
            self._broker_away_since = away_since
        return len(rows) == BATCH and not self._inflight
