"""On PostgreSQL, two receivers evaluating one rollout promote it exactly once."""
from __future__ import annotations

import threading
from pathlib import Path

from sqlmodel import col, select
from starlette.testclient import TestClient

from receiver.app import build_services, create_app
from receiver.db import read_session
from receiver.models import Deployment, Rollout, TriggerMessage
from receiver.mqtt.reports import ReportIngester
from receiver.rollout_runner import RolloutRunner
from receiver.settings import Settings
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.postgres import postgres_url  # noqa: F401  (the fixture)


def test_two_receivers_promote_a_rollout_once(postgres_url: str, tmp_path: Path) -> None:  # noqa: F811
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url, mqtt_url="none")
    first, second = build_services(settings), build_services(settings)
    try:
        first.notify = True
        fleet = Fleet(first)
        owner = fleet.owner()
        group = fleet.group(owner, name="fleet")
        canary = fleet.group(owner, name="canary", parent=group)
        devices = [fleet.device(canary, name=f"c{i}", firmware_version="1.0.0") for i in range(3)]
        for i in range(5):
            fleet.device(group, name=f"f{i}", firmware_version="1.0.0")
        with TestClient(create_app(settings, services=first)) as client:
            response = client.post(
                "/v1/ota/group", headers=owner.headers,
                data={"group": group.id, "token": group.token, "version": "1.1.0", "canary": canary.id},
                files={"firmware": ("firmware.bin", build_image("1.1.0"))},
            )
            assert response.status_code == 201, response.text
            rollout_id = response.json()["rollout"]["id"]
        ReportIngester(first.engine).ingest_messages(
            [(f"/{owner.user.mqtt_user}/devices/{d.id}/status", b'{"fw_version": "1.1.0", "uptime": 1}') for d in devices]
        )

        # Both replicas' clocks tick at the same moment, many times over.
        runners = [RolloutRunner(s.engine, notify=True) for s in (first, second)]
        barrier = threading.Barrier(2)

        def race(runner: RolloutRunner) -> None:
            for _ in range(5):
                barrier.wait()
                runner.evaluate_all()

        threads = [threading.Thread(target=race, args=(r,)) for r in runners]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        with read_session(first.engine) as session:
            fleet_deploys = session.exec(
                select(Deployment).where(col(Deployment.group_id) == group.id, col(Deployment.rollout_id) == rollout_id)
            ).all()
            fleet_triggers = session.exec(
                select(TriggerMessage).where(col(TriggerMessage.topic).contains(f"/groups/{group.id}/"))
            ).all()
            rollout = session.get(Rollout, rollout_id)
        assert len(fleet_deploys) == 1
        assert len(fleet_triggers) == 1
        assert rollout is not None and rollout.state == "fleet"
    finally:
        for services in (first, second):
            services.engine.dispose()
