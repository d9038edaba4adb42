"""What an upload must pass before a group takes it, beyond being a valid image:
a signature by one of the group's keys, and no step back in `secure_version`
when the group (or an ancestor) has anti-rollback on.

Read once per upload, before anything is stored. The deploy's own transaction
checks both again, under the group tree's lock, so that a key, a deploy or a
change of the setting committed in between is not bypassed: the keys in
otaship.receiver.db.signing_keys.signed_by, the secure_version in
`check_secure_version` below.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from otaship.firmware.signing_keys import PublicKey
from otaship.receiver.db.groups import ancestors, lock_tree
from otaship.receiver.db.models import FirmwareImage, Group
from otaship.receiver.db.signing_keys import group_keys, public_keys
from otaship.receiver.rollouts.deploy import running_firmware


@dataclass(frozen=True)
class Admission:
    keys: list[PublicKey]
    # The group, or the nearest ancestor, that turned anti-rollback on; None when off.
    anti_rollback_by: str | None
    # The secure_version of what the group runs; None when it runs nothing, or
    # an image without an app descriptor (or recorded before otaship kept it).
    running_secure_version: int | None


@dataclass(frozen=True)
class Floor:
    """The anti-rollback rule an upload to a group is held to."""

    # The group, or the nearest ancestor, that turned anti-rollback on; None when off.
    set_by: str | None
    # The secure_version of what the group runs (read whether or not the rule
    # is on); None when it runs nothing, or an image without an app descriptor.
    secure_version: int | None


class SecureVersionRefused(Exception):
    """Anti-rollback refuses the image; the message says why, with both numbers."""


def secure_version_floor(*, session: Session, group: Group) -> Floor:
    set_by = next((g.id for g in (group, *ancestors(session=session, group=group)) if g.anti_rollback), None)
    running = running_firmware(session=session, group=group)
    image = session.get(FirmwareImage, running.sha256) if running is not None else None
    return Floor(set_by=set_by, secure_version=image.secure_version if image is not None else None)


def admission(*, session: Session, group: Group) -> Admission:
    keys = public_keys(group_keys(session=session, group=group))
    floor = secure_version_floor(session=session, group=group)
    return Admission(keys=keys, anti_rollback_by=floor.set_by, running_secure_version=floor.secure_version)


def check_secure_version(*, session: Session, group_id: str, secure_version: int | None) -> None:
    """The anti-rollback rule again, inside the deploy's write transaction and
    under the group tree's lock (which the deploy takes too, and a change of the
    setting): a deploy or a change of the setting that committed since the
    upload was admitted counts. Raises SecureVersionRefused."""
    lock_tree(session=session, group_id=group_id)
    group = session.get(Group, group_id)
    assert group is not None  # groups are never deleted
    floor = secure_version_floor(session=session, group=group)
    if floor.set_by is None:
        return
    refusal = secure_version_refusal(new=secure_version, running=floor.secure_version, set_by=floor.set_by)
    if refusal is not None:
        raise SecureVersionRefused(refusal)


def secure_version_refusal(*, new: int | None, running: int | None, set_by: str) -> str | None:
    """Why anti-rollback refuses an image (pure); None when it may be deployed.

    `new`: the image's secure_version (None: it has no app descriptor).
    """
    if running is None:
        return None
    if new is None:
        return (
            f"Firmware has no app descriptor, so its secure_version is unknown; anti-rollback "
            f"(set on group {set_by}) needs one of at least {running}, the version this group runs"
        )
    if new < running:
        return (
            f"Firmware secure_version {new} is lower than {running}, the secure_version this group runs: "
            f"anti-rollback is on (set on group {set_by}); build it with a secure_version of at least {running}"
        )
    return None
