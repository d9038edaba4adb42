"""Deploying a stored firmware image to a group: the one place a GroupOta changes."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from otaship.protocol import trigger_topic
from otaship.receiver.db.groups import ancestors, descendants, lock_tree
from otaship.receiver.db.images import record_image
from otaship.receiver.db.models import Deployment, FirmwareImage, Group, GroupOta, TriggerMessage, User
from otaship.receiver.db.signing_keys import signed_by
from otaship.receiver.events import after_commit
from otaship.receiver.rollouts import plain
from otaship.receiver.rollouts.policy import Running
from otaship.receiver.rollouts.supersede import supersede_rollouts
from otaship.receiver.targeting.effective import resolve_effective

log = logging.getLogger("otaship.deploys")
# Enough of the SHA-256 to tell images apart in a log; the API shows all of it.
SHA256_SHOWN = 12


def deploy_line(deployment: Deployment, *, kind: str, triggers: int) -> str:
    """The line of a deploy (pure): ids first, as key=value for grep."""
    return (
        f"deployed version={deployment.version} group={deployment.group_id} owner={deployment.owner_id} "
        f"kind={kind} rollout={deployment.rollout_id or '-'} sha256={deployment.sha256[:SHA256_SHOWN]} "
        f"commit={deployment.commit or '-'} triggers={triggers}"
    )


@dataclass(frozen=True)
class StoredFirmware:
    """An image that is already complete in storage."""

    object_key: str
    sha256: str
    md5: str
    size: int
    chip: str | None = None
    project_name: str | None = None
    app_version: str | None = None
    idf_ver: str | None = None
    secure_version: int | None = None
    # The digests of the registered keys whose signature blocks an upload
    # verified over the image: recorded with its row (db/signing_keys.py).
    signers: tuple[str, ...] = ()

    @classmethod
    def of(cls, image: FirmwareImage) -> StoredFirmware:
        # The image row has every other field of this one, by the same name;
        # its signers are in their own table, and a stored image needs none again.
        return cls(
            **{field.name: getattr(image, field.name) for field in fields(cls) if field.name != "signers"}
        )


class VersionConflict(Exception):
    """The version is already deployed to the group with other bytes.

    It carries plain values: the transaction rolls back as it propagates, and
    the ORM row would be expired by then.
    """

    def __init__(self, current: GroupOta) -> None:
        super().__init__(current.version)
        self.version = current.version
        self.sha256 = current.sha256
        self.commit = current.commit


@dataclass(frozen=True)
class DeployResult:
    ota: GroupOta
    # False for the idempotent re-post of the same version and bytes.
    deployed: bool
    # Groups whose devices must be told: the group itself, and each descendant
    # whose effective version changed. (group id, new effective version)
    triggered: list[tuple[str, str]]


def ota_path(group: Group) -> str:
    """The spec's `path` of a group's firmware."""
    return f"ota/group/{group.id}{group.token}/firmware.bin"


def current_ota(*, session: Session, group_id: str) -> GroupOta | None:
    return session.exec(select(GroupOta).where(GroupOta.group_id == group_id)).first()


@dataclass(frozen=True)
class _Effective:
    """A copy of what a group's effective GroupOta said: the record is updated
    in place by a deploy, so comparing before and after needs the values."""

    ota_id: str
    revision: int
    version: str
    sha256: str


def _otas(*, session: Session, parents: dict[str, str | None]) -> dict[str, GroupOta]:
    """The OTA record of each group in `parents` that has one."""
    return {
        ota.group_id: ota
        for ota in session.exec(select(GroupOta).where(col(GroupOta.group_id).in_(list(parents))))
    }


def _effective(
    *,
    session: Session,
    parents: dict[str, str | None],
    groups: list[Group],
    otas: dict[str, GroupOta] | None = None,
) -> dict[str, _Effective | None]:
    """The effective OTA of each of `groups`, from `otas` if the caller already read them."""
    resolved = resolve_effective(
        parents, otas if otas is not None else _otas(session=session, parents=parents)
    )
    return {
        g.id: (
            _Effective(ota.id, ota.revision, ota.version, ota.sha256)
            if (ota := resolved[g.id]) is not None
            else None
        )
        for g in groups
    }


def _version(effective: _Effective | None) -> str | None:
    return effective.version if effective is not None else None


def _family(*, session: Session, group: Group, subtree: list[Group]) -> dict[str, str | None]:
    """Parent of each of the group's ancestors, the group and its descendants."""
    return {g.id: g.parent_id for g in (*ancestors(session=session, group=group), group, *subtree)}


def running_firmware(*, session: Session, group: Group) -> Running | None:
    """What the group's devices should run now (its effective OTA), and the
    deploy that put it there; None when the group has no firmware."""
    parents = _family(session=session, group=group, subtree=[])
    found = _effective(session=session, parents=parents, groups=[group])[group.id]
    if found is None:
        return None
    deployment_id = session.exec(
        select(Deployment.id).where(Deployment.ota_id == found.ota_id, Deployment.revision == found.revision)
    ).first()
    return Running(deployment_id=deployment_id, sha256=found.sha256, version=found.version)


def runs_own_ota(*, session: Session, group: Group, ota: GroupOta) -> bool:
    """Whether the group's devices run its own OTA record, rather than a newer
    deploy to an ancestor."""
    parents = _family(session=session, group=group, subtree=[])
    running = _effective(session=session, parents=parents, groups=[group])[group.id]
    return running is not None and running.ota_id == ota.id


def deploy_firmware(
    *,
    session: Session,
    group_id: str,
    version: str,
    firmware: StoredFirmware,
    now: datetime,
    commit: str | None = None,
    rollout_id: str | None = None,
    notify: bool = True,
    kind: str = "plain",
) -> DeployResult:
    """Record a deploy inside the caller's write transaction, at `now`.

    The group's tree, then the group row, are locked first (FOR UPDATE on
    PostgreSQL; SQLite's write transaction already holds the database lock), so
    concurrent deploys serialise and `__v` counts each of them exactly once.
    A deploy that changes what a running rollout's groups run ends that
    rollout (see otaship.receiver.rollouts.supersede); `rollout_id` names the rollout this
    deploy belongs to, which it never ends. `kind`, for its log line: plain, canary (a rollout's
    first stage) or promotion (its fleet stage).

    Raises NotSignedForGroup when the group (or an ancestor) has signing keys
    and no key it has now signed the image, whatever path the deploy came by.
    """
    lock_tree(session=session, group_id=group_id)
    group = session.exec(select(Group).where(Group.id == group_id).with_for_update()).one()
    current = current_ota(session=session, group_id=group.id)
    subtree = descendants(session=session, group=group)
    parents = _family(session=session, group=group, subtree=subtree)
    family = _otas(session=session, parents=parents)
    before = _effective(session=session, parents=parents, groups=[group, *subtree], otas=family)
    if current is not None and current.version == version:
        if current.sha256 != firmware.sha256:
            raise VersionConflict(current)
        running = before[group.id]
        if running is not None and running.ota_id == current.id:
            return DeployResult(ota=current, deployed=False, triggered=[])
        # The group's own record holds this image, but a newer deploy to an
        # ancestor is what its devices run: deploy it again, so it is.

    image = record_image(session=session, now=now, **asdict(firmware))
    signature = signed_by(session=session, group=group, sha256=image.sha256)
    # Strictly later than every OTA of the family, so that this deploy wins the
    # effective-firmware comparison (see targeting/effective.py) as the last to
    # commit: even within one clock tick, and even when the caller read `now`
    # before waiting for the tree's lock behind another deploy.
    last_updated = max(
        [
            now,
            *(ota.last_updated + timedelta(milliseconds=1) for ota in family.values()),
        ]
    )
    if current is None:
        ota = GroupOta(
            group_id=group.id,
            owner_id=group.owner_id,
            version=version,
            path=ota_path(group),
            revision=0,
            sha256=image.sha256,
        )
    else:
        ota = current
        ota.revision += 1
        ota.version = version
        ota.path = ota_path(group)
    ota.sha256 = image.sha256
    ota.image = image
    ota.last_updated = last_updated
    ota.commit = commit
    ota.signed_by = signature
    session.add(ota)
    session.flush()
    deployment = Deployment(
        ota_id=ota.id,
        group_id=group.id,
        owner_id=group.owner_id,
        revision=ota.revision,
        version=version,
        sha256=image.sha256,
        commit=commit,
        rollout_id=rollout_id,
        deployed_at=now,
        signed_by=signature,
    )
    session.add(deployment)
    session.flush()

    after = _effective(session=session, parents=parents, groups=[group, *subtree])
    triggered = [(group.id, version)]
    triggered += [
        (g.id, v) for g in subtree if (v := _version(after[g.id])) is not None and v != _version(before[g.id])
    ]
    triggers = len(triggered) if notify else 0
    # Before the rollouts it supersedes, whose lines say which deploy ended them.
    after_commit(
        session,
        log,
        deploy_line(deployment, kind=kind, triggers=triggers),
        event="deploy",
        deployment=deployment.id,
        group=group.id,
        owner=group.owner_id,
        version=version,
        kind=kind,
        rollout=rollout_id,
        sha256=firmware.sha256,
        commit=commit,
        triggers=triggers,
    )
    changed = {g for g, effective in after.items() if effective != before[g]}
    supersede_rollouts(session=session, now=now, deployment=deployment, parents=parents, changed=changed)
    plain.end_superseded(session=session, deployment=deployment, changed=changed, parents=parents, now=now)
    if notify:
        owner = session.get(User, group.owner_id)
        assert owner is not None
        # Same transaction as the deploy: the trigger exists exactly when the deploy does.
        session.add_all(
            TriggerMessage(
                topic=trigger_topic(owner.mqtt_user, group_id),
                payload=json.dumps({"version": effective_version}),
                deployment_id=deployment.id,
                created_at=now,
            )
            for group_id, effective_version in triggered
        )
        session.flush()
        if rollout_id is None:
            # A rollout follows its own devices, stage by stage.
            plain.follow(session=session, deployment=deployment, group_ids=[g for g, _ in triggered], now=now)
    return DeployResult(ota=ota, deployed=True, triggered=triggered)
