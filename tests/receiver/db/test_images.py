"""Firmware image rows: one per SHA-256, filled in by deploys, and a deploy's
`now` read before the tree's lock still makes the last deploy to commit win."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlmodel import col, select

from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.images import record_image
from otaship.receiver.db.models import FirmwareImage, Group, GroupOta
from otaship.receiver.http.views import ota_view
from otaship.receiver.ids import utcnow
from otaship.receiver.rollouts.deploy import StoredFirmware, deploy_firmware, running_firmware
from otaship.receiver.services import Services
from otaship.receiver.storage import object_key
from tests.conftest import Fleet
from tests.esp_image import build_image
from tests.postgres import waiting_on_a_lock


def stored(version: str, *, described: bool = True) -> StoredFirmware:
    image = build_image(version)
    digest = hashlib.sha256(image).hexdigest()
    plain = StoredFirmware(
        object_key=object_key(digest), sha256=digest, md5=hashlib.md5(image).hexdigest(), size=len(image)
    )
    if not described:
        return plain
    return dataclasses.replace(plain, chip="esp32", project_name="app", app_version=version, idf_ver="v5.1")


def ota_of(services: Services, group: Group) -> GroupOta:
    with read_session(services.engine) as session:
        ota = session.exec(select(GroupOta).where(col(GroupOta.group_id) == group.id)).one()
    return ota


def test_a_deploy_that_read_its_clock_before_the_lock_still_wins(services: Services, fleet: Fleet) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    canary = fleet.group(owner, name="canary", parent=group)
    with write_session(services.engine) as session:
        deploy_firmware(
            session=session, group_id=canary.id, version="1.1.0", firmware=stored("1.1.0"), now=utcnow()
        )
    # The fleet's deploy read its clock an hour before the canary's committed
    # (it waited for the tree's lock), and commits after it: it is the newest.
    stale = ota_of(services, canary).last_updated - timedelta(hours=1)
    with write_session(services.engine) as session:
        deploy_firmware(
            session=session, group_id=group.id, version="1.2.0", firmware=stored("1.2.0"), now=stale
        )
    assert ota_of(services, group).last_updated == ota_of(services, canary).last_updated + timedelta(
        milliseconds=1
    )
    with read_session(services.engine) as session:
        subgroup = session.get(Group, canary.id)
        assert subgroup is not None
        running = running_firmware(session=session, group=subgroup)
    assert running is not None and running.version == "1.2.0"

    # Again on the group itself: a later revision, later than the one before.
    before = ota_of(services, group)
    with write_session(services.engine) as session:
        deploy_firmware(
            session=session, group_id=group.id, version="1.3.0", firmware=stored("1.3.0"), now=stale
        )
    after = ota_of(services, group)
    assert (after.revision, after.last_updated) == (
        before.revision + 1,
        before.last_updated + timedelta(milliseconds=1),
    )


def test_one_image_row_per_sha256_whoever_deploys_it(services: Services, fleet: Fleet) -> None:
    owner = fleet.owner()
    first, second = fleet.group(owner, name="a"), fleet.group(owner, name="b")
    firmware = stored("1.0.0")
    for group in (first, second):
        with write_session(services.engine) as session:
            deploy_firmware(
                session=session, group_id=group.id, version="1.0.0", firmware=firmware, now=utcnow()
            )
    with read_session(services.engine) as session:
        images = session.exec(select(FirmwareImage)).all()
    assert [(i.sha256, i.object_key, i.md5, i.size, i.chip) for i in images] == [
        (firmware.sha256, firmware.object_key, firmware.md5, firmware.size, "esp32")
    ]
    assert ota_of(services, first).sha256 == ota_of(services, second).sha256 == firmware.sha256


def test_a_deploy_fills_in_what_history_did_not_know(services: Services, fleet: Fleet) -> None:
    """An image that migration 0004 knew only from deploy history has no chip
    or descriptor; the next deploy of those bytes gives it one, and a deploy
    that knows none takes nothing away."""
    owner = fleet.owner()
    bare, described = stored("1.0.0", described=False), stored("1.0.0")
    with write_session(services.engine) as session:
        record_image(session=session, now=utcnow(), **dataclasses.asdict(bare))
    for firmware, group in ((described, fleet.group(owner, name="a")), (bare, fleet.group(owner, name="b"))):
        with write_session(services.engine) as session:
            result = deploy_firmware(
                session=session, group_id=group.id, version="1.0.0", firmware=firmware, now=utcnow()
            )
        assert result.deployed
        body = ota_view(result.ota, group.name).wire()
        assert (body["chip"], body["project_name"], body["app_version"], body["idf_ver"]) == (
            "esp32",
            "app",
            "1.0.0",
            "v5.1",
        )


class TestOnPostgres:
    """PostgreSQL only: it shows when a transaction waits on another's row."""

    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        return postgres_url

    def test_new_bytes_deployed_to_two_trees_at_once_make_one_image(
        self, services: Services, fleet: Fleet
    ) -> None:
        # Different trees: the deploys share no lock, only the new image's key.
        owner = fleet.owner()
        first, second = fleet.group(owner, name="a"), fleet.group(owner, name="b")
        firmware = stored("1.0.0")

        def deploy_second() -> bool:
            with write_session(services.engine) as session:
                return deploy_firmware(
                    session=session, group_id=second.id, version="1.0.0", firmware=firmware, now=utcnow()
                ).deployed

        with ThreadPoolExecutor(1) as pool:
            with write_session(services.engine) as session:
                deploy_firmware(
                    session=session, group_id=first.id, version="1.0.0", firmware=firmware, now=utcnow()
                )
                deployed = pool.submit(deploy_second)
                deadline = time.monotonic() + 15
                while not waiting_on_a_lock(services.engine):
                    assert time.monotonic() < deadline, "the second deploy never waited for the first's image"
                    time.sleep(0.02)
            assert deployed.result(timeout=30) is True
        with read_session(services.engine) as session:
            assert session.exec(select(col(FirmwareImage.sha256))).all() == [firmware.sha256]
        assert ota_of(services, first).sha256 == ota_of(services, second).sha256 == firmware.sha256
