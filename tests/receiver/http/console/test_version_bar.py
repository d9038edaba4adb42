"""The version bar's segments."""

from __future__ import annotations

from otaship.receiver.http.console.version_bar import OTHER_COLOUR, PALETTE, Segment, bar_segments


def test_no_devices_no_bar() -> None:
    assert bar_segments({}) == []
    assert bar_segments({"1.0.0": 0}) == []


def test_segments_by_devices_then_version_with_unknown_named() -> None:
    assert bar_segments({"1.0.0": 1, None: 2, "0.9.0": 1}, width=100) == [
        Segment("unknown", 2, 0.0, 50.0, PALETTE[0]),
        Segment("0.9.0", 1, 50.0, 25.0, PALETTE[1]),
        Segment("1.0.0", 1, 75.0, 25.0, PALETTE[2]),
    ]


def test_past_the_palette_the_rest_is_other() -> None:
    counts: dict[str | None, int] = {f"1.0.{i}": 10 - i for i in range(8)}
    segments = bar_segments(counts, width=52)
    assert [s.label for s in segments] == [f"1.0.{i}" for i in range(6)] + ["other"]
    # 10+9+8+7+6+5 devices shown, 4+3 as other, of 52.
    assert segments[-1] == Segment("other", 7, 45.0, 7.0, OTHER_COLOUR)
    assert sum(s.width for s in segments) == 52.0
