"""Effective firmware: what a group's devices should run.

A group runs the most recently deployed OTA among itself and its ancestors, so
a deploy to the fleet reaches its subgroups, and a deploy to a subgroup (a
canary) reaches only that subgroup until the fleet gets something newer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol, TypeVar


class Deployed(Protocol):
    @property
    def last_updated(self) -> datetime: ...


D = TypeVar("D", bound=Deployed)


def effective_ota(chain: list[D | None]) -> D | None:
    """`chain` is the group's own OTA, then its parent's, and so on up.

    The newest wins; on a tie the nearest group wins, since a subgroup deploy
    is the more specific one.
    """
    best: D | None = None
    for ota in chain:
        if ota is not None and (best is None or ota.last_updated > best.last_updated):
            best = ota
    return best


def resolve_effective(parents: Mapping[str, str | None], otas: Mapping[str, D]) -> dict[str, D | None]:
    """The effective OTA of every group in `parents` (group id -> parent id).

    Parents outside the mapping end the chain; a cycle cannot loop forever.
    """
    resolved: dict[str, D | None] = {}
    for group_id in parents:
        chain: list[D | None] = []
        seen: set[str] = set()
        current: str | None = group_id
        while current is not None and current not in seen:
            seen.add(current)
            chain.append(otas.get(current))
            current = parents.get(current)
        resolved[group_id] = effective_ota(chain)
    return resolved
