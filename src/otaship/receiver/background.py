"""The receiver's background work: the MQTT link, triggers, reports, the rollout
clock, the orphan sweep, the GitHub webhook jobs and the log's summary lines.

Started and stopped by the app's lifespan. With OTASHIP_MQTT_URL=none only the
rollout clock runs: devices then find updates by polling `latest`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from otaship.protocol import parse_mqtt_url
from otaship.receiver.db.engine import read_session
from otaship.receiver.db.users import user_for_mqtt_login
from otaship.receiver.gc.sweep import OrphanSweeper
from otaship.receiver.github.jobs import GithubJobs
from otaship.receiver.log_summary import Summaries
from otaship.receiver.mqtt.link import MqttLink
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.mqtt.triggers import TriggerPublisher
from otaship.receiver.rollouts.clock import RolloutRunner
from otaship.receiver.rollouts.policy import RetryPolicy
from otaship.receiver.services import Services

if TYPE_CHECKING:
    from otaship.receiver.metrics import Metrics

log = logging.getLogger("otaship")


class Background:
    def __init__(self, services: Services, *, metrics: Metrics | None = None) -> None:
        self.services = services
        self.metrics = metrics
        self.address = parse_mqtt_url(services.settings.mqtt_url)
        self.broker: object | None = None
        self.link: MqttLink | None = None
        self.publisher: TriggerPublisher | None = None
        self.ingester = ReportIngester(
            services.engine, metrics=metrics, reboot_loop_boots=services.settings.reboot_loop_boots
        )
        self.runner = RolloutRunner(
            services.engine,
            notify=services.notify,
            tick=services.settings.rollout_tick,
            on_change=services.deployed,
            metrics=metrics,
            retry=RetryPolicy(
                attempts=services.settings.trigger_retries,
                backoff=services.settings.trigger_retry_backoff,
                dark_after=services.settings.trigger_dark_after,
                download_rate=services.settings.trigger_download_rate,
            ),
        )
        settings = services.settings
        self.sweeper: OrphanSweeper | None = (
            OrphanSweeper(services, interval=settings.gc_interval, grace=settings.gc_grace)
            if settings.gc_interval > 0
            else None
        )
        self.github_jobs = GithubJobs(services, metrics=metrics)
        self.summaries = Summaries()
        if metrics is not None:
            from otaship.receiver.metrics import write_device_checks

            counted = metrics
            self.summaries.add(lambda seconds: write_device_checks(counted, seconds))
        self.summaries.add(self.ingester.write_summary)
        self._tasks: list[asyncio.Task[None]] = []

    def _authenticate(self, username: str, password: str) -> bool:
        with read_session(self.services.engine) as session:
            return user_for_mqtt_login(session=session, username=username, password=password) is not None

    async def start(self) -> None:
        address = self.address
        if address is not None:
            username = password = None
            if address.embedded:
                from otaship.receiver.mqtt.broker import EmbeddedBroker

                broker = EmbeddedBroker(address.host, address.port, authenticate=self._authenticate)
                await broker.start()
                self.broker = broker
                self.summaries.add(broker.write_summary)
                username, password = broker.internal_username, broker.internal_password
                client_id = f"otaship-receiver-{broker.internal_username[-8:]}"
            else:
                client_id = self.services.settings.mqtt_client_id or f"otaship-{socket.gethostname()}"
            self.link = MqttLink(
                address,
                client_id=client_id,
                on_message=self.ingester.submit,
                username=username,
                password=password,
                share_group=self.services.settings.resolved_mqtt_share_group,
            )
            self.link.start()
            self.publisher = TriggerPublisher(self.services.engine, self.link, metrics=self.metrics)
            self.services.on_deploy.add(self.publisher.wake)
            self._tasks.append(asyncio.create_task(self.publisher.run(), name="otaship-triggers"))
            self._tasks.append(asyncio.create_task(self.ingester.run(), name="otaship-reports"))
        self.services.on_deploy.add(self.runner.wake)
        self._tasks.append(asyncio.create_task(self.runner.run(), name="otaship-rollouts"))
        self._tasks.append(asyncio.create_task(self.github_jobs.run(), name="otaship-github-jobs"))
        if self.sweeper is not None:
            self._tasks.append(asyncio.create_task(self.sweeper.run(), name="otaship-orphan-sweep"))
        self._tasks.append(asyncio.create_task(self.summaries.run(), name="otaship-log-summaries"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.link is not None:
            await asyncio.to_thread(self.link.stop)
        if self.broker is not None:
            await self.broker.stop()  # type: ignore[attr-defined]
        self.services.on_deploy.clear()
