"""Which stored objects are orphans to remove: a pure decision, no I/O.

An object is an orphan when no record references it. That happens to the
losers of a race between uploads of one version, and to an upload whose
process died between storing its object and committing its record. An orphan
is removed only once it is older than the grace period, and never while this
process is storing it: the sweep that uses this decision (receiver/sweep.py)
explains why that keeps every upload in flight safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass, field

from otaship.receiver.storage import StoredObject, is_firmware_key


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep removes, and why it keeps the rest."""

    remove: list[StoredObject] = field(default_factory=list)
    # Kept: an image row names it (a current OTA, history or a rollout points at it).
    referenced: int = 0
    # Kept: an orphan for now, but stored or refreshed within the grace period.
    young: int = 0
    # Kept: this process is storing it right now.
    in_flight: int = 0
    # Kept: not a key the receiver writes; someone else's object.
    foreign: int = 0

    @property
    def remove_bytes(self) -> int:
        return sum(obj.size for obj in self.remove)


def plan_sweep(
    objects: Iterable[StoredObject],
    *,
    referenced: Set[str],
    in_flight: Set[str],
    grace: float,
    now: float,
) -> SweepPlan:
    """Split listed objects into those to remove and those to keep.

    An object is removed when it is a firmware key, no record references it,
    it is not being stored, and it is strictly older than `grace` seconds at
    `now`. A modification time in the future (a clock ahead of ours) counts
    as young.
    """
    remove: list[StoredObject] = []
    referenced_count = young = busy = foreign = 0
    for obj in objects:
        if not is_firmware_key(obj.key):
            foreign += 1
        elif obj.key in referenced:
            referenced_count += 1
        elif obj.key in in_flight:
            busy += 1
        elif not now - obj.modified > grace:
            young += 1
        else:
            remove.append(obj)
    return SweepPlan(
        remove=sorted(remove, key=lambda obj: obj.key),
        referenced=referenced_count,
        young=young,
        in_flight=busy,
        foreign=foreign,
    )
