"""How many worker processes serve, and which one this process is.

The embedded broker is part of the app's lifespan, so it would start once per
worker: with it the receiver runs in exactly one process. With an external
broker (or none) every worker is a replica like any other: the outbox, the
rollout clock and report ingestion are replica-safe through row locks, and a
shared subscription splits the reports between the workers.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from otaship.protocol import parse_mqtt_url
from otaship.receiver.settings import Settings, SettingsError

# The lock a worker holds on its slot for as long as it lives; a module global
# so that it is never collected (closing it would free the slot).
_held: IO[str] | None = None


def cpu_count() -> int:
    """The cores this process may run on (a container's cpuset, not the host's)."""
    return len(os.sched_getaffinity(0))


def worker_count(settings: Settings, cpus: int | None = None) -> int:
    """OTASHIP_WORKERS, or its default: one a core with an external broker, else 1.

    Without MQTT (OTASHIP_MQTT_URL=none) the default stays 1: that is a trial
    or a test setup, where one process is the simplest thing to watch."""
    embedded, external = _broker(settings)
    if settings.workers is None:
        return (cpus if cpus is not None else cpu_count()) if external else 1
    if embedded and settings.workers > 1:
        raise SettingsError(
            "OTASHIP_WORKERS must be 1 with the embedded MQTT broker, which lives in one process: "
            "point OTASHIP_MQTT_URL at an external broker to run more workers"
        )
    return settings.workers


def _broker(settings: Settings) -> tuple[bool, bool]:
    """Whether the receiver uses the embedded broker, and whether an external one."""
    try:
        address = parse_mqtt_url(settings.mqtt_url)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if address is None:
        return False, False
    return address.embedded, not address.embedded


def worker_client_id(base: str, slot: int) -> str:
    """Each worker's own MQTT client id: two connections with one id would take
    turns throwing each other off the broker. The slot keeps it stable across
    restarts, so a worker takes back its persistent session. Slot 0 keeps the
    replica's id as it is: a replica that moves from one worker to several
    keeps its session, whose share of the reports would otherwise queue on the
    broker for a client that never comes back."""
    return base if slot == 0 else f"{base}-w{slot}"


def claim_slot(run_dir: Path) -> int:
    """The lowest worker slot (0, 1, ...) no live process of this data directory holds.

    A lock file per slot, held until the process ends: a worker that crashed
    frees its slot, and the one that replaces it takes it back.
    """
    global _held
    run_dir.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        handle = (run_dir / f"worker-{slot}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            slot += 1
            continue
        if _held is not None:
            _held.close()
        _held = handle
        return slot


def release_slot() -> None:
    """Give this process's slot back before it ends: a worker keeps its slot to
    the end, but a process that only asked (a test) must not leave it open."""
    global _held
    if _held is not None:
        _held.close()
        _held = None
