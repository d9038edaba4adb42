"""Figures, rows and the one table: median of the repetitions with min and max, and the ratio."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    """Repeated measurements of one quantity, in one unit."""

    values: tuple[float, ...]
    unit: str

    @classmethod
    def of(cls, values: Sequence[float], unit: str) -> Figure:
        if not values:
            raise ValueError("a figure needs at least one measurement")
        return cls(tuple(float(v) for v in values), unit)

    @classmethod
    def constant(cls, value: float, unit: str) -> Figure:
        return cls((float(value),), unit)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self) -> str:
        if len(self.values) == 1:
            return f"{_num(self.median)} {self.unit}"
        return f"{_num(self.median)} {self.unit} [{_num(self.low)}–{_num(self.high)}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "values": list(self.values),
        }


@dataclass(frozen=True)
class Goal:
    """`ratio >= bound` (higher is better) or `ratio <= bound`; None: reported, no goal."""

    op: str  # ">=" or "<="
    bound: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound

    def text(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.bound:g}×"


@dataclass(frozen=True)
class Row:
    benchmark: str  # the suite's name for it: check, download, ...
    label: str  # what the row measures, for the table
    figure: Figure
    baseline: Figure
    baseline_label: str
    goal: Goal | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # Measured in alternation (ours, baseline, ours, ...): the ratio is then the median
    # of each pair's ratio, which cancels drift in the machine's load between pairs.
    paired: bool = False

    @property
    def ratio(self) -> float:
        pairs = list(zip(self.figure.values, self.baseline.values, strict=False))
        if self.paired and len(self.figure.values) == len(self.baseline.values) and all(b for _, b in pairs):
            return statistics.median(f / b for f, b in pairs)
        base = self.baseline.median
        return self.figure.median / base if base else float("inf")

    @property
    def met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.ratio)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "label": self.label,
            "otaship": self.figure.to_json(),
            "baseline": {"label": self.baseline_label, **self.baseline.to_json()},
            "ratio": self.ratio,
            "ratio_of": "median of paired ratios" if self.paired else "ratio of medians",
            "goal": None if self.goal is None else {"op": self.goal.op, "bound": self.goal.bound},
            "met": self.met,
            "notes": self.notes,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass(frozen=True)
class Failure:
    """A benchmark that could not run; the table says so instead of a figure."""

    benchmark: str
    reason: str


def _num(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


HEADER = ("benchmark", "otaship (median [min–max])", "baseline (median [min–max])", "ratio", "goal", "met")


def table_rows(rows: Sequence[Row], failures: Sequence[Failure]) -> list[tuple[str, ...]]:
    lines: list[tuple[str, ...]] = []
    for row in rows:
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        lines.append(
            (
                row.label,
                row.figure.text(),
                f"{row.baseline_label}: {row.baseline.text()}",
                f"{row.ratio:.2f}×",
                row.goal.text() if row.goal else "-",
                met,
            )
        )
    for failure in failures:
        lines.append((failure.benchmark, f"did not run: {failure.reason}", "", "", "", "NO"))
    return lines


def render_text(rows: Sequence[Row], failures: Sequence[Failure]) -> str:
    lines = [HEADER, *table_rows(rows, failures)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def repetitions_text(rows: Sequence[Row], default: int) -> str:
    """How many measurements the figures hold, read from the figures themselves: a
    benchmark may measure fewer times than the scale's repetitions (a rollout of
    thousands of devices runs once), and a constant (an anchor, an image's size) is one value."""
    counts = sorted({len(figure.values) for row in rows for figure in (row.figure, row.baseline)})
    if not counts:
        return f"{default} repetitions per figure"
    if counts == [1]:
        return "one run per figure"
    if len(counts) == 1:
        return f"{counts[0]} repetitions per figure"
    single = " (a figure without [min–max] is a single value)" if counts[0] == 1 else ""
    return f"up to {counts[-1]} repetitions per figure{single}"


def render_markdown(rows: Sequence[Row], failures: Sequence[Failure], meta: dict[str, Any]) -> str:
    out = ["# otaship benchmarks: latest run", ""]
    out.append(
        f"- when: {meta['finished']} ({meta['elapsed_s']:.0f} s), scale `{meta['scale']}`, "
        f"{repetitions_text(rows, meta['repetitions'])}"
    )
    out.append(f"- machine: {meta['machine']}")
    out.append(f"- note: {meta['note']}")
    out.append("")
    out.append("| " + " | ".join(HEADER) + " |")
    out.append("|" + "---|" * len(HEADER))
    for line in table_rows(rows, failures):
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |")
    notes = [(row.label, note) for row in rows for note in row.notes]
    if notes:
        out += ["", "## Notes", ""]
        out += [f"- **{label}**: {note}" for label, note in notes]
    return "\n".join(out) + "\n"


def write_results(
    directory: Path, rows: Sequence[Row], failures: Sequence[Failure], meta: dict[str, Any]
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        **meta,
        "rows": [row.to_json() for row in rows],
        "failures": [{"benchmark": f.benchmark, "reason": f.reason} for f in failures],
    }
    json_path = directory / "latest.json"
    md_path = directory / "latest.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(render_markdown(rows, failures, meta))
    return json_path, md_path
