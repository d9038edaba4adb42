"""The orphan sweep's decision, over every combination of what can be true of an object."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from otaship.receiver.gc.plan import SweepPlan, plan_sweep
from otaship.receiver.storage import StoredObject, object_key

NOW = 1_700_000_000.0
GRACES = (0.0, 60.0, 3600.0)
# Seconds since the object was stored or refreshed, relative to the grace period.
AGES: dict[str, Callable[[float], float]] = {
    "in the future": lambda grace: -30.0,
    "unknown": lambda grace: float("-inf"),  # a storage that gave no time
    "just stored": lambda grace: 0.0,
    "just under the grace": lambda grace: grace - 0.001 if grace else 0.0,
    "exactly the grace": lambda grace: grace,
    "just over the grace": lambda grace: grace + 0.001,
    "a year old": lambda grace: 365 * 86400.0,
}
FIRMWARE = object_key("ab" * 32)
FOREIGN_KEYS = (
    "notes/readme.txt",
    "firmware/sha256/" + "AB" * 32 + ".bin",  # not how object_key writes a hash
    "firmware/sha256/" + "ab" * 31 + ".bin",  # too short
    f"{FIRMWARE}.part",
    f"backup/{FIRMWARE}",
)


def _expected(*, firmware: bool, referenced: bool, in_flight: bool, age: float, grace: float) -> str:
    # The order in which reasons to keep are counted; the first that holds wins.
    if not firmware:
        return "foreign"
    if referenced:
        return "referenced"
    if in_flight:
        return "in_flight"
    if age <= grace:
        return "young"
    return "remove"


def _outcome(plan: SweepPlan) -> str:
    counts = {
        "remove": len(plan.remove),
        "referenced": plan.referenced,
        "young": plan.young,
        "in_flight": plan.in_flight,
        "foreign": plan.foreign,
    }
    (reason,) = [name for name, count in counts.items() if count]
    assert counts[reason] == 1
    return reason


CASES = list(
    itertools.product(
        (FIRMWARE, *FOREIGN_KEYS),
        (False, True),
        (False, True),
        list(AGES),
        GRACES,
    )
)


@pytest.mark.parametrize(("key", "referenced", "in_flight", "age_name", "grace"), CASES)
def test_each_object_is_removed_only_when_nothing_keeps_it(
    key: str, referenced: bool, in_flight: bool, age_name: str, grace: float
) -> None:
    age = AGES[age_name](grace)
    obj = StoredObject(key=key, size=1234, modified=NOW - age, version="1:1")

    plan = plan_sweep(
        [obj],
        referenced={key} if referenced else {object_key("cd" * 32)},
        in_flight={key} if in_flight else frozenset(),
        grace=grace,
        now=NOW,
    )

    expected = _expected(
        firmware=key == FIRMWARE, referenced=referenced, in_flight=in_flight, age=age, grace=grace
    )
    assert _outcome(plan) == expected
    assert plan.remove == ([obj] if expected == "remove" else [])
    assert plan.remove_bytes == (1234 if expected == "remove" else 0)


def test_a_whole_listing_is_counted_once_per_object_and_removed_in_key_order() -> None:
    objects = []
    expected: dict[str, int] = {"remove": 0, "referenced": 0, "young": 0, "in_flight": 0, "foreign": 0}
    referenced: set[str] = set()
    in_flight: set[str] = set()
    grace = 3600.0
    for number, (is_firmware, is_referenced, is_in_flight, age_name) in enumerate(
        itertools.product((False, True), (False, True), (False, True), list(AGES))
    ):
        key = object_key(f"{number:064x}") if is_firmware else f"other/{number}.bin"
        if is_referenced:
            referenced.add(key)
        if is_in_flight:
            in_flight.add(key)
        age = AGES[age_name](grace)
        objects.append(StoredObject(key=key, size=number + 1, modified=NOW - age, version=f"{number}:1"))
        expected[
            _expected(
                firmware=is_firmware, referenced=is_referenced, in_flight=is_in_flight, age=age, grace=grace
            )
        ] += 1

    plan = plan_sweep(reversed(objects), referenced=referenced, in_flight=in_flight, grace=grace, now=NOW)

    assert (len(plan.remove), plan.referenced, plan.young, plan.in_flight, plan.foreign) == (
        expected["remove"],
        expected["referenced"],
        expected["young"],
        expected["in_flight"],
        expected["foreign"],
    )
    assert [obj.key for obj in plan.remove] == sorted(obj.key for obj in plan.remove)
    assert plan.remove_bytes == sum(obj.size for obj in plan.remove)
    # Only firmware objects, unreferenced, not in flight, older than the grace.
    assert expected["remove"] == 2  # "just over" and "a year old"


def test_nothing_listed_removes_nothing() -> None:
    assert plan_sweep([], referenced=set(), in_flight=set(), grace=0, now=NOW) == SweepPlan()
