"""What the console's pages show, read from the database, always within one owner."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, or_
from sqlmodel import Session, col, select

from otaship.receiver.db.groups import list_groups
from otaship.receiver.db.models import Deployment, Device, FirmwareImage, Group, GroupOta, Rollout
from otaship.receiver.targeting.effective import resolve_effective

PAGE_SIZE = 50
MAX_PAGE = 100_000
HISTORY_LIMIT = 20
SORTS = {
    "id": col(Device.id),
    "name": col(Device.name),
    "version": col(Device.firmware_version),
    "last_seen": col(Device.last_seen),
    "code": col(Device.last_code),
}


@dataclass
class GroupSummary:
    group: Group
    depth: int
    effective_version: str | None
    devices: int = 0
    online: int = 0
    versions: dict[str | None, int] = field(default_factory=dict)


def tree_order(groups: Sequence[Group]) -> list[tuple[Group, int]]:
    """Groups as a tree, each after its parent, children by name: (group, depth).
    A group whose parent is not in `groups` is a root."""
    ids = {g.id for g in groups}
    children: dict[str | None, list[Group]] = defaultdict(list)
    for g in groups:
        children[g.parent_id if g.parent_id in ids else None].append(g)
    ordered: list[tuple[Group, int]] = []
    seen: set[str] = set()

    def walk(parent: str | None, depth: int) -> None:
        for g in sorted(children.get(parent, []), key=lambda g: (g.name, g.id)):
            if g.id not in seen:
                seen.add(g.id)
                ordered.append((g, depth))
                walk(g.id, depth + 1)

    walk(None, 0)
    return ordered


def fleet(*, session: Session, owner_id: str, online_since: datetime) -> list[GroupSummary]:
    groups = list_groups(session=session, owner_id=owner_id)
    otas = {
        ota.group_id: ota for ota in session.exec(select(GroupOta).where(col(GroupOta.owner_id) == owner_id))
    }
    effective = resolve_effective({g.id: g.parent_id for g in groups}, otas)
    summaries = {
        g.id: GroupSummary(
            group=g, depth=depth, effective_version=(ota.version if (ota := effective.get(g.id)) else None)
        )
        for g, depth in tree_order(groups)
    }
    online = func.sum(case((col(Device.last_seen) >= online_since, 1), else_=0))
    rows = session.exec(
        select(Device.group_id, Device.firmware_version, func.count(), online)
        .where(col(Device.owner_id) == owner_id)
        .group_by(col(Device.group_id), col(Device.firmware_version))
    ).all()
    for group_id, version, count, online_count in rows:
        summary = summaries.get(group_id)
        if summary is not None:
            summary.devices += count
            summary.online += int(online_count or 0)
            summary.versions[version] = summary.versions.get(version, 0) + count
    return list(summaries.values())


@dataclass(frozen=True)
class DeviceQuery:
    search: str = ""
    sort: str = "id"
    descending: bool = False
    page: int = 1


@dataclass(frozen=True)
class DevicePage:
    devices: list[Device]
    total: int
    matching: int
    online: int
    pages: int


def devices_page(
    *, session: Session, group_id: str, query: DeviceQuery, online_since: datetime
) -> DevicePage:
    """One page of a group's devices: a count and an indexed, sorted, limited read."""
    in_group = col(Device.group_id) == group_id
    filters = [in_group]
    if query.search:
        pattern = "%" + query.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        filters.append(
            or_(
                col(Device.id).like(pattern, escape="\\"),
                col(Device.name).like(pattern, escape="\\"),
                col(Device.firmware_version).like(pattern, escape="\\"),
            )
        )
    total, online = session.exec(
        select(func.count(), func.sum(case((col(Device.last_seen) >= online_since, 1), else_=0))).where(
            in_group
        )
    ).one()
    matching = (
        total
        if not query.search
        else session.exec(select(func.count()).select_from(Device).where(*filters)).one()
    )
    column = SORTS[query.sort]
    order = column.desc() if query.descending else column.asc()
    # Never-seen devices and never-reported versions last, whichever the direction.
    nulls = column.is_(None)
    pages = max(1, -(-matching // PAGE_SIZE))
    page = min(query.page, pages)
    devices = session.exec(
        select(Device)
        .where(*filters)
        .order_by(nulls, order, col(Device.id))
        .offset((page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE)
    ).all()
    return DevicePage(
        devices=list(devices), total=total, matching=matching, online=int(online or 0), pages=pages
    )


@dataclass(frozen=True)
class HistoryRow:
    deployment: Deployment
    image: FirmwareImage


def deploy_history(*, session: Session, group_id: str) -> list[HistoryRow]:
    rows = session.exec(
        select(Deployment, FirmwareImage)
        .join(FirmwareImage, col(FirmwareImage.sha256) == col(Deployment.sha256))
        .where(col(Deployment.group_id) == group_id)
        .order_by(col(Deployment.deployed_at).desc(), col(Deployment.id))
        .limit(HISTORY_LIMIT)
    ).all()
    return [HistoryRow(deployment=d, image=i) for d, i in rows]


def group_rollouts(*, session: Session, group_id: str) -> list[Rollout]:
    """Rollouts of the group, or into it as their canary, newest first."""
    return list(
        session.exec(
            select(Rollout)
            .where(or_(col(Rollout.group_id) == group_id, col(Rollout.canary_group_id) == group_id))
            .order_by(col(Rollout.created_at).desc(), col(Rollout.id))
            .limit(HISTORY_LIMIT)
        )
    )


def subgroups(*, session: Session, owner_id: str, group_id: str) -> list[Group]:
    """The group's direct subgroups: the canaries the deploy form offers."""
    return list(
        session.exec(
            select(Group)
            .where(col(Group.parent_id) == group_id, col(Group.owner_id) == owner_id)
            .order_by(col(Group.name), col(Group.id))
        )
    )


def online_since(now: datetime, window: float) -> datetime:
    return now - timedelta(seconds=window)
