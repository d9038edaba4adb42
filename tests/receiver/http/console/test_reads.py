"""The tree order of the fleet page (pure)."""

from __future__ import annotations

from otaship.receiver.db.models import Group
from otaship.receiver.http.console.reads import tree_order


def group(group_id: str, name: str, parent: str | None = None) -> Group:
    return Group(id=group_id, owner_id="o", name=name, token="t", parent_id=parent)


def test_children_follow_their_parent_by_name_and_orphans_are_roots() -> None:
    groups = [
        group("b", "beta"),
        group("a2", "zeta", "a"),
        group("a", "alpha"),
        group("a1", "eta", "a"),
        group("a11", "deep", "a1"),
        group("x", "orphan", "not-listed"),
    ]
    assert [(g.id, depth) for g, depth in tree_order(groups)] == [
        ("a", 0),
        ("a1", 1),
        ("a11", 2),
        ("a2", 1),
        ("b", 0),
        ("x", 0),
    ]


def test_a_cycle_ends_and_lists_nothing_twice() -> None:
    groups = [group("r", "root"), group("c1", "one", "c2"), group("c2", "two", "c1")]
    assert [g.id for g, _ in tree_order(groups)] == ["r"]
