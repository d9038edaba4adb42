"""SQLModel tables: owners, their groups and devices, and what was deployed where."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, UniqueConstraint, false
from sqlmodel import Field, Relationship, SQLModel

from otaship.receiver.db.enums import EnumText, Outcome, Stage, State
from otaship.receiver.ids import new_id, utcnow

PLANS = ("free", "pro")


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    email: str = Field(unique=True, max_length=320)
    plan: str = Field(default="free", max_length=16)
    mqtt_user: str = Field(unique=True, max_length=64)
    mqtt_password_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=24)
    key_hash: str = Field(unique=True, max_length=64)
    # The first characters, so an operator can tell keys apart without the secret.
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None)


class Group(SQLModel, table=True):
    __tablename__ = "groups"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=24)
    name: str = Field(max_length=200)
    # Kept in clear: the spec shows it inside every OTA's `path`, and devices
    # present it on download (compared in constant time).
    token: str = Field(max_length=16)
    parent_id: str | None = Field(default=None, foreign_key="groups.id", index=True, max_length=24)
    chip: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow)


class Device(SQLModel, table=True):
    __tablename__ = "devices"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=24)
    group_id: str = Field(foreign_key="groups.id", index=True, max_length=24)
    name: str = Field(max_length=200)
    firmware_version: str | None = Field(default=None, max_length=64)
    last_seen: datetime | None = Field(default=None)
    last_code: int | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow)


class FirmwareImage(SQLModel, table=True):
    """A stored firmware image, one row per SHA-256: what the OTA, deployment
    and rollout rows point at. Never deleted, so the objects these rows name
    are exactly the ones a record ever referenced (the sweep keeps them)."""

    __tablename__ = "firmware_images"

    sha256: str = Field(primary_key=True, max_length=64)
    size: int
    md5: str = Field(max_length=32)
    # What the image's header and app descriptor say; None for an image known
    # only from deploy history before this table existed, until it is deployed again.
    chip: str | None = Field(default=None, max_length=32)
    project_name: str | None = Field(default=None, max_length=32)
    app_version: str | None = Field(default=None, max_length=32)
    idf_ver: str | None = Field(default=None, max_length=32)
    object_key: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class GroupOta(SQLModel, table=True):
    """The last OTA of a group, updated in place at each deploy (the spec's listing)."""

    __tablename__ = "group_otas"
    __table_args__ = (Index("ix_group_otas_owner_updated", "owner_id", "last_updated"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    group_id: str = Field(foreign_key="groups.id", unique=True, max_length=24)
    owner_id: str = Field(foreign_key="users.id", max_length=24)
    version: str = Field(max_length=64)
    path: str = Field(max_length=200)
    sha256: str = Field(foreign_key="firmware_images.sha256", max_length=64)
    commit: str | None = Field(default=None, max_length=64)
    # The spec's `__v`: 0 after the first deploy, +1 with each later one.
    revision: int = Field(default=0)
    last_updated: datetime = Field(default_factory=utcnow)
    # Loaded with the row (one query per statement, not per row): every view
    # of an OTA shows its image, and rows are shown after their session ends.
    image: FirmwareImage = Relationship(sa_relationship_kwargs={"lazy": "selectin"})


class Deployment(SQLModel, table=True):
    """Every deploy, kept as history; GroupOta only holds the latest."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("ota_id", "revision"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    ota_id: str = Field(foreign_key="group_otas.id", index=True, max_length=24)
    group_id: str = Field(foreign_key="groups.id", index=True, max_length=24)
    owner_id: str = Field(foreign_key="users.id", max_length=24)
    revision: int
    version: str = Field(max_length=64)
    sha256: str = Field(foreign_key="firmware_images.sha256", max_length=64)
    commit: str | None = Field(default=None, max_length=64)
    rollout_id: str | None = Field(default=None, max_length=24)
    deployed_at: datetime = Field(default_factory=utcnow)


class TriggerMessage(SQLModel, table=True):
    """The outbox: a trigger is written with its deploy and published after.

    A trigger that could not be published (broker down, receiver killed) stays
    here until it is; `claimed_until` lets replicas share the work without
    publishing one message twice.
    """

    __tablename__ = "trigger_outbox"
    __table_args__ = (Index("ix_trigger_outbox_pending", "published_at", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    topic: str = Field(max_length=200)
    payload: str = Field(max_length=500)
    deployment_id: str | None = Field(default=None, max_length=24)
    created_at: datetime = Field(default_factory=utcnow)
    claimed_until: datetime | None = Field(default=None)
    attempts: int = Field(default=0)
    published_at: datetime | None = Field(default=None)


class Rollout(SQLModel, table=True):
    """A staged deploy: the canary subgroup first, then the whole group."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_group_created", "group_id", "created_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=24)
    group_id: str = Field(foreign_key="groups.id", max_length=24)
    canary_group_id: str = Field(foreign_key="groups.id", max_length=24)
    version: str = Field(max_length=64)
    sha256: str = Field(foreign_key="firmware_images.sha256", max_length=64)
    commit: str | None = Field(default=None, max_length=64)
    canary_timeout: int
    success_threshold: float
    error_threshold: int
    soak: int
    auto_promote: bool
    state: State = Field(sa_type=EnumText(State, 16), index=True)
    reason: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    canary_started_at: datetime = Field(default_factory=utcnow)
    # When the canary first reached its success threshold; the soak runs from here.
    canary_healthy_at: datetime | None = Field(default=None)
    fleet_started_at: datetime | None = Field(default=None)
    # Indexed: device reports are still recorded for a while after the end.
    ended_at: datetime | None = Field(default=None, index=True)
    # What the group ran (its effective OTA) when the rollout started: a
    # promotion deploys only over that. The deployment and sha256 are None
    # when it ran nothing; `baseline_recorded` is False for a rollout started
    # before otaship recorded it, which is promoted unchecked.
    baseline_recorded: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    baseline_deployment_id: str | None = Field(default=None, max_length=24)
    baseline_sha256: str | None = Field(default=None, max_length=64)


class RolloutDevice(SQLModel, table=True):
    """One targeted device's outcome in one stage of a rollout."""

    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_device_outcome", "device_id", "outcome"),)

    rollout_id: str = Field(foreign_key="rollouts.id", primary_key=True, max_length=24)
    stage: Stage = Field(sa_type=EnumText(Stage, 8), primary_key=True)
    device_id: str = Field(foreign_key="devices.id", primary_key=True, max_length=64)
    group_id: str = Field(max_length=24)
    outcome: Outcome = Field(sa_type=EnumText(Outcome, 16))
    started_update: bool = Field(default=False)
    # The uptime last seen before its 201: a lower one afterwards means it rebooted.
    uptime_at_start: float | None = Field(default=None)
    fw_version: str | None = Field(default=None, max_length=64)
    code: int | None = Field(default=None)
    updated_at: datetime = Field(default_factory=utcnow)
    # Times its group's trigger was published again for it (rollouts/retries.py),
    # and when the next one is due while its outcome is `retrying`.
    retries: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    retry_at: datetime | None = Field(default=None)


class PlainDeploy(SQLModel, table=True):
    """A deploy without a rollout whose devices are followed, so that those
    that fail are retried (rollouts/plain.py); ended once every device
    answered, after FOLLOW_PLAIN_DEPLOY, or when a newer deploy changes its groups."""

    __tablename__ = "plain_deploys"

    deployment_id: str = Field(foreign_key="deployments.id", primary_key=True, max_length=24)
    owner_id: str = Field(foreign_key="users.id", max_length=24)
    group_id: str = Field(foreign_key="groups.id", max_length=24)
    version: str = Field(max_length=64)
    started_at: datetime = Field(default_factory=utcnow)
    # Indexed: device reports are still recorded for a while after the end.
    ended_at: datetime | None = Field(default=None, index=True)
    reason: str | None = Field(default=None, max_length=500)


class DeployDevice(SQLModel, table=True):
    """One triggered device's outcome in a plain deploy, as RolloutDevice is in a rollout stage."""

    __tablename__ = "deploy_devices"

    deployment_id: str = Field(foreign_key="plain_deploys.deployment_id", primary_key=True, max_length=24)
    device_id: str = Field(foreign_key="devices.id", primary_key=True, index=True, max_length=64)
    group_id: str = Field(max_length=24)
    outcome: Outcome = Field(sa_type=EnumText(Outcome, 16))
    started_update: bool = Field(default=False)
    uptime_at_start: float | None = Field(default=None)
    fw_version: str | None = Field(default=None, max_length=64)
    code: int | None = Field(default=None)
    updated_at: datetime = Field(default_factory=utcnow)
    retries: int = Field(default=0)
    retry_at: datetime | None = Field(default=None)
