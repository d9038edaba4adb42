"""The rollout clock: re-evaluates every rollout in progress once a tick, and
follows plain deploys' devices; both retry the devices that failed first
(rollouts/retries.py).

Timeouts and soaks run on timestamps stored with the rollout, so a receiver
that restarts (or another replica) picks up exactly where the last one was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from otaship.receiver.db.engine import database_unavailable, read_session, write_session
from otaship.receiver.db.enums import State
from otaship.receiver.ids import utcnow
from otaship.receiver.outage import OutageLog
from otaship.receiver.rollouts.plain import evaluate_plain, open_plain_deploys
from otaship.receiver.rollouts.policy import ACTIVE_STATES, RetryPolicy
from otaship.receiver.rollouts.retries import fail_dark_devices, retry_devices
from otaship.receiver.rollouts.rollback import close_rollbacks, retry_rollbacks
from otaship.receiver.rollouts.store import active_rollout_states, evaluate, lock_rollout
from otaship.receiver.threads import in_thread
from otaship.receiver.wakeup import sleep_until_woken

if TYPE_CHECKING:
    from otaship.receiver.metrics import Metrics

log = logging.getLogger("otaship.rollouts")


class RolloutRunner:
    def __init__(
        self,
        engine: Engine,
        *,
        notify: bool,
        tick: float = 1.0,
        on_change: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.engine = engine
        # No retries unless asked: the receiver passes its settings' policy.
        self.retry = retry or RetryPolicy(attempts=0)
        self.metrics = metrics
        self.notify = notify
        self.tick = tick
        self.on_change = on_change
        self._wake = asyncio.Event()
        # Timeouts and soaks are stored timestamps: the first tick after an outage catches up.
        self._outage = OutageLog(log, "the rollout clock tries again every tick")

    def wake(self) -> None:
        self._wake.set()

    def evaluate_all(self) -> bool:
        """One pass over the rollouts in progress; True if any changed state or
        queued a trigger again."""
        with read_session(self.engine) as session:
            active = active_rollout_states(session=session)
        changed = False
        for rollout_id, _ in active:
            try:
                with write_session(self.engine) as session:
                    # The state as it is under the locks that evaluate takes too:
                    # another replica may have moved the rollout since the read above,
                    # and a promotion must be counted once, by whoever made it.
                    locked = lock_rollout(session, rollout_id, skip_locked=True)
                    if locked is None:
                        continue
                    before = locked.state
                    retried = None
                    now = utcnow()
                    if before in ACTIVE_STATES:
                        fail_dark_devices(session=session, rollout=locked, policy=self.retry, now=now)
                        # Before the decision, so that it counts a failure with a
                        # retry ahead as retrying, not as failed.
                        retried = retry_devices(
                            session=session,
                            rollout=locked,
                            policy=self.retry,
                            notify=self.notify,
                            now=now,
                        )
                    state = evaluate(session=session, rollout_id=rollout_id, notify=self.notify, now=now)
                changed = (
                    changed or (state is not None and state != before) or bool(retried and retried.groups)
                )
                if retried is not None and self.metrics is not None:
                    self.metrics.retried(retried.scheduled, retried.devices, len(retried.groups))
                if before == State.CANARY and state == State.FLEET and self.metrics is not None:
                    self.metrics.deploys.labels("promotion").inc()
            except Exception as exc:
                if database_unavailable(exc):
                    raise  # the others would fail alike: the pass ends, the next tick tries again
                log.exception("could not evaluate rollout %s; trying again next tick", rollout_id)
        try:
            with write_session(self.engine) as session:
                now = utcnow()
                retried = retry_rollbacks(session=session, policy=self.retry, notify=self.notify, now=now)
                changed = bool(close_rollbacks(session=session, now=now)) or bool(retried.groups) or changed
            if self.metrics is not None:
                self.metrics.retried(retried.scheduled, retried.devices, len(retried.groups))
        except Exception as exc:
            if database_unavailable(exc):
                raise
            log.exception("could not retry or close the rollbacks' devices; trying again next tick")
        return self._follow_plain_deploys() or changed

    def _follow_plain_deploys(self) -> bool:
        """Retry the failed devices of plain deploys, and end their following
        when done; True if a trigger was queued again."""
        with read_session(self.engine) as session:
            followed = open_plain_deploys(session=session)
        queued = False
        for deployment_id in followed:
            try:
                with write_session(self.engine) as session:
                    retried = evaluate_plain(
                        session=session, deployment_id=deployment_id, policy=self.retry, now=utcnow()
                    )
                if retried is not None:
                    queued = queued or bool(retried.groups)
                    if self.metrics is not None:
                        self.metrics.retried(retried.scheduled, retried.devices, len(retried.groups))
            except Exception as exc:
                if database_unavailable(exc):
                    raise
                log.exception("could not follow deploy %s; trying again next tick", deployment_id)
        return queued

    async def run(self) -> None:
        while True:
            try:
                changed = await self._pass()
                self._outage.recovered()
                if changed and self.on_change is not None:
                    self.on_change()
            except Exception as exc:
                if database_unavailable(exc):
                    self._outage.failed(exc)
                else:
                    log.exception("rollout evaluation failed")
            await sleep_until_woken(self._wake, self.tick)

    async def _pass(self) -> bool:
        """One evaluate_all in a worker thread. A cancel (the receiver stopping)
        waits for the pass in flight: left running, it could promote a rollout
        after the receiver has shut down."""
        return await in_thread(self.evaluate_all)
