"""What a webhook-started deploy reports to its GitHub Deployment (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from otaship.receiver.github.reports import stage_counts, status_of


def stage(name: str, succeeded: int, targeted: int, started: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "succeeded": succeeded,
        "targeted": targeted,
        "started_at": "x" if started else None,
    }


CANARY = [stage("canary", 10, 10), stage("fleet", 0, 0, started=False)]
BOTH = [stage("canary", 10, 10), stage("fleet", 412, 1000)]


@pytest.mark.parametrize(
    ("state", "stages", "expected"),
    [
        (None, [], ("success", "success", "1.4.0 deployed")),
        ("canary", CANARY, ("canary", "in_progress", "1.4.0: canary, canary 10/10")),
        ("fleet", BOTH, ("fleet", "in_progress", "1.4.0: fleet, canary 10/10, fleet 412/1000")),
        ("complete", BOTH, ("success", "success", "1.4.0: complete, canary 10/10, fleet 412/1000")),
        ("halted", CANARY, ("failure", "failure", "1.4.0: halted, canary 10/10")),
        ("aborted", BOTH, ("failure", "failure", "1.4.0: aborted, canary 10/10, fleet 412/1000")),
    ],
)
def test_each_state_has_its_status(
    state: str | None, stages: list[dict[str, Any]], expected: tuple[str, str, str]
) -> None:
    assert status_of("1.4.0", state, stages) == expected


def test_counts_and_length() -> None:
    assert stage_counts([]) == ""
    assert stage_counts(BOTH) == "canary 10/10, fleet 412/1000"
    long = [stage(f"wave-{i}-of-a-very-long-name", 1000, 1000) for i in range(10)]
    assert len(status_of("1.4.0", "fleet", long)[2]) == 140


def test_each_wave_is_a_stage_of_its_own() -> None:
    waves = [stage("canary", 2, 2), stage("wave", 1, 2), stage("wave", 0, 0, started=False)]
    # Waves keep the rollout in its canary state: the wave tells them apart.
    assert status_of("1.4.0", "canary", waves[:1], 1) == (
        "canary",
        "in_progress",
        "1.4.0: canary, canary 2/2",
    )
    assert status_of("1.4.0", "canary", waves, 2) == (
        "wave 2",
        "in_progress",
        "1.4.0: wave 2, canary 2/2, wave 1/2",
    )
    assert status_of("1.4.0", "fleet", waves, None)[0] == "fleet"
    # The longest the delivery row keeps.
    assert len(status_of("1.4.0", "canary", waves, 20)[0]) <= 16
