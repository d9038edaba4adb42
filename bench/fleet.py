"""Owners, groups and devices for the benchmarks: through the otaship CLI, or in bulk through Core.

The CLI is what an operator uses; 100,000 rows go straight into the receiver's
tables with SQLAlchemy Core inserts (SQLModel's add_all measured 13x slower).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import Engine

from bench.servers import has_migrate, otaship_batch

CHUNK = 5_000


@dataclass(frozen=True)
class Owner:
    id: str
    email: str
    api_key: str
    mqtt_user: str
    mqtt_password: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass(frozen=True)
class GroupRef:
    id: str
    token: str


def database_url(env: dict[str, str]) -> str:
    return (
        env.get("OTASHIP_DATABASE_URL")
        or f"sqlite:///{Path(env['OTASHIP_DATA_DIR']).resolve() / 'otaship.db'}"
    )


def engine_for(env: dict[str, str]) -> Engine:
    return create_engine(database_url(env))


def create_owner(
    env: dict[str, str],
    groups: Sequence[tuple[str, int | None]] = (),
    email: str = "bench@example.com",
    *,
    migrate: bool | None = None,
) -> tuple[Owner, list[GroupRef]]:
    """A pro owner and its groups, with `otaship user create` and `otaship group create`.

    `groups` are (name, parent) pairs; parent is the index of an earlier group, or None.
    With `migrate`, `otaship migrate` runs first: the admin commands only use a
    database that exists. By default it runs wherever the receiver has it.
    """
    if migrate is None:
        migrate = has_migrate()
    commands: list[list[str]] = [["migrate"]] if migrate else []
    commands.append(["user", "create", email, "--plan", "pro"])
    offset = len(commands)
    for name, parent in groups:
        command = ["group", "create", name, "--owner", email]
        if parent is not None:
            command += ["--parent", f"{{{parent + offset}[id]}}"]
        commands.append(command)
    user, *created = otaship_batch(env, *commands)[offset - 1 :]
    owner = Owner(user["id"], email, user["api_key"], user["mqtt_user"], user["mqtt_password"])
    return owner, [GroupRef(g["id"], g["token"]) for g in created]


def _insert(engine: Engine, table: Any, rows: Iterable[dict[str, Any]]) -> None:
    batch: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for row in rows:
            batch.append(row)
            if len(batch) == CHUNK:
                conn.execute(insert(table), batch)
                batch = []
        if batch:
            conn.execute(insert(table), batch)


def insert_devices(
    env: dict[str, str], owner: Owner, group: GroupRef, device_ids: list[str], firmware_version: str
) -> None:
    from otaship.receiver.db.models import Device

    now = datetime.now(UTC)
    engine = engine_for(env)
    try:
        _insert(
            engine,
            Device.__table__,  # type: ignore[attr-defined]  # made by SQLModel at run time
            (
                {
                    "id": device_id,
                    "owner_id": owner.id,
                    "group_id": group.id,
                    "name": device_id,
                    "firmware_version": firmware_version,
                    "last_seen": None,
                    "last_code": None,
                    "created_at": now,
                }
                for device_id in device_ids
            ),
        )
    finally:
        engine.dispose()


def insert_groups_with_otas(env: dict[str, str], owner: Owner, count: int) -> list[GroupRef]:
    """`count` groups of the owner, each with a deployed OTA record (what the listing shows)."""
    from otaship.receiver.db.models import FirmwareImage, Group, GroupOta

    start = datetime.now(UTC) - timedelta(days=30)
    groups = [GroupRef(secrets.token_hex(12), secrets.token_urlsafe(12)[:16]) for _ in range(count)]
    # Bytes of their own: a second call must not record the same image again.
    content = b"bench" + secrets.token_bytes(16)
    sha = hashlib.sha256(content).hexdigest()
    md5 = hashlib.md5(content).hexdigest()
    engine = engine_for(env)
    try:
        _insert(
            engine,
            FirmwareImage.__table__,  # type: ignore[attr-defined]  # made by SQLModel at run time
            [
                {
                    "sha256": sha,
                    "size": 1_000_000,
                    "md5": md5,
                    "chip": "esp32",
                    "project_name": "bench",
                    "app_version": "1.0.0",
                    "idf_ver": "v5.1.2",
                    "object_key": f"firmware/sha256/{sha}.bin",
                    "created_at": start,
                }
            ],
        )
        _insert(
            engine,
            Group.__table__,  # type: ignore[attr-defined]  # made by SQLModel at run time
            (
                {
                    "id": g.id,
                    "owner_id": owner.id,
                    "name": f"group-{n:06d}",
                    "token": g.token,
                    "parent_id": None,
                    "chip": None,
                    "created_at": start,
                }
                for n, g in enumerate(groups)
            ),
        )
        _insert(
            engine,
            GroupOta.__table__,  # type: ignore[attr-defined]  # made by SQLModel at run time
            (
                {
                    "id": secrets.token_hex(12),
                    "group_id": g.id,
                    "owner_id": owner.id,
                    "version": f"1.0.{n % 1000}",
                    "path": f"ota/group/{g.id}{g.token}/firmware.bin",
                    "sha256": sha,
                    "commit": None,
                    "revision": 0,
                    "last_updated": start + timedelta(seconds=n),
                }
                for n, g in enumerate(groups)
            ),
        )
    finally:
        engine.dispose()
    return groups


def deploy(
    url: str,
    owner: Owner,
    group: GroupRef,
    version: str,
    image: bytes,
    *,
    fields: dict[str, str] | None = None,
    timeout: float = 120,
) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/ota/group",
        headers=owner.headers,
        data={"group": group.id, "token": group.token, "version": version, **(fields or {})},
        files={"firmware": ("firmware.bin", image, "application/octet-stream")},
        timeout=timeout,
    )
    if response.status_code != 201:
        raise RuntimeError(f"deploy of {version} answered {response.status_code}: {response.text}")
    result: dict[str, Any] = response.json()
    return result
