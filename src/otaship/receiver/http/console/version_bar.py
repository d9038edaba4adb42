"""A group's version distribution as a bar: segments computed here (pure), drawn
as SVG rectangles by the template; no chart library, no script."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

WIDTH = 300
# Colour-blind-safe (Okabe-Ito), one per version, most devices first.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
OTHER_COLOUR = "#999999"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Segment:
    label: str
    count: int
    x: float
    width: float
    colour: str


def bar_segments(counts: Mapping[str | None, int], width: float = WIDTH) -> list[Segment]:
    """One segment per version (devices that never reported: `unknown`), most
    devices first, ties by version; past the palette, the rest as `other`."""
    total = sum(counts.values())
    if total <= 0:
        return []
    ranked = sorted(
        ((version or UNKNOWN, n) for version, n in counts.items() if n > 0),
        key=lambda item: (-item[1], item[0]),
    )
    shown = ranked[: len(PALETTE)]
    rest = sum(n for _, n in ranked[len(PALETTE) :])
    parts = [(label, n, PALETTE[i]) for i, (label, n) in enumerate(shown)]
    if rest:
        parts.append(("other", rest, OTHER_COLOUR))
    segments = []
    x = 0.0
    for label, n, colour in parts:
        span = width * n / total
        segments.append(Segment(label=label, count=n, x=round(x, 2), width=round(span, 2), colour=colour))
        x += span
    return segments
