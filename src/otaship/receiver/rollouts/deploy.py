"""Deploying a stored firmware image to a group: the one place a GroupOta changes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session, select

from otaship.protocol import trigger_topic
from otaship.receiver.db.groups import ancestors, descendants, lock_tree
from otaship.receiver.db.models import Deployment, Group, GroupOta, TriggerMessage, User
from otaship.receiver.ids import utcnow
from otaship.receiver.rollouts import plain
from otaship.receiver.rollouts.policy import Running
from otaship.receiver.rollouts.supersede import supersede_rollouts
from otaship.receiver.targeting.effective import resolve_effective


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


def _effective(
    *, session: Session, parents: dict[str, str | None], groups: list[Group]
) -> dict[str, _Effective | None]:
    otas = {
        ota.group_id: ota
        for ota in session.exec(
            select(GroupOta).where(GroupOta.group_id.in_(list(parents)))  # type: ignore[attr-defined]
        )
    }
    resolved = resolve_effective(parents, otas)
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
    commit: str | None = None,
    rollout_id: str | None = None,
    notify: bool = True,
) -> DeployResult:
    """Record a deploy inside the caller's write transaction.

    The group's tree, then the group row, are locked first (FOR UPDATE on
    PostgreSQL; SQLite's write transaction already holds the database lock), so
    concurrent deploys serialise and `__v` counts each of them exactly once.
    A deploy that changes what a running rollout's groups run ends that
    rollout (see otaship.receiver.rollouts.supersede); `rollout_id` names the rollout this
    deploy belongs to, which it never ends.
    """
    lock_tree(session=session, group_id=group_id)
    group = session.exec(select(Group).where(Group.id == group_id).with_for_update()).one()
    current = current_ota(session=session, group_id=group.id)
    subtree = descendants(session=session, group=group)
    parents = _family(session=session, group=group, subtree=subtree)
    before = _effective(session=session, parents=parents, groups=[group, *subtree])
    if current is not None and current.version == version:
        if current.sha256 != firmware.sha256:
            raise VersionConflict(current)
        running = before[group.id]
        if running is not None and running.ota_id == current.id:
            return DeployResult(ota=current, deployed=False, triggered=[])
        # The group's own record holds this image, but a newer deploy to an
        # ancestor is what its devices run: deploy it again, so it is.

    now = utcnow()
    if current is None:
        ota = GroupOta(
            group_id=group.id,
            owner_id=group.owner_id,
            version=version,
            path=ota_path(group),
            object_key=firmware.object_key,
            sha256=firmware.sha256,
            md5=firmware.md5,
            size=firmware.size,
            revision=0,
            last_updated=now,
        )
    else:
        ota = current
        ota.revision += 1
        ota.version = version
        ota.path = ota_path(group)
        ota.object_key = firmware.object_key
        ota.sha256 = firmware.sha256
        ota.md5 = firmware.md5
        ota.size = firmware.size
        # Strictly later than before, so this deploy wins the effective-firmware
        # comparison even within one clock tick.
        ota.last_updated = max(now, current.last_updated + timedelta(milliseconds=1))
    ota.chip = firmware.chip
    ota.project_name = firmware.project_name
    ota.app_version = firmware.app_version
    ota.idf_ver = firmware.idf_ver
    ota.commit = commit
    session.add(ota)
    session.flush()
    deployment = Deployment(
        ota_id=ota.id,
        group_id=group.id,
        owner_id=group.owner_id,
        revision=ota.revision,
        version=version,
        object_key=firmware.object_key,
        sha256=firmware.sha256,
        md5=firmware.md5,
        size=firmware.size,
        commit=commit,
        rollout_id=rollout_id,
        deployed_at=now,
    )
    session.add(deployment)
    session.flush()

    after = _effective(session=session, parents=parents, groups=[group, *subtree])
    changed = {g for g, effective in after.items() if effective != before[g]}
    supersede_rollouts(session=session, deployment=deployment, parents=parents, changed=changed)
    plain.end_superseded(session=session, deployment=deployment, changed=changed, parents=parents, now=now)
    triggered = [(group.id, version)]
    triggered += [
        (g.id, v) for g in subtree if (v := _version(after[g.id])) is not None and v != _version(before[g.id])
    ]
    if notify:
        owner = session.get(User, group.owner_id)
        assert owner is not None
        # Same transaction as the deploy: the trigger exists exactly when the deploy does.
        session.add_all(
            TriggerMessage(
                topic=trigger_topic(owner.mqtt_user, group_id),
                payload=json.dumps({"version": effective_version}),
                deployment_id=deployment.id,
            )
            for group_id, effective_version in triggered
        )
        session.flush()
        if rollout_id is None:
            # A rollout follows its own devices, stage by stage.
            plain.follow(session=session, deployment=deployment, group_ids=[g for g, _ in triggered], now=now)
    return DeployResult(ota=ota, deployed=True, triggered=triggered)
