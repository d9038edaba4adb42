"""kill -9 between storing an upload's object and committing its record, then a restart.

A real `otaship serve` (a subprocess) on each database and each storage backend.
The window is made to last by the database itself: the test holds the lock that
every deploy to the group takes first (SQLite's write lock, PostgreSQL's row
lock), so the server stores the object and then waits for its transaction.
That is when it is killed. No hook in the server is needed.

Also the race of uploads of one version with different bytes: one wins, and
each loser leaves an object behind. In both cases `otaship gc` then leaves no
orphan, and nothing was counted twice.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import select

from otaship.receiver.db.engine import create_db_engine, read_session, write_session
from otaship.receiver.db.models import Group
from otaship.receiver.storage import object_key
from tests.esp_image import build_image
from tests.receiver_process import ReceiverProcess, migrated_env, otaship, otaship_json
from tests.waiting import eventually

if TYPE_CHECKING:
    from tests.gcs_emulator import GCSEmulator

# Provides the gcs_emulator fixture.
pytest_plugins = ["tests.gcs_emulator"]

MiB = 1024 * 1024
PREFIX = "fleet/ota"


class Deployment:
    """A data dir, a database and a storage backend that a server and the CLI share."""

    def __init__(self, env: dict[str, str], database_url: str, stored: Callable[[], set[str]]) -> None:
        self.env = env
        self.database_url = database_url
        self.engine: Engine = create_db_engine(database_url)
        #: The firmware object keys in storage, read straight from the folder or the emulator.
        self.stored = stored

    def referenced(self) -> set[str]:
        with read_session(self.engine) as session:
            # OTAs, history and rollouts reference their objects through image rows.
            return {
                str(key) for key in session.execute(text("SELECT object_key FROM firmware_images")).scalars()
            }

    def orphans(self) -> set[str]:
        return self.stored() - self.referenced()

    def count(self, table: str) -> int:
        with read_session(self.engine) as session:
            return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())

    @contextlib.contextmanager
    def deploys_held(self, group_id: str) -> Iterator[None]:
        """Hold the lock each deploy to the group takes first, as a long transaction would."""
        with write_session(self.engine) as session:
            # SQLite's BEGIN IMMEDIATE takes the write lock; PostgreSQL locks the row.
            session.exec(select(Group).where(Group.id == group_id).with_for_update()).one()
            yield


@pytest.fixture(params=["local", "gcs"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Deployment]:
    data_dir = tmp_path / "data"
    if request.param == "gcs":
        emulator: GCSEmulator = request.getfixturevalue("gcs_emulator")
        # The emulator's address reaches the server through the environment.
        env = migrated_env(
            data_dir,
            OTASHIP_DATABASE_URL=database_url,
            OTASHIP_STORAGE_URL=f"gs://{emulator.bucket}/{PREFIX}",
        )

        def stored() -> set[str]:
            return {name.removeprefix(f"{PREFIX}/") for name in emulator.object_names()}
    else:
        env = migrated_env(data_dir, OTASHIP_DATABASE_URL=database_url)
        objects = data_dir / "objects"

        def stored() -> set[str]:
            return {
                path.relative_to(objects).as_posix()
                for path in (objects / "firmware").rglob("*")
                if path.is_file()
            }

    made = Deployment(env, database_url, stored)
    yield made
    made.engine.dispose()


@pytest.fixture
def server(deployment: Deployment) -> Iterator[ReceiverProcess]:
    process = ReceiverProcess(deployment.env).start()
    yield process
    process.stop()


def _setup(deployment: Deployment) -> tuple[dict[str, str], dict[str, Any]]:
    user = otaship_json(deployment.env, "user", "create", "ada@example.com", "--plan", "pro")
    group = otaship_json(deployment.env, "group", "create", "fleet", "--owner", "ada@example.com")
    return {"Authorization": f"Bearer {user['api_key']}"}, group


def _post(
    url: str, headers: dict[str, str], group: dict[str, Any], version: str, image: bytes
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/ota/group",
        headers=headers,
        data={"group": group["id"], "token": group["token"], "version": version},
        files={"firmware": ("firmware.bin", image)},
        timeout=60,
    )


def _deploys_counted(url: str, kind: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "otaship_deploys_total" and sample.labels == {"kind": kind}:
                return float(sample.value)
    raise AssertionError("no otaship_deploys_total sample")


def _gc(deployment: Deployment, *args: str) -> str:
    # No grace: no upload is in flight while these run.
    return otaship(deployment.env, "gc", "--grace", "0", *args).stdout


def _key(image: bytes) -> str:
    return object_key(hashlib.sha256(image).hexdigest())


def test_kill_9_between_storing_and_committing_then_restart(deployment: Deployment) -> None:
    headers, group = _setup(deployment)
    first = build_image("1.0.0")
    large = build_image("1.1.0", code_size=12 * MiB)
    server = ReceiverProcess(deployment.env).start()
    try:
        assert _post(server.url, headers, group, "1.0.0", first).status_code == 201

        with ThreadPoolExecutor(1) as pool, deployment.deploys_held(group["id"]):
            upload: Future[httpx.Response] = pool.submit(_post, server.url, headers, group, "1.1.0", large)
            eventually(lambda: _key(large) in deployment.stored(), "the upload's object to be stored")
            server.kill()  # SIGKILL, while the deploy waits for its transaction
            server.process = None
            with pytest.raises(httpx.TransportError):
                upload.result(timeout=30)
    finally:
        server.stop()

    # What the kill left: the object, and no record of it.
    assert deployment.orphans() == {_key(large)}
    assert deployment.referenced() == {_key(first)}

    restarted = ReceiverProcess(deployment.env).start()
    try:
        spool = Path(deployment.env["OTASHIP_DATA_DIR"]) / "tmp"
        assert list(spool.iterdir()) == []
        listing = httpx.get(f"{restarted.url}/v1/ota/group", headers=headers, timeout=10).json()
        assert [(o["version"], o["__v"]) for o in listing["otas"]] == [("1.0.0", 0)]
        assert deployment.count("deployments") == 1
        # No record without its object.
        assert deployment.referenced() <= deployment.stored()

        before = deployment.orphans()
        assert _gc(deployment).splitlines() == [
            f"removed {_key(large)} ({len(large)} bytes)",
            f"removed 1 orphaned object(s), {len(large)} bytes; kept 1 referenced, "
            "0 younger than the grace period, 0 being stored",
        ]
        after = deployment.orphans()
        assert (len(before), len(after)) == (1, 0)
        assert deployment.stored() == {_key(first)}

        # The client tries again: deployed once, counted once.
        again = _post(restarted.url, headers, group, "1.1.0", large)
        assert again.status_code == 201, again.text
        assert (again.json()["deployed"], again.json()["ota"]["__v"]) == (True, 1)
        assert deployment.count("deployments") == 2
        assert _deploys_counted(restarted.url, "plain") == 1
        download = httpx.get(
            f"{restarted.url}/v1/ota/group/download/{group['id']}{group['token']}", timeout=30
        )
        assert hashlib.sha256(download.content).digest() == hashlib.sha256(large).digest()
        assert deployment.orphans() == set()
        assert list(spool.iterdir()) == []
    finally:
        restarted.stop()


def test_the_losers_of_a_same_version_race_leave_orphans_that_gc_removes(
    deployment: Deployment, server: ReceiverProcess
) -> None:
    racers = 6
    headers, group = _setup(deployment)
    images = [build_image("2.0.0", seed=n, code_size=256 * 1024) for n in range(racers)]
    with ThreadPoolExecutor(racers) as pool:
        with deployment.deploys_held(group["id"]):
            posts = [pool.submit(_post, server.url, headers, group, "2.0.0", image) for image in images]
            # Every racer has stored its object before any of them commits.
            eventually(
                lambda: {_key(image) for image in images} <= deployment.stored(),
                "every racer's object to be stored",
            )
        codes = sorted(post.result(timeout=60).status_code for post in posts)
    assert codes == [201] + [409] * (racers - 1)

    listing = httpx.get(f"{server.url}/v1/ota/group", headers=headers, timeout=10).json()
    (ota,) = listing["otas"]
    assert (ota["version"], ota["__v"]) == ("2.0.0", 0)
    assert deployment.count("deployments") == 1
    assert _deploys_counted(server.url, "plain") == 1
    winner = _key(next(image for image in images if hashlib.sha256(image).hexdigest() == ota["sha256"]))

    before = deployment.orphans()
    assert len(before) == racers - 1
    assert winner not in before
    size = len(images[0])
    assert _gc(deployment).splitlines()[-1] == (
        f"removed {racers - 1} orphaned object(s), {(racers - 1) * size} bytes; kept 1 referenced, "
        "0 younger than the grace period, 0 being stored"
    )
    after = deployment.orphans()
    assert len(after) == 0
    assert deployment.stored() == {winner}
    download = httpx.get(f"{server.url}/v1/ota/group/download/{group['id']}{group['token']}", timeout=30)
    assert hashlib.sha256(download.content).hexdigest() == ota["sha256"]
