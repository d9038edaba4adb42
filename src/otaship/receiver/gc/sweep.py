"""The orphan sweep: remove stored objects that no record references.

Run by `otaship gc`, and every OTASHIP_GC_INTERVAL seconds by each `serve`.

Why a deploy in flight never loses its object. A sweep S, in this order:

1. lists the objects, each with its modification time `m` and version `v`;
2. reads its clock: `now`;
3. reads the keys this process is storing (receiver/in_flight.py);
4. reads every key that a record references: the object key of every row of
   `firmware_images`, in one statement (one snapshot);
5. removes each chosen object only if it is still at version `v`
   (`Storage.delete_if_unchanged`: GCS preconditions, a lock on a folder).

A deploy D calls `Hold.storing()` at `t_s`, then refreshes or puts its object
(making a new version `v_D`, modified at `m_D >= t_s`), and commits its record
at `t_c`, which `Hold.checked` keeps below `t_s + grace/2`.

Suppose S removed D's object. If S removed `v_D` itself, S chose it, so
`now > m_D + grace >= t_s + grace > t_c + grace/2`: S read the references
(step 4) after D committed, saw D's record, and kept the object. If S removed
an older version, it did so before D's refresh or put (which would have
changed the version and failed S's delete), so D found no object and stored a
new one. Either way D's record points at an object that exists.

What this takes: the clocks of the storage (object times) and of the sweeping
host agree within grace/2, and the database's COMMIT itself, after the check,
does not take that long either. A deploy records its image row in the same
transaction as its OTA, deployment or rollout row, and image rows are never
deleted, so an object once referenced stays referenced. Two sweeps at
once are harmless: each delete succeeds once, and the other sees it gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio.to_thread
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from otaship.receiver.db.engine import read_session
from otaship.receiver.db.models import FirmwareImage
from otaship.receiver.gc.plan import SweepPlan, plan_sweep
from otaship.receiver.storage import FIRMWARE_PREFIX, Storage, StorageError, StoredObject

if TYPE_CHECKING:
    from otaship.receiver.services import Services

log = logging.getLogger("otaship.sweep")


def referenced_keys(*, session: Session) -> set[str]:
    """Every object key that some record points at (current OTAs, history,
    rollouts): the images they reference, which are kept forever."""
    return set(session.exec(select(col(FirmwareImage.object_key))).all())


@dataclass(frozen=True)
class SweepResult:
    plan: SweepPlan
    dry_run: bool
    removed: list[StoredObject] = field(default_factory=list)
    # Chosen, but stored again, refreshed or removed by another sweep since
    # the listing: left alone.
    changed: int = 0
    # (key, error) for each delete that failed.
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def removed_bytes(self) -> int:
        return sum(obj.size for obj in self.removed)

    def describe(self) -> str:
        """One line for the operator."""
        plan = self.plan
        if self.dry_run:
            done = f"would remove {len(plan.remove)} orphaned object(s), {plan.remove_bytes} bytes"
        else:
            done = f"removed {len(self.removed)} orphaned object(s), {self.removed_bytes} bytes"
        kept = [
            f"{plan.referenced} referenced",
            f"{plan.young} younger than the grace period",
            f"{plan.in_flight} being stored",
        ]
        if self.changed:
            kept.append(f"{self.changed} changed since listed")
        if plan.foreign:
            kept.append(f"{plan.foreign} not otaship's")
        line = f"{done}; kept {', '.join(kept)}"
        if self.failed:
            line += f"; {len(self.failed)} could not be removed"
        return line


def sweep_orphans(
    *,
    storage: Storage,
    engine: Engine,
    grace: float,
    in_flight: Callable[[], frozenset[str]] = frozenset,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
) -> SweepResult:
    """One sweep, in the order the module's docstring argues for. Blocking."""
    objects = storage.list_objects(FIRMWARE_PREFIX)
    now = clock()
    storing = in_flight()
    with read_session(engine) as session:
        referenced = referenced_keys(session=session)
    plan = plan_sweep(objects, referenced=referenced, in_flight=storing, grace=grace, now=now)
    if dry_run:
        return SweepResult(plan=plan, dry_run=True)
    removed: list[StoredObject] = []
    changed = 0
    failed: list[tuple[str, str]] = []
    for obj in plan.remove:
        try:
            if storage.delete_if_unchanged(obj):
                removed.append(obj)
            else:
                changed += 1
        except StorageError as exc:
            failed.append((obj.key, str(exc)))
    return SweepResult(plan=plan, dry_run=False, removed=removed, changed=changed, failed=failed)


class OrphanSweeper:
    """`serve`'s periodic sweep: the first one interval after start, then every interval."""

    def __init__(self, services: Services, *, interval: float, grace: float) -> None:
        self.services = services
        self.interval = interval
        self.grace = grace
        #: Completed sweeps, for whoever waits on one.
        self.sweeps = 0

    def sweep_once(self) -> SweepResult:
        services = self.services
        return sweep_orphans(
            storage=services.storage,
            engine=services.engine,
            grace=self.grace,
            in_flight=services.objects_in_flight.keys,
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                result = await anyio.to_thread.run_sync(self.sweep_once)
            except (StorageError, SQLAlchemyError) as exc:
                log.warning("orphan sweep failed, trying again in %g s: %s", self.interval, exc)
                continue
            except NotImplementedError as exc:
                log.warning("orphan sweep is not possible on this storage: %s", exc)
                return
            except Exception:
                log.exception("orphan sweep failed, trying again in %g s", self.interval)
                continue
            self.sweeps += 1
            level = logging.INFO if result.removed or result.failed else logging.DEBUG
            log.log(level, "orphan sweep: %s", result.describe())
            for key, error in result.failed:
                log.warning("could not remove orphaned object %s: %s", key, error)
