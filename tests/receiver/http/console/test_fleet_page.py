"""The fleet page: the tree, effective versions, the version bars, online counts, escaping."""

from __future__ import annotations

import re
from datetime import timedelta

from otaship.receiver.db.engine import write_session
from otaship.receiver.db.models import Device
from otaship.receiver.ids import utcnow
from otaship.receiver.rollouts.deploy import StoredFirmware, deploy_firmware
from otaship.receiver.services import Services
from tests.conftest import Fleet
from tests.receiver.http.console.conftest import SignIn


def stored(version: str) -> StoredFirmware:
    digest = f"{abs(hash(version)):064x}"[-64:]
    return StoredFirmware(object_key=f"objects/{digest}", sha256=digest, md5=digest[:32], size=1000)


def test_the_tree_shows_versions_devices_bars_and_escapes_names(
    services: Services, fleet: Fleet, sign_in: SignIn
) -> None:
    owner, other = fleet.owner(), fleet.owner()
    parent = fleet.group(owner, name="thermostats")
    canary = fleet.group(owner, name="<script>alert(1)</script>", parent=parent)
    fleet.group(other, name="not yours")
    seen = utcnow()
    with write_session(services.engine) as session:
        deploy_firmware(
            session=session, group_id=parent.id, version="1.0.0", firmware=stored("1.0.0"), now=seen
        )
    for i, (group, version, last_seen) in enumerate(
        [
            (parent, "1.0.0", seen),
            (parent, "1.0.0", seen - timedelta(hours=1)),
            (parent, "0.9.0", seen),
            (canary, None, None),
        ]
    ):
        device = fleet.device(group, name=f"d{i}", firmware_version=version)
        with write_session(services.engine) as session:
            row = session.get(Device, device.id)
            assert row is not None
            row.last_seen = last_seen
    console = sign_in(owner)
    page = console.client.get("/console/")
    assert page.status_code == 200
    text = page.text
    assert "not yours" not in text
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert '<span id="online-count">2</span> of <span id="device-count">4</span>' in text
    rows = re.findall(r'<tr data-group="([0-9a-f]{24})">(.*?)</tr>', text, re.S)
    assert [group_id for group_id, _ in rows] == [parent.id, canary.id]
    first, second = (body for _, body in rows)
    assert '<td class="version">1.0.0</td>' in first and '<td class="num devices">3</td>' in first
    assert '<td class="num online">2</td>' in first
    # The subgroup runs its parent's deploy: that is its effective version.
    assert '<td class="version">1.0.0</td>' in second and "depth-1" in second
    assert 'aria-label="1.0.0: 2, 0.9.0: 1"' in first
    assert re.findall(r'<rect x="([\d.]+)" y="0" width="([\d.]+)"', first) == [
        ("0.0", "200.0"),
        ("200.0", "100.0"),
    ]
    assert 'aria-label="unknown: 1"' in second
