"""The orphan sweep on both storage backends and both databases: what it removes,
what it never removes, and the deploys that race it.

GCS runs the real google-cloud-storage client against gcp-storage-emulator. An
object cannot be made an hour old by waiting: tests set its time back (the
file's mtime, the emulator's `updated`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlmodel import Session, select
from starlette.testclient import TestClient

from otaship.receiver.app import build_services, create_app
from otaship.receiver.db.engine import read_session, write_session
from otaship.receiver.db.enums import State
from otaship.receiver.db.images import record_image
from otaship.receiver.db.models import Group, Rollout
from otaship.receiver.gc.sweep import OrphanSweeper, SweepResult, referenced_keys, sweep_orphans
from otaship.receiver.ids import new_id, utcnow
from otaship.receiver.rollouts.deploy import StoredFirmware, deploy_firmware
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from otaship.receiver.storage import FIRMWARE_PREFIX, StorageError, object_key
from otaship.receiver.storage.gcs import GCSStorage
from otaship.receiver.storage.local import LocalStorage
from tests.conftest import Fleet, Owner
from tests.esp_image import build_image
from tests.postgres import waiting_on_a_lock
from tests.receiver.http.management.test_ota import deploy, post
from tests.receiver_process import cli_env, otaship
from tests.waiting import eventually

if TYPE_CHECKING:
    from tests.gcs_emulator import GCSEmulator

# Provides the gcs_emulator fixture.
pytest_plugins = ["tests.gcs_emulator"]

PREFIX = "fleet/ota"
HOUR = 3600.0
UPLOAD_ERROR = "Error when uploading firmware file"


@pytest.fixture(params=["local", "gcs"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The suite's settings (both databases), with objects in a folder or in GCS."""
    if request.param == "gcs":
        emulator: GCSEmulator = request.getfixturevalue("gcs_emulator")
        return settings.with_overrides(storage_url=f"gs://{emulator.bucket}/{PREFIX}")
    return settings


def _key(image: bytes) -> str:
    return object_key(hashlib.sha256(image).hexdigest())


def _store(services: Services, tmp_path: Path, data: bytes) -> str:
    """An object with no record: what a killed upload or a lost race leaves behind."""
    source = tmp_path / f"orphan-{hashlib.sha256(data).hexdigest()[:12]}.bin"
    source.write_bytes(data)
    key = _key(data)
    services.storage.put(key, source)
    return key


Backdate = Callable[[str, float], None]


@pytest.fixture
def backdate(request: pytest.FixtureRequest, services: Services) -> Backdate:
    """Make an object look stored (or last refreshed) that many seconds ago."""
    storage = services.storage
    if isinstance(storage, LocalStorage):
        root = storage.root

        def local(key: str, seconds: float) -> None:
            then = time.time() - seconds
            os.utime(root / key, (then, then))

        return local
    assert isinstance(storage, GCSStorage)
    emulator: GCSEmulator = request.getfixturevalue("gcs_emulator")
    prefix = storage.prefix
    return lambda key, seconds: emulator.backdate(f"{prefix}/{key}", seconds)


def _stored_keys(services: Services) -> set[str]:
    return {obj.key for obj in services.storage.list_objects(FIRMWARE_PREFIX)}


def _download(client: TestClient, group: Group) -> bytes:
    response = client.get(f"/v1/ota/group/download/{group.id}{group.token}")
    assert response.status_code == 200, response.text
    content: bytes = response.content
    return content


def _sweep(services: Services, grace: float = HOUR, **kwargs: Any) -> SweepResult:
    return sweep_orphans(
        storage=services.storage,
        engine=services.engine,
        grace=grace,
        in_flight=services.objects_in_flight.keys,
        **kwargs,
    )


# -- what a sweep removes, and what it keeps -----------------------------------------


def _copy_rollout(services: Services, image: bytes) -> None:
    """A rollout record that is the only one pointing at the image's object."""
    with write_session(services.engine) as session:
        rollout = session.exec(select(Rollout)).first()
        assert rollout is not None
        recorded = record_image(
            session=session,
            now=utcnow(),
            sha256=hashlib.sha256(image).hexdigest(),
            md5=hashlib.md5(image).hexdigest(),
            size=len(image),
            object_key=_key(image),
        )
        session.add(
            Rollout(**{**rollout.model_dump(), "id": new_id(), "sha256": recorded.sha256, "state": "aborted"})
        )


def test_a_sweep_removes_old_orphans_and_keeps_every_referenced_object(
    client: TestClient, fleet: Fleet, services: Services, tmp_path: Path, backdate: Backdate
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    canary = fleet.group(owner, name="canary", parent=group)
    fleet.device(canary, name="c0", firmware_version="1.0.0")
    deploy(client, owner, group, "1.0.0")
    deploy(client, owner, group, "1.1.0")  # 1.0.0 is history now
    rollout = post(
        client,
        owner,
        {"group": group.id, "token": group.token, "version": "1.2.0", "canary": canary.id},
        build_image("1.2.0"),
    )
    assert rollout.status_code == 201, rollout.text
    only_in_rollout = _store(services, tmp_path, build_image("1.3.0"))
    _copy_rollout(services, build_image("1.3.0"))
    referenced = {_key(build_image(v)) for v in ("1.0.0", "1.1.0", "1.2.0")} | {only_in_rollout}
    old = _store(services, tmp_path, build_image("2.0.0"))
    young = _store(services, tmp_path, build_image("2.1.0"))
    foreign = "firmware/sha256/readme.txt"  # not a key the receiver makes
    (tmp_path / "readme.txt").write_text("someone else's")
    services.storage.put(foreign, tmp_path / "readme.txt")
    for key in (*referenced, old, foreign):
        backdate(key, 2 * HOUR)

    result = _sweep(services)

    assert [obj.key for obj in result.removed] == [old]
    assert result.removed_bytes == len(build_image("2.0.0"))
    assert (result.plan.referenced, result.plan.young, result.plan.in_flight, result.plan.foreign) == (
        4,
        1,
        0,
        1,
    )
    assert (result.changed, result.failed) == (0, [])
    assert _stored_keys(services) == referenced | {young, foreign}
    assert result.describe() == (
        f"removed 1 orphaned object(s), {len(build_image('2.0.0'))} bytes; kept 4 referenced, "
        "1 younger than the grace period, 0 being stored, 1 not otaship's"
    )
    # Devices get exactly what they got before.
    assert _download(client, group) == build_image("1.1.0")
    assert _download(client, canary) == build_image("1.2.0")


def test_each_kind_of_record_keeps_its_object(services: Services, fleet: Fleet, tmp_path: Path) -> None:
    # Each kind of record keeps its image, and so its object, on its own.
    owner = fleet.owner()
    group = fleet.group(owner)
    canary = fleet.group(owner, name="canary", parent=group)
    images = {version: build_image(version) for version in ("1.0.0", "1.1.0")}
    firmware = {
        version: StoredFirmware(
            object_key=_store(services, tmp_path, image),
            sha256=hashlib.sha256(image).hexdigest(),
            md5=hashlib.md5(image).hexdigest(),
            size=len(image),
        )
        for version, image in images.items()
    }
    with write_session(services.engine) as session:
        for version in ("1.0.0", "1.1.0"):
            deploy_firmware(
                session=session, group_id=group.id, version=version, firmware=firmware[version], now=utcnow()
            )
        rollout_image = record_image(
            session=session,
            now=utcnow(),
            sha256="0" * 64,
            md5="0" * 32,
            size=1,
            object_key="firmware/sha256/rollout.bin",
        )
        session.add(
            Rollout(
                owner_id=owner.user.id,
                group_id=group.id,
                canary_group_id=canary.id,
                version="9.9.9",
                sha256=rollout_image.sha256,
                canary_timeout=60,
                success_threshold=1.0,
                error_threshold=0,
                soak=0,
                auto_promote=True,
                state=State.ABORTED,
            )
        )
    with read_session(services.engine) as session:
        assert referenced_keys(session=session) == {
            firmware["1.0.0"].object_key,  # history only
            firmware["1.1.0"].object_key,  # the current OTA and history
            "firmware/sha256/rollout.bin",  # a rollout only
        }


def test_a_dry_run_removes_nothing(
    client: TestClient, fleet: Fleet, services: Services, tmp_path: Path, backdate: Backdate
) -> None:
    owner = fleet.owner()
    deploy(client, owner, fleet.group(owner), "1.0.0")
    orphans = sorted(_store(services, tmp_path, build_image("2.0.0", seed=n)) for n in range(3))
    for key in orphans:
        backdate(key, 2 * HOUR)
    before = _stored_keys(services)

    result = _sweep(services, dry_run=True)

    assert [obj.key for obj in result.plan.remove] == orphans
    assert result.removed == []
    assert _stored_keys(services) == before
    size = len(build_image("2.0.0"))
    assert result.describe() == (
        f"would remove 3 orphaned object(s), {3 * size} bytes; kept 1 referenced, "
        "0 younger than the grace period, 0 being stored"
    )


def test_two_sweeps_at_once_remove_each_orphan_once(
    client: TestClient,
    fleet: Fleet,
    services: Services,
    settings: Settings,
    tmp_path: Path,
    backdate: Backdate,
) -> None:
    # Two replicas: each with its own storage client and database engine.
    owner = fleet.owner()
    group = fleet.group(owner)
    deploy(client, owner, group, "1.0.0")
    orphans = {_store(services, tmp_path, build_image("2.0.0", seed=n)) for n in range(12)}
    for key in orphans | {_key(build_image("1.0.0"))}:
        backdate(key, 2 * HOUR)
    other = build_services(settings)
    try:
        barrier = threading.Barrier(2)

        def sweep(replica: Services) -> SweepResult:
            barrier.wait()
            return _sweep(replica)

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(sweep, (services, other)))
    finally:
        other.storage.close()
        other.engine.dispose()

    removed = [obj.key for result in results for obj in result.removed]
    assert sorted(removed) == sorted(orphans)  # each exactly once, by one of them
    assert all(result.failed == [] for result in results)
    assert _stored_keys(services) == {_key(build_image("1.0.0"))}
    assert _download(client, group) == build_image("1.0.0")


# -- deploys that race a sweep -------------------------------------------------------


class _DeployBeforeDelete:
    """The real storage; the first conditional delete first lets a deploy happen.

    That is the worst moment for a deploy: the sweep has listed the object as
    old and read no record for it, and is about to delete it.
    """

    def __init__(self, inner: Any, deploy_now: Callable[[], object]) -> None:
        self.inner = inner
        self.deploy_now: Callable[[], object] | None = deploy_now

    def delete_if_unchanged(self, stored: Any) -> bool:
        if self.deploy_now is not None:
            deploy_now, self.deploy_now = self.deploy_now, None
            deploy_now()
        result: bool = self.inner.delete_if_unchanged(stored)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_deploy_reusing_an_old_orphan_keeps_it_from_a_sweep_under_way(
    client: TestClient, fleet: Fleet, services: Services, tmp_path: Path, backdate: Backdate
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("1.0.0")
    key = _store(services, tmp_path, image)  # left by an earlier, failed upload
    backdate(key, 2 * HOUR)
    real = services.storage
    racing = _DeployBeforeDelete(real, lambda: deploy(client, owner, group, "1.0.0"))

    result = sweep_orphans(storage=racing, engine=services.engine, grace=HOUR)  # type: ignore[arg-type]

    assert [obj.key for obj in result.plan.remove] == [key]
    assert (result.removed, result.changed) == ([], 1)
    assert _stored_keys(services) == {key}
    assert _download(client, group) == image


@contextlib.contextmanager
def _deploys_held(services: Services, group: Group) -> Iterator[Session]:
    """Hold the lock a deploy to `group` takes first, as a long transaction would."""
    with write_session(services.engine) as session:
        # BEGIN IMMEDIATE on SQLite takes the write lock; on PostgreSQL the row lock.
        session.exec(select(Group).where(Group.id == group.id).with_for_update()).one()
        yield session


def _post_in_background(
    pool: ThreadPoolExecutor, client: TestClient, owner: Owner, group: Group, version: str, image: bytes
) -> Future[Any]:
    fields = {"group": group.id, "token": group.token, "version": version}
    return pool.submit(post, client, owner, fields, image)


def test_an_upload_waiting_to_commit_keeps_its_object(
    client: TestClient, fleet: Fleet, services: Services
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("1.0.0")
    key = _key(image)
    with ThreadPoolExecutor(1) as pool:
        with _deploys_held(services, group):
            posted = _post_in_background(pool, client, owner, group, "1.0.0", image)
            eventually(
                lambda: services.storage.exists(key) and key in services.objects_in_flight.keys(),  # noqa: SIM118  (a method, not a dict)
                "the upload to store its object and wait for its transaction",
            )
            # This process's sweep, even with no grace at all, knows the key is in flight.
            sweeper = OrphanSweeper(services, interval=1, grace=0)
            held = sweeper.sweep_once()
            # Any other process's sweep sees a young object.
            elsewhere = sweep_orphans(storage=services.storage, engine=services.engine, grace=HOUR)
        response = posted.result(timeout=30)
    assert response.status_code == 201, response.text
    assert (held.removed, held.plan.in_flight) == ([], 1)
    assert (elsewhere.removed, elsewhere.plan.young) == ([], 1)
    assert services.objects_in_flight.keys() == frozenset()
    assert _download(client, group) == image


def test_a_deploy_that_stored_its_object_too_long_ago_is_refused(
    fleet: Fleet, settings: Settings, services: Services
) -> None:
    # A deploy must commit within 1 s of storing its object.
    short_grace = settings.with_overrides(gc_grace=2.0)
    services = dataclasses.replace(services, settings=short_grace)
    owner = fleet.owner()
    group = fleet.group(owner)
    image = build_image("1.0.0")
    with TestClient(create_app(short_grace, services=services)) as client, ThreadPoolExecutor(1) as pool:
        with _deploys_held(services, group):
            posted = _post_in_background(pool, client, owner, group, "1.0.0", image)
            eventually(lambda: services.storage.exists(_key(image)), "the upload to store its object")
            # The time limit itself is what is tested: let it pass.
            time.sleep(1.2)
        response = posted.result(timeout=30)
        assert response.status_code == 500
        body = response.json()
        assert body["message"] == UPLOAD_ERROR
        assert body["error"].startswith("StoreExpired: the deploy took ")
        assert body["error"].endswith(
            "s to commit after storing the firmware, more than 1 s (half of OTASHIP_GC_GRACE); "
            "nothing was deployed, try again"
        )
        assert client.get(f"/v1/ota/group/latest/{group.id}").status_code == 404
        assert client.get("/v1/ota/group", headers=owner.headers).json()["recordsTotal"] == 0
        assert list(short_grace.tmp_dir.iterdir()) == []
        # Tried again in time, it deploys.
        assert deploy(client, owner, group, "1.0.0")["ota"]["__v"] == 0


def _waiting_on_a_lock(services: Services) -> bool:
    return waiting_on_a_lock(services.engine)


class TestOnPostgres:
    """PostgreSQL only: it shows when a transaction waits on a lock."""

    @pytest.fixture
    def database_url(self, postgres_url: str) -> str:
        return postgres_url

    def test_a_deploy_whose_group_moved_on_meanwhile_stores_its_object_after_all(
        self, client: TestClient, fleet: Fleet, services: Services, tmp_path: Path
    ) -> None:
        # The upload sees its version already deployed and skips storing (a no-op
        # or a 409 follows). Before its transaction, another deploy moves the group
        # to another version: the upload now deploys after all, and its object must
        # be stored.
        owner = fleet.owner()
        group = fleet.group(owner)
        deploy(client, owner, group, "1.0.0")
        other = build_image("1.0.0", seed=7)
        newer = build_image("2.0.0")
        newer_key = _store(services, tmp_path, newer)
        with ThreadPoolExecutor(1) as pool:
            with _deploys_held(services, group) as session:
                posted = _post_in_background(pool, client, owner, group, "1.0.0", other)
                eventually(lambda: _waiting_on_a_lock(services), "the upload to wait for the group's lock")
                deploy_firmware(
                    session=session,
                    group_id=group.id,
                    version="2.0.0",
                    firmware=StoredFirmware(
                        object_key=newer_key,
                        sha256=hashlib.sha256(newer).hexdigest(),
                        md5=hashlib.md5(newer).hexdigest(),
                        size=len(newer),
                    ),
                    now=utcnow(),
                )
            response = posted.result(timeout=30)
        assert response.status_code == 201, response.text
        assert response.json()["ota"]["version"] == "1.0.0"
        assert _download(client, group) == other


# -- the periodic sweep in serve --------------------------------------------------------


def test_serve_sweeps_periodically(
    fleet: Fleet,
    services: Services,
    settings: Settings,
    tmp_path: Path,
    backdate: Backdate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="otaship.sweep")
    sweeping = settings.with_overrides(gc_interval=0.2)
    services = dataclasses.replace(services, settings=sweeping)
    owner = fleet.owner()
    group = fleet.group(owner)
    with TestClient(create_app(sweeping, services=services)) as client:
        deploy(client, owner, group, "1.0.0")
        backdate(_key(build_image("1.0.0")), 2 * HOUR)
        young = _store(services, tmp_path, build_image("2.1.0"))
        old = _store(services, tmp_path, build_image("2.0.0"))
        backdate(old, 2 * HOUR)

        eventually(lambda: not services.storage.exists(old), "the sweep to remove the old orphan")

        sweeper = client.app.state.background.sweeper  # type: ignore[attr-defined]
        eventually(lambda: sweeper.sweeps >= 2, "another sweep")
        assert _stored_keys(services) == {_key(build_image("1.0.0")), young}
        assert _download(client, group) == build_image("1.0.0")
    size = len(build_image("2.0.0"))
    assert (
        f"orphan sweep: removed 1 orphaned object(s), {size} bytes; kept 1 referenced, "
        "1 younger than the grace period, 0 being stored"
    ) in caplog.messages


def test_an_interval_of_zero_turns_the_sweep_off(services: Services, settings: Settings) -> None:
    off = settings.with_overrides(gc_interval=0)
    with TestClient(create_app(off, services=dataclasses.replace(services, settings=off))) as client:
        assert client.app.state.background.sweeper is None  # type: ignore[attr-defined]


def test_a_failing_sweep_is_logged_and_tried_again(
    fleet: Fleet, services: Services, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    class Unreachable:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.failures = 0

        def list_objects(self, prefix: str) -> Any:
            self.failures += 1
            raise StorageError("Cloud Storage listing failed: cannot connect")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    caplog.set_level(logging.WARNING, logger="otaship.sweep")
    sweeping = settings.with_overrides(gc_interval=0.1)
    unreachable = Unreachable(services.storage)
    # Not a Storage: it answers the sweep's listing and hands the rest to the real one.
    failing = dataclasses.replace(services, settings=sweeping, storage=unreachable)  # type: ignore[arg-type]
    with TestClient(create_app(sweeping, services=failing)):
        eventually(lambda: unreachable.failures >= 2, "a second attempt")
    assert (
        "orphan sweep failed, trying again in 0.1 s: Cloud Storage listing failed: cannot connect"
        in caplog.messages
    )


# -- otaship gc -------------------------------------------------------------------------


def _gc_env(settings: Settings, **extra: str) -> dict[str, str]:
    """What `serve` runs with; for GCS the emulator's address is in the environment."""
    return cli_env(
        settings.data_dir,
        OTASHIP_DATABASE_URL=settings.resolved_database_url,
        OTASHIP_STORAGE_URL=settings.resolved_storage_url,
        **extra,
    )


def test_otaship_gc_removes_old_orphans_and_says_what_it_removed(
    client: TestClient,
    fleet: Fleet,
    services: Services,
    settings: Settings,
    tmp_path: Path,
    backdate: Backdate,
) -> None:
    owner = fleet.owner()
    group = fleet.group(owner)
    deploy(client, owner, group, "1.0.0")
    referenced = _key(build_image("1.0.0"))
    backdate(referenced, 2 * HOUR)
    old = _store(services, tmp_path, build_image("2.0.0"))
    backdate(old, 2 * HOUR)
    young = _store(services, tmp_path, build_image("2.1.0"))
    old_size, young_size = len(build_image("2.0.0")), len(build_image("2.1.0"))
    env = _gc_env(settings)

    dry = otaship(env, "gc", "--dry-run")
    assert dry.stdout == (
        f"would remove {old} ({old_size} bytes)\n"
        f"would remove 1 orphaned object(s), {old_size} bytes; kept 1 referenced, "
        "1 younger than the grace period, 0 being stored\n"
    )
    assert _stored_keys(services) == {referenced, old, young}

    done = otaship(env, "gc")
    assert done.stdout == (
        f"removed {old} ({old_size} bytes)\n"
        f"removed 1 orphaned object(s), {old_size} bytes; kept 1 referenced, "
        "1 younger than the grace period, 0 being stored\n"
    )
    assert _stored_keys(services) == {referenced, young}

    # No grace at all: safe only while no upload is in flight, as here.
    now = otaship(env, "gc", "--grace", "0")
    assert now.stdout == (
        f"removed {young} ({young_size} bytes)\n"
        f"removed 1 orphaned object(s), {young_size} bytes; kept 1 referenced, "
        "0 younger than the grace period, 0 being stored\n"
    )
    assert _stored_keys(services) == {referenced}
    assert _download(client, group) == build_image("1.0.0")


def test_otaship_gc_refuses_without_the_servers_database(tmp_path: Path) -> None:
    # With no record to read, every object would look orphaned.
    env = cli_env(tmp_path / "elsewhere")
    result = otaship(env, "gc", check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"otaship: error: no database at {(tmp_path / 'elsewhere' / 'otaship.db').resolve()}: "
        "run otaship from the folder where otaship serve runs (or set OTASHIP_DATA_DIR or "
        "OTASHIP_DATABASE_URL as for serve); otaship serve or otaship migrate creates a new one\n"
    )
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("args", "extra", "code", "message"),
    [
        (("gc", "--grace", "1h"), {}, 2, "argument --grace: must be a whole number of seconds, not '1h'"),
        (("gc", "--grace", "-5"), {}, 2, "argument --grace: must be a whole number of seconds, not '-5'"),
        (
            ("gc",),
            {"OTASHIP_GC_GRACE": "10"},
            1,
            "otaship: error: OTASHIP_GC_GRACE must be at least 60, not 10",
        ),
        (
            ("gc",),
            {"OTASHIP_GC_INTERVAL": "often"},
            1,
            "otaship: error: OTASHIP_GC_INTERVAL must be a whole number, not 'often'",
        ),
    ],
)
def test_otaship_gc_names_a_bad_value(
    tmp_path: Path, args: tuple[str, ...], extra: dict[str, str], code: int, message: str
) -> None:
    result = otaship(cli_env(tmp_path, **extra), *args, check=False)
    assert result.returncode == code
    assert message in result.stderr
    assert result.stdout == ""


def test_the_sweep_settings_come_from_the_environment() -> None:
    assert (Settings.from_env({}).gc_interval, Settings.from_env({}).gc_grace) == (3600, 3600)
    custom = Settings.from_env({"OTASHIP_GC_INTERVAL": "0", "OTASHIP_GC_GRACE": "7200"})
    assert (custom.gc_interval, custom.gc_grace) == (0, 7200)
