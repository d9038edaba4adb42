"""Groups: a fleet, or a subgroup of one (such as a canary)."""

from __future__ import annotations

from sqlmodel import Session, select

from otaship.firmware.image import SUPPORTED_CHIPS
from otaship.receiver.db.models import Group, User
from otaship.receiver.ids import is_id, new_group_token

# Chips a group may pin; a firmware built for another chip is refused.
KNOWN_CHIPS = SUPPORTED_CHIPS


class GroupError(ValueError):
    """A group operation was refused; the message is for the operator."""


def create_group(
    *, session: Session, owner: User, name: str, parent_id: str | None = None, chip: str | None = None
) -> Group:
    name = name.strip()
    if not name:
        raise GroupError("a group needs a name")
    if chip is not None:
        chip = chip.strip().lower()
        if chip not in KNOWN_CHIPS:
            raise GroupError(f"unknown chip {chip!r}: use one of {', '.join(KNOWN_CHIPS)}")
    if parent_id is not None:
        parent = get_owned_group(session=session, owner_id=owner.id, group_id=parent_id)
        if parent is None:
            raise GroupError(f"no group {parent_id} owned by {owner.email}")
        if chip is None:
            chip = parent.chip
        elif parent.chip is not None and parent.chip != chip:
            raise GroupError(f"a subgroup of a {parent.chip} group cannot run {chip}")
    group = Group(owner_id=owner.id, name=name, token=new_group_token(), parent_id=parent_id, chip=chip)
    session.add(group)
    session.flush()
    return group


def get_owned_group(*, session: Session, owner_id: str, group_id: str) -> Group | None:
    """The group if it exists and belongs to `owner_id`; another owner's group is None."""
    if not is_id(group_id):
        return None
    return session.exec(select(Group).where(Group.id == group_id, Group.owner_id == owner_id)).first()


def ancestors(*, session: Session, group: Group) -> list[Group]:
    """The group's parent, grandparent, … nearest first."""
    chain: list[Group] = []
    seen = {group.id}
    parent_id = group.parent_id
    while parent_id is not None and parent_id not in seen:
        parent = session.get(Group, parent_id)
        if parent is None:
            break
        chain.append(parent)
        seen.add(parent.id)
        parent_id = parent.parent_id
    return chain


def lock_tree(*, session: Session, group_id: str, skip_locked: bool = False) -> bool:
    """Lock the root of the tree `group_id` belongs to; False if it is busy
    (with `skip_locked`) or the group does not exist.

    A deploy changes what its group's ancestors' and descendants' rollouts
    run, and a promotion is a deploy made under a rollout's lock, so deploys,
    promotions, aborts and rollout evaluations lock rows of several groups and
    rollouts of one tree. Each takes this lock first (FOR UPDATE on PostgreSQL;
    SQLite's write transaction already holds the database lock): the work on one
    tree then runs one at a time and can never deadlock, and other trees are
    not held up. A group's parent never changes, so the root is found unlocked.
    """
    group = session.get(Group, group_id)
    if group is None:
        return False
    chain = ancestors(session=session, group=group)
    root_id = chain[-1].id if chain else group.id
    locked = session.exec(
        select(Group.id).where(Group.id == root_id).with_for_update(skip_locked=skip_locked)
    ).first()
    return locked is not None


def descendants(*, session: Session, group: Group) -> list[Group]:
    """Every subgroup below `group`, breadth first."""
    found: list[Group] = []
    frontier = [group.id]
    seen = {group.id}
    while frontier:
        children = session.exec(
            select(Group).where(Group.parent_id.in_(frontier))  # type: ignore[union-attr]
        ).all()
        frontier = [c.id for c in children if c.id not in seen]
        seen.update(frontier)
        found.extend(c for c in children if c.id in frontier)
    return found


def list_groups(*, session: Session, owner_id: str | None = None) -> list[Group]:
    query = select(Group).order_by(Group.created_at, Group.id)  # type: ignore[arg-type]
    if owner_id is not None:
        query = query.where(Group.owner_id == owner_id)
    return list(session.exec(query))


def group_json(group: Group, owner: User | None = None) -> dict[str, object]:
    return {
        "id": group.id,
        "name": group.name,
        "token": group.token,
        "owner": owner.email if owner is not None else group.owner_id,
        "parent": group.parent_id,
        "chip": group.chip,
        "anti_rollback": group.anti_rollback,
    }
