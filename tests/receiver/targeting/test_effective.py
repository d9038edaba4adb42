"""Effective firmware, exhaustively: which OTA a group's devices should run."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from otaship.receiver.targeting.effective import effective_ota, resolve_effective

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Ota:
    name: str
    last_updated: datetime


def at(name: str, seconds: int) -> Ota:
    return Ota(name, T0 + timedelta(seconds=seconds))


def test_no_ota_anywhere_is_none() -> None:
    assert effective_ota([]) is None
    assert effective_ota([None, None]) is None  # type: ignore[type-var]  # no OTA at any level


@pytest.mark.parametrize("times", list(itertools.product([None, 1, 2, 3], repeat=3)))
def test_the_newest_in_the_chain_wins_and_ties_go_to_the_nearest(times: tuple[int | None, ...]) -> None:
    chain = [None if t is None else at(f"level{i}", t) for i, t in enumerate(times)]
    result = effective_ota(chain)
    present = [(t, i) for i, t in enumerate(times) if t is not None]
    if not present:
        assert result is None
        return
    newest = max(t for t, _ in present)
    nearest = min(i for t, i in present if t == newest)
    assert result == chain[nearest]


def test_resolve_effective_walks_each_group_up_its_parents() -> None:
    parents = {"fleet": None, "canary": "fleet", "bench": "canary", "rest": "fleet"}
    otas = {"fleet": at("fleet-1.0", 1), "canary": at("canary-1.1", 2)}
    assert {k: v.name if v else None for k, v in resolve_effective(parents, otas).items()} == {
        "fleet": "fleet-1.0",
        "canary": "canary-1.1",
        "bench": "canary-1.1",
        "rest": "fleet-1.0",
    }
    otas["fleet"] = at("fleet-1.2", 3)
    assert {k: v.name if v else None for k, v in resolve_effective(parents, otas).items()} == {
        "fleet": "fleet-1.2",
        "canary": "fleet-1.2",
        "bench": "fleet-1.2",
        "rest": "fleet-1.2",
    }


def test_resolve_effective_survives_a_cycle_and_an_unknown_parent() -> None:
    parents = {"a": "b", "b": "a", "c": "missing"}
    otas = {"a": at("a", 1), "b": at("b", 2)}
    resolved = resolve_effective(parents, otas)
    assert resolved["a"] == otas["b"] and resolved["b"] == otas["b"]
    assert resolved["c"] is None
