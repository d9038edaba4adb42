"""On PostgreSQL: two receivers evaluating one rollout promote it exactly once, and a
deploy racing a promotion neither deadlocks nor loses the newer firmware."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import col, select
from starlette.testclient import TestClient

from otaship.receiver.app import build_services, create_app
from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.models import Deployment, Group, Rollout, TriggerMessage
from otaship.receiver.ids import utcnow
from otaship.receiver.mqtt.reports import ReportIngester
from otaship.receiver.rollouts.clock import RolloutRunner
from otaship.receiver.rollouts.deploy import StoredFirmware, deploy_firmware, running_firmware
from otaship.receiver.rollouts.policy import Policy
from otaship.receiver.rollouts.store import RolloutError, deploy_with_canary, manual_promote
from otaship.receiver.settings import Settings
from tests.conftest import Fleet
from tests.esp_image import build_image


def test_two_receivers_promote_a_rollout_once(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url, mqtt_url="none")
    first, second = build_services(settings), build_services(settings)
    try:
        first = dataclasses.replace(first, notify=True)
        fleet = Fleet(first)
        owner = fleet.owner()
        group = fleet.group(owner, name="fleet")
        canary = fleet.group(owner, name="canary", parent=group)
        devices = [fleet.device(canary, name=f"c{i}", firmware_version="1.0.0") for i in range(3)]
        for i in range(5):
            fleet.device(group, name=f"f{i}", firmware_version="1.0.0")
        with TestClient(create_app(settings, services=first)) as client:
            response = client.post(
                "/v1/ota/group",
                headers=owner.headers,
                data={"group": group.id, "token": group.token, "version": "1.1.0", "canary": canary.id},
                files={"firmware": ("firmware.bin", build_image("1.1.0"))},
            )
            assert response.status_code == 201, response.text
            rollout_id = response.json()["rollout"]["id"]
        ReportIngester(first.engine).ingest_messages(
            [
                (f"/{owner.user.mqtt_user}/devices/{d.id}/status", b'{"fw_version": "1.1.0", "uptime": 1}')
                for d in devices
            ]
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
                select(Deployment).where(
                    col(Deployment.group_id) == group.id, col(Deployment.rollout_id) == rollout_id
                )
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


def test_a_deploy_racing_a_promotion_never_deadlocks_and_the_newer_firmware_stays(
    postgres_url: str,
    tmp_path: Path,
) -> None:
    """A plain deploy to the fleet and the promotion of its rollout, at the same
    moment, many times: whichever goes first, the rollout ends aborted and the
    fleet keeps the plain deploy. Neither transaction fails (a deadlock would)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url, mqtt_url="none")
    services = build_services(settings)
    try:
        fleet = Fleet(services)
        owner = fleet.owner()
        group = fleet.group(owner, name="fleet")
        canary = fleet.group(owner, name="canary", parent=group)
        devices = [fleet.device(canary, name=f"c{i}", firmware_version="0.0.1") for i in range(2)]
        fleet.device(group, name="f0", firmware_version="0.0.1")
        runner = RolloutRunner(services.engine, notify=True)

        def image(version: str) -> StoredFirmware:
            digest = hashlib.sha256(version.encode()).hexdigest()
            return StoredFirmware(object_key=f"objects/{digest}", sha256=digest, md5="0" * 32, size=1)

        for round_ in range(8):
            by_request = round_ % 2 == 0
            staged, plain = f"3.{round_}.0", f"2.{round_}.0"
            with write_session(services.engine) as session:
                started = deploy_with_canary(
                    session=session,
                    group_id=group.id,
                    canary_id=canary.id,
                    version=staged,
                    firmware=image(staged),
                    policy=Policy(auto_promote=not by_request),
                    commit=None,
                    notify=True,
                    now=utcnow(),
                )
                assert started.rollout is not None
                rollout_id = started.rollout.id
            ReportIngester(services.engine).ingest_messages(
                (f"/{owner.user.mqtt_user}/devices/{d.id}/status", f'{{"fw_version": "{staged}"}}'.encode())
                for d in devices
            )
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def deploy_plain() -> None:
                barrier.wait()
                with write_session(services.engine) as session:
                    deploy_firmware(
                        session=session, group_id=group.id, version=plain, firmware=image(plain), now=utcnow()
                    )

            def promote_it() -> None:
                barrier.wait()
                if not by_request:
                    runner.evaluate_all()
                    return
                try:
                    with write_session(services.engine) as session:
                        manual_promote(
                            session=session,
                            rollout_id=rollout_id,
                            owner_id=owner.user.id,
                            notify=True,
                            now=utcnow(),
                        )
                except RolloutError:
                    pass  # the plain deploy went first and ended the rollout: a clean refusal

            def guarded(work: Callable[[], None]) -> Callable[[], None]:
                def run() -> None:
                    try:
                        work()
                    except BaseException as exc:
                        errors.append(exc)

                return run

            threads = [threading.Thread(target=guarded(w)) for w in (deploy_plain, promote_it)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            with read_session(services.engine) as session:
                rollout = session.get(Rollout, rollout_id)
                group_row = session.get(Group, group.id)
                assert group_row is not None
                running = running_firmware(session=session, group=group_row)
            assert rollout is not None and rollout.state == "aborted", (round_, rollout)
            assert running is not None and running.version == plain, round_
    finally:
        services.engine.dispose()


def test_two_receivers_advance_each_wave_once_and_a_new_receiver_carries_on_in_wave_2(
    postgres_url: str, tmp_path: Path
) -> None:
    """Both replicas' clocks race over a rollout in three waves; then both are
    replaced (a restart) while wave 2 runs, and a third finishes the rollout."""
    settings = Settings(data_dir=tmp_path / "data", database_url=postgres_url, mqtt_url="none")
    first, second = build_services(settings), build_services(settings)
    third = None
    try:
        first = dataclasses.replace(first, notify=True)
        fleet = Fleet(first)
        owner = fleet.owner()
        group = fleet.group(owner, name="fleet")
        waves = [fleet.group(owner, name=f"wave{i}", parent=group) for i in range(3)]
        devices = [
            [fleet.device(w, name=f"w{i}d{j}", firmware_version="1.0.0") for j in range(2)]
            for i, w in enumerate(waves)
        ]
        fleet.device(group, name="direct", firmware_version="1.0.0")
        with TestClient(create_app(settings, services=first)) as client:
            response = client.post(
                "/v1/ota/group",
                headers=owner.headers,
                data={
                    "group": group.id,
                    "token": group.token,
                    "version": "1.1.0",
                    "waves": ",".join(w.id for w in waves),
                },
                files={"firmware": ("firmware.bin", build_image("1.1.0"))},
            )
            assert response.status_code == 201, response.text
            rollout_id = response.json()["rollout"]["id"]

        def updated(engine: Engine, wave: int) -> None:
            ReportIngester(engine).ingest_messages(
                [
                    (
                        f"/{owner.user.mqtt_user}/devices/{d.id}/status",
                        b'{"fw_version": "1.1.0", "uptime": 1}',
                    )
                    for d in devices[wave]
                ]
            )

        def race(runners: list[RolloutRunner]) -> None:
            barrier = threading.Barrier(len(runners))

            def tick(runner: RolloutRunner) -> None:
                for _ in range(5):
                    barrier.wait()
                    runner.evaluate_all()

            threads = [threading.Thread(target=tick, args=(r,)) for r in runners]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        def state() -> tuple[str, int, list[str]]:
            with read_session(first.engine) as session:
                rollout = session.get(Rollout, rollout_id)
                assert rollout is not None
                deployed_to = session.exec(
                    select(Deployment.group_id)
                    .where(col(Deployment.rollout_id) == rollout_id)
                    .order_by(col(Deployment.deployed_at))
                ).all()
                return rollout.state, rollout.wave, list(deployed_to)

        updated(first.engine, 0)
        race([RolloutRunner(s.engine, notify=True) for s in (first, second)])
        assert state() == ("canary", 1, [waves[0].id, waves[1].id])

        # A restart in wave 2: the replicas go, a new one starts from the database.
        for services in (first, second):
            services.engine.dispose()
        third = dataclasses.replace(build_services(settings), notify=True)
        first = third
        updated(third.engine, 1)
        race([RolloutRunner(third.engine, notify=True)])
        updated(third.engine, 2)
        race([RolloutRunner(third.engine, notify=True)])
        assert state() == ("fleet", 2, [w.id for w in waves] + [group.id])
    finally:
        for engine in [first.engine, second.engine, *([third.engine] if third is not None else [])]:
            engine.dispose()
