from __future__ import annotations

import pytest

from otaship.receiver.rollouts.admission import secure_version_refusal

GROUP = "5e1b76bc4315b70eb242567a"


@pytest.mark.parametrize("new", [None, 0, 1, 2, 3])
@pytest.mark.parametrize("running", [None, 0, 2])
def test_anti_rollback_refuses_exactly_a_step_back_or_an_unknown_version(
    new: int | None, running: int | None
) -> None:
    refusal = secure_version_refusal(new=new, running=running, set_by=GROUP)
    if running is None or (new is not None and new >= running):
        assert refusal is None
    elif new is None:
        assert refusal == (
            "Firmware has no app descriptor, so its secure_version is unknown; anti-rollback "
            f"(set on group {GROUP}) needs one of at least {running}, the version this group runs"
        )
    else:
        assert refusal == (
            f"Firmware secure_version {new} is lower than {running}, the secure_version this group runs: "
            f"anti-rollback is on (set on group {GROUP}); build it with a secure_version of at least {running}"
        )
