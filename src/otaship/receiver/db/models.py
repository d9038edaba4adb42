"""SQLModel tables: owners, their groups and devices, and what was deployed where."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Text, UniqueConstraint, false
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
    # argon2id, in its own encoded form (parameters and salt included); None
    # until `otaship user password` sets one, and then no sign-in works.
    password_hash: str | None = Field(default=None, max_length=200)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=24)
    key_hash: str = Field(unique=True, max_length=64)
    # The first characters, so an operator can tell keys apart without the secret.
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None)
    # Written at most once a minute per key (db/logins.py), not on every request.
    last_used_at: datetime | None = Field(default=None)


class LoginToken(SQLModel, table=True):
    """What a sign-in with a password issues: a bearer token for the API, or the
    console's session cookie. Stored as the secret's SHA-256, as API keys are."""

    __tablename__ = "login_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=24)
    token_hash: str = Field(unique=True, max_length=64)
    # "bearer" (POST /v1/auth/login) or "console" (the cookie).
    kind: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
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
    # Refuse an image whose app descriptor's secure_version is lower than the
    # one the group runs (this group's, or an ancestor's, setting).
    anti_rollback: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class SigningKey(SQLModel, table=True):
    """A public key whose Secure Boot V2 signature a group's firmware must carry
    (one of its keys, or of its ancestors')."""

    __tablename__ = "signing_keys"
    __table_args__ = (UniqueConstraint("group_id", "digest"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    group_id: str = Field(foreign_key="groups.id", index=True, max_length=24)
    owner_id: str = Field(foreign_key="users.id", max_length=24)
    name: str = Field(max_length=200)
    scheme: str = Field(max_length=16)
    # Hex SHA-256 of the key as a signature block holds it: how blocks name their key.
    digest: str = Field(max_length=64)
    public_key: str = Field(max_length=4096)
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
    # When it last booted, by its status reports (report time minus uptime):
    # here, not only in the memory of the worker that took them, because a
    # shared subscription may hand its 201 to another (mqtt/reports.py).
    booted_at: datetime | None = Field(default=None)


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
    # The app descriptor's anti-rollback counter; None without a descriptor.
    secure_version: int | None = Field(default=None)


class ImageSigner(SQLModel, table=True):
    """A key whose signature block verified over an image at an upload: what a
    promotion checks the group's keys against, without reading the image again."""

    __tablename__ = "image_signers"

    sha256: str = Field(foreign_key="firmware_images.sha256", primary_key=True, max_length=64)
    key_digest: str = Field(primary_key=True, max_length=64)


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
    # The digest of the group's key whose signature block verified, or None
    # when the group had no key (the image was taken unsigned).
    signed_by: str | None = Field(default=None, max_length=64)
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
    signed_by: str | None = Field(default=None, max_length=64)


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
    """A staged deploy: its waves (subgroups, the first being the canary) in
    order, then the whole group. While the state is `canary`, `wave` is the
    index of the wave running (a RolloutWave)."""

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
    # The wave running (0 is the canary); rollouts from before waves had one.
    wave: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Halt a wave once at least `min_devices` finished and more than this share failed.
    max_failure_rate: float | None = Field(default=None)
    min_devices: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    # Set while paused: the clock stops (stored times move on by the pause at resume).
    paused_at: datetime | None = Field(default=None)
    # Opt-in: on a halt, each wave that got the version goes back to what it ran.
    rollback: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class RolloutWave(SQLModel, table=True):
    """One wave of a rollout: a subgroup of its group, with the policy it is judged by."""

    __tablename__ = "rollout_waves"

    rollout_id: str = Field(foreign_key="rollouts.id", primary_key=True, max_length=24)
    # 0 is the canary.
    position: int = Field(primary_key=True)
    group_id: str = Field(foreign_key="groups.id", max_length=24)
    canary_timeout: int
    success_threshold: float
    error_threshold: int
    soak: int
    started_at: datetime | None = Field(default=None)
    # When the wave first reached its success threshold; the soak runs from here.
    healthy_at: datetime | None = Field(default=None)
    ended_at: datetime | None = Field(default=None)
    # What the wave's subtree ran (its effective OTA) just before the rollout
    # deployed to it: what a rollback gives it back. `previous_recorded` is
    # False for a wave started before otaship recorded it; the sha256 is None
    # when it ran nothing.
    previous_recorded: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    previous_sha256: str | None = Field(default=None, max_length=64)
    previous_version: str | None = Field(default=None, max_length=64)
    # What the rollback did with the wave, in words; None until one ran.
    rollback: str | None = Field(default=None, max_length=500)


class RolloutControl(SQLModel, table=True):
    """A pause or a resume of a rollout: who asked, and when."""

    __tablename__ = "rollout_controls"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(foreign_key="rollouts.id", index=True, max_length=24)
    action: str = Field(max_length=16)
    # The owner's email and the prefix of the API key that asked.
    actor: str = Field(max_length=400)
    at: datetime = Field(default_factory=utcnow)


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
    # The wave of a device of the canary stage (its position); None in the fleet stage.
    wave: int | None = Field(default=None)
    # When it last booted before its 201 (report time minus uptime): a later
    # boot means it rebooted, even when it reported uptime 0 just before the 201.
    boot_at_start: datetime | None = Field(default=None)
    # Its latest boot seen after it took the update, and how many boots since.
    booted_at: datetime | None = Field(default=None)
    reboots: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Which signal failed it: code, reverted, dark, reboot-loop, timeout.
    reason: str | None = Field(default=None, max_length=16)


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
    boot_at_start: datetime | None = Field(default=None)


class GithubBinding(SQLModel, table=True):
    """A GitHub repository whose published releases deploy to a group (receiver/github/).

    The webhook secret must be recovered to check each delivery's HMAC, and the
    token to call GitHub: both are stored encrypted with OTASHIP_SECRET_KEY
    (github/sealed.py), never in clear and never hashed.
    """

    __tablename__ = "github_bindings"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=24)
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=24)
    repo: str = Field(max_length=200)
    group_id: str = Field(foreign_key="groups.id", max_length=24)
    # The rollout a release starts: the POST's `canary` and `waves` fields, as given.
    canary_group_id: str | None = Field(default=None, max_length=24)
    waves: str | None = Field(default=None, max_length=200)
    asset_pattern: str = Field(max_length=200)
    prereleases: bool = Field(default=False)
    # Report the rollouts it starts back to GitHub as deployments.
    report_deployments: bool = Field(default=False)
    secret_sealed: str = Field(max_length=500)
    token_sealed: str | None = Field(default=None, max_length=1000)
    created_at: datetime = Field(default_factory=utcnow)


class GithubDelivery(SQLModel, table=True):
    """One webhook delivery and what became of it; a `queued` one is a job
    (github/jobs.py), claimed with a lease as the trigger outbox's rows are."""

    __tablename__ = "github_deliveries"
    __table_args__ = (
        UniqueConstraint("binding_id", "delivery_id"),
        Index("ix_github_deliveries_owner_received", "owner_id", "received_at"),
        Index("ix_github_deliveries_outcome", "outcome", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    binding_id: str = Field(max_length=24)
    owner_id: str = Field(foreign_key="users.id", max_length=24)
    # X-GitHub-Delivery: a GUID.
    delivery_id: str = Field(max_length=64)
    event: str = Field(max_length=64)
    action: str | None = Field(default=None, max_length=64)
    tag: str | None = Field(default=None, max_length=255)
    # What the job needs of the release (its assets, target, flags), as JSON.
    release: str | None = Field(default=None, sa_type=Text)
    outcome: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=1000)
    version: str | None = Field(default=None, max_length=64)
    commit: str | None = Field(default=None, max_length=64)
    rollout_id: str | None = Field(default=None, max_length=24)
    received_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = Field(default=None)
    claimed_until: datetime | None = Field(default=None)
    attempts: int = Field(default=0)
    # With the binding's report_deployments: the GitHub Deployment of the deploy,
    # and the last state reported to it (`success` or `failure` ends it).
    github_deployment_id: int | None = Field(default=None, sa_type=BigInteger)
    reported_state: str | None = Field(default=None, max_length=16)
