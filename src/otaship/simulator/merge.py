"""One fleet's progress and summary from the parts that several processes ran (processes.py).

Pure functions: each part is what one process's Fleet reported about its share
of the devices; the result reads as if one process had run them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from otaship.simulator.config import ALREADY_CURRENT, DARK, ERROR, FAILED, REBOOT_LOOP, UPDATED
from otaship.simulator.fleet import FleetProgress, FleetSummary, update_time_stats


def common_target(targets: Sequence[tuple[str | None, int]], until_version: str | None) -> str | None:
    """The version the fleet is heading for: --until-version, else the latest the most devices saw.

    `targets` are each part's target and its number of devices; a tie goes to the
    first part's.
    """
    if until_version is not None:
        return until_version
    weights: Counter[str] = Counter()
    for target, devices in targets:
        if target is not None:
            weights[target] += devices
    return weights.most_common(1)[0][0] if weights else None


def merge_progress(
    parts: Sequence[FleetProgress], *, devices: int, elapsed: float, until_version: str | None
) -> FleetProgress:
    """The fleet's progress from its parts' last reports; a part yet to report counts as all offline."""
    target = common_target([(p.target_version, p.devices) for p in parts], until_version)
    return FleetProgress(
        elapsed=elapsed,
        devices=devices,
        online=sum(p.online for p in parts),
        triggered=sum(p.triggered for p in parts),
        updating=sum(p.updating for p in parts),
        updated=sum(p.updated for p in parts),
        failed=sum(p.failed for p in parts),
        already_current=sum(p.already_current for p in parts),
        errors=sum(p.errors for p in parts),
        target_version=target,
        on_target=sum(p.on_target for p in parts if target is not None and p.target_version == target),
        dark=sum(p.dark for p in parts),
        reboot_loop=sum(p.reboot_loop for p in parts),
    )


def merge_summaries(
    parts: Sequence[FleetSummary],
    *,
    started: float,
    ended: float,
    until_version: str | None,
    cpu_seconds: float | None = None,
) -> FleetSummary:
    """The fleet's summary, its times counted from `started` (time.monotonic() of the whole run).

    A part's times count from its own start: they are moved onto the fleet's
    clock first. Times about the target version come only from parts that
    headed for the same one. `cpu_seconds` is what the run used besides the
    parts (the process that ran them).
    """
    devices = [d for p in parts for d in p.devices]
    outcomes = Counter(d.outcome for d in devices)
    target = common_target([(p.target_version, len(p.devices)) for p in parts], until_version)
    aligned = [p for p in parts if p.target_version == target]

    def moved(part: FleetSummary, seconds: float | None) -> float | None:
        return None if seconds is None else part.started + seconds - started

    first_triggers = [t for p in aligned if (t := moved(p, p.first_trigger_seconds)) is not None]
    last_on_target = [t for p in aligned if (t := moved(p, p.last_on_target_seconds)) is not None]
    online = [moved(p, p.all_online_seconds) for p in parts]
    p50, p95, slowest = update_time_stats(
        [d.update_seconds for d in devices if d.outcome == UPDATED and d.update_seconds is not None]
    )
    cpu = [p.cpu_seconds for p in parts]
    return FleetSummary(
        devices=devices,
        updated=outcomes[UPDATED],
        failed=outcomes[FAILED],
        already_current=outcomes[ALREADY_CURRENT],
        errors=outcomes[ERROR],
        not_triggered=outcomes[None],
        versions=dict(Counter(d.version for d in devices)),
        target_version=target,
        on_target=sum(d.version == target for d in devices) if target is not None else 0,
        until_version=until_version,
        reached_until_version=until_version is not None
        and bool(parts)
        and all(p.reached_until_version for p in parts),
        duration_seconds=ended - started,
        all_online_seconds=None if not online or None in online else max(t for t in online if t is not None),
        first_trigger_seconds=min(first_triggers) if first_triggers else None,
        last_on_target_seconds=max(last_on_target) if last_on_target else None,
        update_seconds_p50=p50,
        update_seconds_p95=p95,
        update_seconds_max=slowest,
        started=started,
        cpu_seconds=None
        if None in cpu
        else sum(c for c in cpu if c is not None) + (cpu_seconds if cpu_seconds is not None else 0.0),
        dark=outcomes[DARK],
        reboot_loop=outcomes[REBOOT_LOOP],
    )
