"""Shared fixtures: a real receiver app on real backends, and ways to populate it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from otaship.receiver.app import build_services, create_app
from otaship.receiver.db.devices import create_device
from otaship.receiver.db.engine import write_session
from otaship.receiver.db.groups import create_group
from otaship.receiver.db.models import Device, Group, User
from otaship.receiver.db.users import create_user
from otaship.receiver.services import Services
from otaship.receiver.settings import Settings
from tests.postgres import (  # noqa: F401  (fixtures)
    empty_postgres_url,
    new_postgres_url,
    own_postgres_database,
    postgres_database,
    postgres_url,
)

# The action's and the fleet's: receivers with an owner, the deploy CLI as a step;
# the README's blocks: a scratch folder to run them in.
pytest_plugins = ["tests.action_fixtures", "tests.readme_run"]

# Lines a test module wants shown at the end of the run (pytest captures what
# fixtures print); see pytest_terminal_summary below.
SUMMARY = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.section("summary")
        for line in lines:
            terminalreporter.write_line(line)


@dataclass
class Owner:
    user: User
    api_key: str
    mqtt_password: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


class Fleet:
    """Creates owners, groups and devices straight in the receiver's database."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._count = 0

    def owner(self, plan: str = "pro") -> Owner:
        self._count += 1
        with write_session(self.services.engine) as session:
            created = create_user(session=session, email=f"owner{self._count}@example.com", plan=plan)
        return Owner(created.user, created.api_key, created.mqtt_password)

    def group(
        self, owner: Owner, *, name: str = "fleet", parent: Group | None = None, chip: str | None = None
    ) -> Group:
        with write_session(self.services.engine) as session:
            owner_user = session.get(User, owner.user.id)
            assert owner_user is not None
            return create_group(
                session=session,
                owner=owner_user,
                name=name,
                parent_id=parent.id if parent else None,
                chip=chip,
            )

    def device(self, group: Group, *, name: str = "dev", firmware_version: str | None = None) -> Device:
        with write_session(self.services.engine) as session:
            return create_device(session=session, group=group, name=name, firmware_version=firmware_version)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test on the app runs on both backends: the embedded SQLite and PostgreSQL."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'otaship.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Makes URLs of empty databases (no schema at all) on one backend."""
    if request.param == "postgres":
        new_postgres_url: Callable[[], str] = request.getfixturevalue("new_postgres_url")
        return new_postgres_url
    numbers = itertools.count()
    return lambda: f"sqlite:///{tmp_path / f'db{next(numbers)}.sqlite'}"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        mqtt_url="none",
        max_firmware_bytes=2 * 1024 * 1024,
    )


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build_services(settings)
    yield built
    built.storage.close()
    # A connection still out would outlive the engine, left to the garbage
    # collector: work in a thread that the app's stop did not wait for.
    still_out = built.engine.pool.checkedout()  # type: ignore[attr-defined]
    built.engine.dispose()
    assert still_out == 0, f"{still_out} database connection(s) still checked out as the test ends"


@pytest.fixture
def client(settings: Settings, services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(settings, services=services)) as test_client:
        yield test_client


@pytest.fixture
def fleet(services: Services) -> Fleet:
    return Fleet(services)
